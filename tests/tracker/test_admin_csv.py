"""Every admin table downloads as CSV: all rows the filters match, raw numbers, guarded text.

Exports read in chunks of 7 here (the fixture `small_chunks`), so every list
of more than one page also crosses several chunk boundaries, ties included.
"""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import admin_login, make_user
from tests.tracker.test_admin_dashboard import EVIL as EVIL_CAMPAIGN
from tests.tracker.test_admin_dashboard import build as build_dashboard
from tests.tracker.test_admin_sales import new_lead
from tests.tracker.test_admin_sales_paging import many_leads
from tracker import contact_search
from tracker.admin import csv_export
from tracker.automation_models import Segment, SegmentMember, StageChange
from tracker.db import db
from tracker.import_models import ContactImport
from tracker.models import Contact, Visitor, utcnow
from tracker.paging import PER_PAGE
from tracker.sales_models import Campaign, CampaignCost, LeadAction, Opportunity

EVIL = '=HYPERLINK("http://evil.example","click")'
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(csv_export, "CHUNK_ROWS", 7)
    monkeypatch.setattr(contact_search, "EXPORT_CHUNK", 7)


def download(client, url: str, filename: str | None = None) -> list[list[str]]:
    """The rows of the CSV at `url` (header first), after checking it is a CSV download."""
    response = client.get(url)
    body = response.get_data(as_text=True)
    assert response.status_code == 200, (url, body[:300])
    assert response.mimetype == "text/csv", url
    disposition = response.headers["Content-Disposition"]
    assert re.fullmatch(r'attachment; filename="[\w.-]+\.csv"', disposition), disposition
    if filename:
        assert disposition == f'attachment; filename="{filename}"'
    assert not body.startswith("\ufeff")  # as the reports' CSVs: no byte order mark
    return list(csv.reader(io.StringIO(body)))


def csv_link(page: str, link_id: str) -> str:
    """The href of the "Download CSV" link with id `link_id`."""
    found = re.search(rf'<a id="{link_id}" href="([^"]+)">Download CSV</a>', page)
    assert found, f"no {link_id} link"
    return html.unescape(found[1])


# Contacts


def _contacts(app, site) -> dict[str, int]:
    """60 plain leads (scores 0-59, one owned), and one formula-named MQL in two segments."""
    with app.app_context():
        olga = make_user(app, "sales", email="olga@example.com")
        hot = Segment(name="Hot", rules={})
        bad = Segment(name="-Bad", rules={})
        db.session.add_all([hot, bad])
        bulk = [
            Contact(email=f"bulk-{i:03}@example.com", score=i, traits={}, created_at=T0)
            for i in range(60)
        ]
        bulk[5].owner_id = olga
        evil = Contact(
            email="evil@example.com",
            first_name=EVIL,
            last_name="+1",
            company="@corp",
            stage="mql",
            owner_id=olga,
            engagement_score=30,
            fit_score=12,
            score=42,
            traits={},
            created_at=T0 + timedelta(days=1),
        )
        db.session.add_all([*bulk, evil])
        db.session.flush()
        db.session.add_all(
            [
                SegmentMember(segment_id=hot.id, contact_id=evil.id),
                SegmentMember(segment_id=bad.id, contact_id=evil.id),
                SegmentMember(segment_id=hot.id, contact_id=bulk[3].id),
            ]
        )
        for seen in (T0 + timedelta(days=2), T0 + timedelta(days=3, hours=2)):
            db.session.add(
                Visitor(
                    site_id=site.id,
                    key=f"v-{seen.day}",
                    contact_id=evil.id,
                    first_seen=T0,
                    last_seen=seen,
                )
            )
        db.session.commit()
        return {"olga": olga, "hot": hot.id, "evil": evil.id}


CONTACT_HEADER = [
    "email",
    "first_name",
    "last_name",
    "company",
    "stage",
    "owner",
    "engagement_score",
    "fit_score",
    "score",
    "segments",
    "created_at",
    "last_seen_at",
]


def test_contacts_csv_holds_every_match_streamed_and_guarded(app, client, site):
    ids = _contacts(app, site)
    admin_login(app, client, "marketer")
    response = client.get("/admin/contacts?format=csv")
    assert response.is_streamed
    rows = download(client, "/admin/contacts?format=csv")
    assert rows[0] == CONTACT_HEADER
    # All 61, not the first page of 50, oldest first, across 9 chunks of 7.
    assert len(rows) == 62
    assert [r[0] for r in rows[1:61]] == [f"bulk-{i:03}@example.com" for i in range(60)]
    assert rows[1] == [
        "bulk-000@example.com",
        "",
        "",
        "",
        "lead",
        "",
        "0",
        "0",
        "0",
        "",
        "2025-03-01 09:30:00",
        "",
    ]
    assert rows[4][9] == "Hot" and rows[6][5] == "Sales"  # bulk 3's segment, bulk 5's owner
    # Text that a spreadsheet would run is quoted; numbers stay numbers.
    assert rows[61] == [
        "evil@example.com",
        "'" + EVIL,
        "'+1",
        "'@corp",
        "mql",
        "Sales",
        "30",
        "12",
        "42",
        "'-Bad; Hot",
        "2025-03-02 09:30:00",
        "2025-03-04 11:30:00",  # the latest of its two visitors
    ]
    assert ids["evil"]


def test_contacts_csv_applies_the_filters_and_the_link_keeps_them(app, client, site):
    ids = _contacts(app, site)
    admin_login(app, client, "sales")
    page = client.get(f"/admin/contacts?min_score=40&owner={ids['olga']}&page=1").get_data(
        as_text=True
    )
    url = csv_link(page, "contacts-csv")
    assert "format=csv" in url and "min_score=40" in url and f"owner={ids['olga']}" in url
    assert [r[0] for r in download(client, url)[1:]] == ["evil@example.com"]
    cases = {
        "q=BULK-00": [f"bulk-00{i}@example.com" for i in range(10)],
        "stage=mql": ["evil@example.com"],
        f"segment={ids['hot']}": ["bulk-003@example.com", "evil@example.com"],
        "owner=none&min_score=55&max_score=57": [f"bulk-0{i}@example.com" for i in (55, 56, 57)],
        "q=%3DHYPERLINK": ["evil@example.com"],
        "q=nobody": [],
    }
    for query, expected in cases.items():
        rows = download(client, f"/admin/contacts?format=csv&{query}")
        assert rows[0] == CONTACT_HEADER and [r[0] for r in rows[1:]] == expected, query
    # The page number does not narrow the download.
    assert len(download(client, "/admin/contacts?format=csv&page=2")) == 62


def test_contacts_csv_refuses_bad_filters_as_the_page_does(app, client, site):
    _contacts(app, site)
    admin_login(app, client, "admin")
    for query in ("stage=%3Cb%3Ewhale", "min_score=lots", "min_score=5&max_score=1", "page=0"):
        response = client.get(f"/admin/contacts?format=csv&{query}")
        assert response.status_code == 400, query
        assert response.mimetype == "text/html" and "Content-Disposition" not in response.headers
        page = response.get_data(as_text=True)
        assert 'class="error"' in page and "<b>whale" not in page


def test_contacts_csv_needs_a_login(app, client):
    response = client.get("/admin/contacts?format=csv")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_export_contacts_reads_in_keyset_chunks(app, site):
    _contacts(app, site)
    with app.app_context():
        filters = contact_search.ContactFilters()
        chunks = list(contact_search.export_contacts(filters, chunk=25))
        assert [len(c) for c in chunks] == [25, 25, 11]
        emails = [row.email for chunk in chunks for row in chunk]
        assert len(set(emails)) == 61 and emails[-1] == "evil@example.com"
        # A full last chunk ends the export with one empty read, not a repeat.
        exact = list(contact_search.export_contacts(filters, chunk=61))
        assert [len(c) for c in exact] == [61]


# My leads and follow-up health

LEAD_HEADER = [
    "email",
    "first_name",
    "last_name",
    "company",
    "stage",
    "owner",
    "mql_at",
    "score",
    "engagement_score",
    "fit_score",
    "why",
]


def test_a_salespersons_queue_csv_holds_all_of_their_leads_and_no_one_elses(app, client):
    me = admin_login(app, client, "sales")
    other = make_user(app, "sales", email="bob@example.com")
    mine = many_leads(app, me, PER_PAGE + 10)
    many_leads(app, other, 5, who="bob-")
    evil = new_lead(app, "x@evil.test", me, hours_ago=1, cause=EVIL, first_name="@me", score=7)
    page = client.get("/admin/leads").get_data(as_text=True)
    url = csv_link(page, "waiting-csv")
    assert "queue=waiting" in url and "owner" not in url
    rows = download(client, url)
    assert rows[0] == LEAD_HEADER
    assert [r[0] for r in rows[1:]] == [*mine, "x@evil.test"]  # oldest MQL first, all 61
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[1][6])
    assert rows[1][10] == "threshold 'MQL'"
    assert rows[-1][1] == "'@me" and rows[-1][7] == "7" and rows[-1][10] == "'" + EVIL
    # The owner filter is an admin's: a salesperson's CSV is theirs whatever the URL says.
    again = download(client, f"/admin/leads?format=csv&queue=waiting&owner={other}")
    assert [r[0] for r in again[1:]] == [r[0] for r in rows[1:]]
    accepted = download(client, csv_link(page, "accepted-csv"))
    assert accepted == [LEAD_HEADER]
    with app.app_context():
        db.session.get(Contact, evil).stage = "sql"
        db.session.commit()
    accepted = download(client, "/admin/leads?format=csv&queue=accepted")
    assert [r[0] for r in accepted[1:]] == ["x@evil.test"]
    assert [r[4] for r in accepted[1:]] == ["sql"]


def test_an_admins_queue_csv_follows_the_owner_filter(app, client):
    admin_login(app, client, "admin")
    ann = make_user(app, "sales", email="ann@example.com")
    anns = many_leads(app, ann, 8)
    nobodys = many_leads(app, None, 9, who="free-")
    page = client.get(f"/admin/leads?owner={ann}").get_data(as_text=True)
    url = csv_link(page, "waiting-csv")
    assert f"owner={ann}" in url
    assert [r[0] for r in download(client, url)[1:]] == anns
    assert [
        r[0] for r in download(client, "/admin/leads?format=csv&queue=waiting&owner=none")[1:]
    ] == nobodys
    everyone = download(client, "/admin/leads?format=csv&queue=waiting&owner=")
    assert sorted(r[0] for r in everyone[1:]) == sorted(anns + nobodys)
    assert {r[5] for r in everyone[1:]} == {"Sales", ""}


def test_queue_csv_needs_a_known_queue_and_the_sales_role(app, client):
    admin_login(app, client, "sales")
    for query in ("", "&queue=", "&queue=%3Cscript%3E"):
        response = client.get(f"/admin/leads?format=csv{query}")
        assert response.status_code == 400 and "queue=waiting" in response.get_data(as_text=True)
        assert "<script>" not in response.get_data(as_text=True)
    marketer = app.test_client()
    admin_login(app, marketer, "marketer")
    assert marketer.get("/admin/leads?format=csv&queue=waiting").status_code == 403


def test_follow_up_health_csvs(app, client):
    admin_login(app, client, "sales")
    ann = make_user(app, "sales", email="ann@example.com")
    untouched = many_leads(app, ann, PER_PAGE + 5)
    acted = new_lead(app, "acted@example.com", ann, hours_ago=30)
    with app.app_context():
        db.session.add(
            LeadAction(
                contact_id=acted,
                user_id=ann,
                action="accept",
                created_at=utcnow() - timedelta(hours=29),
            )
        )
        db.session.commit()
    new_lead(app, "=cmd@example.com", None, hours_ago=2, first_name="-2")
    page = client.get("/admin/leads/health").get_data(as_text=True)
    rows = download(client, csv_link(page, "untouched-csv"))
    assert rows[0] == ["email", "first_name", "last_name", "company", "owner", "mql_at", "hours"]
    assert [r[0] for r in rows[1:]] == [*untouched, "'=cmd@example.com"]
    assert rows[-1][1] == "'-2" and rows[-1][4] == ""
    newest_waited, oldest_waited = float(rows[-1][6]), float(rows[1][6])
    assert newest_waited == pytest.approx(2, abs=0.1) and oldest_waited >= 20 * 24

    per_owner = download(client, csv_link(page, "per-owner-csv"))
    assert per_owner[0] == [
        "owner",
        "mqls",
        "on_time",
        "late",
        "pending",
        "untouched",
        "share_on_time",
        "median_hours_to_action",
    ]
    # many_leads' MQLs are 20 days old: late and untouched; acted's took an hour.
    assert per_owner[1:] == [
        ["(nobody)", "1", "0", "0", "1", "1", "", ""],
        ["Sales", "56", "1", "55", "0", "55", "0.0179", "1"],
    ]
    response = client.get("/admin/leads/health?format=csv&table=nope")
    assert response.status_code == 400 and "table=per_owner" in response.get_data(as_text=True)


# Opportunities


def _deals(app, owner_id, names, stage="open", contact_id=None, **fields) -> None:
    with app.app_context():
        if contact_id is None:
            contact = Contact(email=f"buyer-{owner_id}-{stage}@example.com", traits={})
            db.session.add(contact)
            db.session.flush()
            contact_id = contact.id
        db.session.add_all(
            Opportunity(
                contact_id=contact_id,
                owner_id=owner_id,
                name=name,
                amount=Decimal("1250.50"),
                stage=stage,
                closed_at=None if stage == "open" else T0,
                created_at=T0,
                **fields,
            )
            for name in names
        )
        db.session.commit()


OPPORTUNITY_HEADER = [
    "opportunity",
    "contact_email",
    "contact_name",
    "amount",
    "expected_close",
    "stage",
    "owner",
    "campaign",
    "campaign_source",
    "created_at",
    "closed_at",
]


def test_opportunities_csv_follows_the_page_filters_beyond_one_page(app, client):
    me = admin_login(app, client, "sales")
    bob = make_user(app, "sales", email="bob@example.com")
    mine = [f"mine {i:02}" for i in range(PER_PAGE + 3)]
    _deals(app, me, mine)
    _deals(app, me, ["won one"], stage="won", expected_close=date(2025, 2, 1))
    _deals(app, bob, ["bob's"])
    _deals(app, None, [EVIL], contact_id=None)
    page = client.get("/admin/opportunities").get_data(as_text=True)
    url = csv_link(page, "opportunities-csv")
    rows = download(client, url)
    assert rows[0] == OPPORTUNITY_HEADER
    # A salesperson's own by default, as the page; open first, then closed.
    assert [r[0] for r in rows[1:]] == [*mine, "won one"]
    assert rows[-1][1:] == [
        f"buyer-{me}-won@example.com",
        "",
        "1250.5",
        "2025-02-01",
        "won",
        "Sales",
        "",
        "auto",
        "2025-03-01 09:30:00",
        "2025-03-01 09:30:00",
    ]
    won = download(client, "/admin/opportunities?format=csv&stage=won")
    assert [r[0] for r in won[1:]] == ["won one"]
    everyone = download(client, "/admin/opportunities?format=csv&owner=")
    assert len(everyone) == 1 + len(mine) + 3 and ["'" + EVIL] in [r[:1] for r in everyone]
    nobodys = download(client, "/admin/opportunities?format=csv&owner=none")
    assert [r[0] for r in nobodys[1:]] == ["'" + EVIL]
    # The download's link keeps "everyone" and the stage.
    page = client.get("/admin/opportunities?owner=&stage=open").get_data(as_text=True)
    url = csv_link(page, "opportunities-csv")
    assert "owner=&" in url + "&" and "stage=open" in url
    assert len(download(client, url)) == 1 + len(mine) + 2


def test_opportunities_csv_refuses_bad_filters_and_names_erased_contacts(app, client):
    admin_login(app, client, "marketer")
    _deals(app, None, ["orphan"])
    with app.app_context():
        deal = db.session.query(Opportunity).one()
        deal.contact_id = None
        db.session.commit()
    rows = download(client, "/admin/opportunities?format=csv", None)
    assert rows[1][:3] == ["orphan", "", "(erased contact)"]
    for query in ("stage=maybe", "owner=%3Cb%3E"):
        response = client.get(f"/admin/opportunities?format=csv&{query}")
        assert response.status_code == 400 and response.mimetype == "text/html", query
        assert 'class="error"' in response.get_data(as_text=True)


# Campaigns


def test_campaigns_csv(app, client):
    admin_login(app, client, "marketer")
    with app.app_context():
        spread = Campaign(
            name="Spring",
            channel="paid_search",
            utm_campaigns=["spring", "spring-b"],
            template_ids=[1, 2],
            sequence_ids=[],
            starts_on=date(2026, 3, 1),
            ends_on=date(2026, 3, 31),
            cost=Decimal("1200.50"),
        )
        periods = Campaign(name=EVIL, channel="event", utm_campaigns=[], template_ids=[])
        free = Campaign(name="Word of mouth", channel="other")
        db.session.add_all([spread, periods, free])
        db.session.flush()
        for start, amount in ((date(2026, 4, 1), "100.25"), (date(2026, 5, 1), "50")):
            db.session.add(
                CampaignCost(
                    campaign_id=periods.id,
                    starts_on=start,
                    ends_on=start + timedelta(days=9),
                    amount=Decimal(amount),
                )
            )
        db.session.commit()
    page = client.get("/admin/campaigns").get_data(as_text=True)
    rows = download(client, csv_link(page, "campaigns-csv"))
    assert rows == [
        [
            "campaign",
            "channel",
            "utm_campaigns",
            "emails",
            "sequences",
            "starts_on",
            "ends_on",
            "cost",
            "cost_basis",
        ],
        ["'" + EVIL, "event", "", "0", "0", "", "", "150.25", "per_period"],
        [
            "Spring",
            "paid_search",
            "spring, spring-b",
            "2",
            "0",
            "2026-03-01",
            "2026-03-31",
            "1200.5",
            "total",
        ],
        ["Word of mouth", "other", "", "0", "0", "", "", "", ""],
    ]
    sales = app.test_client()
    admin_login(app, sales, "sales")
    assert sales.get("/admin/campaigns?format=csv").status_code == 403


# The dashboard


def test_dashboard_tables_as_csv(app, client, site):
    build_dashboard(app, site)
    admin_login(app, client, "marketer")
    page = client.get("/admin/dashboard?days=90").get_data(as_text=True)
    last = utcnow().date()
    span = f"{last - timedelta(days=89)}_{last}"
    funnel = download(client, csv_link(page, "funnel-csv"), f"dashboard_funnel_{span}.csv")
    assert funnel[0] == [
        "step",
        "label",
        "count",
        "rate_from_previous",
        "median_days_from_previous",
    ]
    by_step = {row[0]: row[1:] for row in funnel[1:]}
    assert by_step["visitors"] == ["Visitors", "3", "", ""]
    assert by_step["lead"] == ["Leads", "3", "1", ""]
    assert by_step["mql"] == ["MQLs", "2", "0.6667", "4"]  # the page's 66.7% and 4.0 days
    assert by_step["sql"] == ["SQLs", "1", "0.5", "3"]

    roi = download(client, csv_link(page, "roi-csv"))
    assert roi[0][:3] == ["campaign", "channel", "visitors"] and roi[0][-1] == "roi"
    assert len(roi) == 2
    assert roi[1][0] == EVIL_CAMPAIGN  # starts with "<": nothing to guard in a CSV
    assert (roi[1][7], roi[1][8], roi[1][11]) == ("500", "100", "4")

    email = download(client, csv_link(page, "email-csv"))
    assert email == [["emails_sent", "human_opens", "human_clicks"], ["0", "7", "0"]]

    health = download(client, csv_link(page, "health-csv"))
    assert health[0][:2] == ["owner", "mqls"]
    # L1's MQL 8 days ago and L2's 3 days ago, neither owned nor acted on.
    assert health[1:] == [
        ["(all)", "2", "0", "2", "0", "2", "0", ""],
        ["(nobody)", "2", "0", "2", "0", "2", "0", ""],
    ]
    # The period is the page's.
    week = download(client, "/admin/dashboard?format=csv&table=funnel&days=7")
    assert {row[0]: row[2] for row in week[1:]}["lead"] == "1"


def test_dashboard_csv_for_sales_and_bad_requests(app, client, site):
    sales_id = admin_login(app, client, "sales")
    build_dashboard(app, site, sales_id)
    page = client.get("/admin/dashboard").get_data(as_text=True)
    assert 'id="roi-csv"' not in page and 'id="email-csv"' not in page
    health = download(client, csv_link(page, "health-csv"))
    assert health[1:] == [["Sales", "1", "0", "1", "0", "1", "0", ""]]  # only their own L2
    assert client.get("/admin/dashboard?format=csv&table=roi").status_code == 403
    assert client.get("/admin/dashboard?format=csv&table=email").status_code == 403
    for query in ("table=", "table=secrets", "table=funnel&days=8"):
        response = client.get(f"/admin/dashboard?format=csv&{query}")
        assert response.status_code == 400, query
        assert "Content-Disposition" not in response.headers


# Import history


def test_import_history_csv_holds_every_import_the_user_may_read(app, client):
    me = admin_login(app, client, "marketer")
    other = make_user(app, "marketer", email="other@example.com")
    with app.app_context():
        db.session.add_all(
            ContactImport(
                token=f"cli-{n}",
                source="cli",
                filename=f"file-{n:02}.csv",
                status="done",
                rows_total=n,
                rows_done=n,
                created=n,
                errors=[],
                created_at=T0 + timedelta(minutes=n // 3),  # ties: the id decides
                finished_at=T0 + timedelta(hours=1),
            )
            for n in range(PER_PAGE + 2)
        )
        db.session.add(
            ContactImport(
                token="mine",
                user_id=me,
                source="admin",
                filename=EVIL + ".csv",
                status="failed",
                rows_total=10,
                rows_done=4,
                failure="@the database went away",
                errors=[],
                created_at=T0 + timedelta(days=1),
            )
        )
        db.session.add(
            ContactImport(
                token="theirs",
                user_id=other,
                source="admin",
                filename="private.csv",
                status="done",
                errors=[],
                created_at=T0 + timedelta(days=2),
            )
        )
        db.session.commit()
    page = client.get("/admin/import").get_data(as_text=True)
    rows = download(client, csv_link(page, "imports-csv"))
    assert rows[0] == [
        "started_at",
        "file",
        "by",
        "source",
        "status",
        "rows_total",
        "rows_done",
        "created",
        "updated",
        "unchanged",
        "repeated",
        "skipped",
        "finished_at",
        "failure",
    ]
    assert rows[1] == [
        "2025-03-02 09:30:00",
        "'" + EVIL + ".csv",
        "Marketer",
        "admin",
        "failed",
        "10",
        "4",
        "0",
        "0",
        "0",
        "0",
        "0",
        "",
        "'@the database went away",
    ]
    # Newest first, every one of them, not the other marketer's.
    assert [r[1] for r in rows[2:]] == [f"file-{n:02}.csv" for n in reversed(range(PER_PAGE + 2))]
    assert rows[2][2] == "" and rows[2][12] == "2025-03-01 10:30:00"
    assert "private.csv" not in {r[1] for r in rows}
    sales = app.test_client()
    admin_login(app, sales, "sales")
    assert sales.get("/admin/import?format=csv").status_code == 403


def test_keyset_chunks_cover_ties_at_chunk_edges(app):
    """Times tied three at a time, chunks of 7 and of 1: each row once, in order."""
    base = T0
    with app.app_context():
        contacts = [Contact(email=f"c{i:02}@example.com", traits={}) for i in range(20)]
        db.session.add_all(contacts)
        db.session.flush()
        db.session.add_all(
            StageChange(
                contact_id=c.id,
                to_stage="mql",
                cause="x",
                created_at=base + timedelta(minutes=i // 3),
            )
            for i, c in enumerate(contacts)
        )
        db.session.commit()
        from sqlalchemy import select

        from tracker.paging import SortKey

        query = select(StageChange.contact_id)
        keys = [SortKey(StageChange.created_at, "time"), SortKey(StageChange.id, "int")]
        expected = [c.id for c in contacts]
        for size in (1, 7, 20, 50):
            chunks = list(csv_export.keyset_chunks(query, keys, size=size))
            assert [r[0] for chunk in chunks for r in chunk] == expected, size
            assert all(len(chunk) <= size for chunk in chunks)
        backwards = list(csv_export.keyset_rows(query, keys, descending=True))
        assert [r[0] for r in backwards] == expected[::-1]
