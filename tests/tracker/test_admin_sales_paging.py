"""Paging of the sales lists: My leads' two queues, the untouched MQLs, the opportunities."""

from __future__ import annotations

import html
import re
from datetime import date, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import update

from tests.conftest import admin_login, make_user
from tracker.automation_models import StageChange
from tracker.db import db
from tracker.models import Contact, utcnow
from tracker.paging import PER_PAGE
from tracker.sales_models import Opportunity

LEAD_LINK = re.compile(r'<a href="/admin/leads/\d+">([^<]+)</a>')


def many_leads(
    app, owner_id, count: int, stage: str = "mql", tie: int = 3, who: str = ""
) -> list[str]:
    """`count` leads that became MQLs a minute apart, `tie` at a time; emails, oldest first.

    Leads of one minute are ordered by id, i.e. by creation; 3 at a time puts
    the 50th and 51st in one minute, across the first page's end.
    """
    base = utcnow() - timedelta(days=20)
    with app.app_context():
        contacts = [
            Contact(
                email=f"{who}{stage}-{i:03}@example.com", stage=stage, owner_id=owner_id, traits={}
            )
            for i in range(count)
        ]
        db.session.add_all(contacts)
        db.session.flush()
        db.session.add_all(
            StageChange(
                contact_id=contact.id,
                from_stage="lead",
                to_stage="mql",
                cause="threshold 'MQL'",
                created_at=base + timedelta(minutes=i // tie),
            )
            for i, contact in enumerate(contacts)
        )
        db.session.commit()
        return [contact.email for contact in contacts]


def table(page: str, table_id: str) -> str:
    return page.split(f'id="{table_id}"')[1].split("</table>")[0]


def link(page: str, rel: str, anchor: str) -> str | None:
    """The href of the rel=prev/next link that pages the list at `anchor`."""
    for href in re.findall(rf'rel="{rel}" href="([^"]+)"', page):
        href = html.unescape(href)
        if href.endswith(f"#{anchor}"):
            return href
    return None


def walk(client, url: str, table_id: str, anchor: str) -> tuple[list[list[str]], list[str]]:
    """Follow the next links from `url`: each page's lead labels, and each page's URL."""
    pages, urls = [], []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        text = response.get_data(as_text=True)
        pages.append(LEAD_LINK.findall(table(text, table_id)))
        urls.append(url)
        url = link(text, "next", anchor)
        assert len(urls) < 10, "the next links go round in circles"
    return pages, urls


@pytest.fixture
def sales(app, client):
    return admin_login(app, client, role="sales")


def test_the_waiting_queue_pages_by_fifty_oldest_first_with_counts(app, client, sales):
    emails = many_leads(app, sales, 120)
    pages, urls = walk(client, "/admin/leads", "waiting", "waiting-queue")
    assert [len(p) for p in pages] == [PER_PAGE, PER_PAGE, 20]
    # Every lead once, in order, ties across the ends of pages too.
    assert [e for p in pages for e in p] == emails
    first = client.get("/admin/leads").get_data(as_text=True)
    assert "MQLs waiting for a decision (120)" in first
    assert "1\N{EN DASH}50 of 120 MQLs" in first and link(first, "prev", "waiting-queue") is None
    second = client.get(urls[1]).get_data(as_text=True)
    assert "51\N{EN DASH}100 of 120 MQLs" in second
    last = client.get(urls[2]).get_data(as_text=True)
    assert "101\N{EN DASH}120 of 120 MQLs" in last and link(last, "next", "waiting-queue") is None
    # Back from the last page: exactly the second page again; back from that: the first.
    back = client.get(link(last, "prev", "waiting-queue")).get_data(as_text=True)
    assert LEAD_LINK.findall(table(back, "waiting")) == emails[50:100]
    top = client.get(link(back, "prev", "waiting-queue")).get_data(as_text=True)
    assert LEAD_LINK.findall(table(top, "waiting")) == emails[:50]
    assert link(top, "prev", "waiting-queue") is None


def test_deciding_leads_on_a_page_skips_nobody_on_the_next(app, client, sales):
    emails = many_leads(app, sales, 70)
    first = client.get("/admin/leads").get_data(as_text=True)
    following = link(first, "next", "waiting-queue")
    # Ten leads of the first page are accepted meanwhile: they leave the queue. An offset
    # of 50 would now skip the ten that moved up; the key of the 50th row does not.
    with app.app_context():
        db.session.execute(
            update(Contact).where(Contact.email.in_(emails[40:50])).values(stage="sql")
        )
        db.session.commit()
    second = client.get(following).get_data(as_text=True)
    assert LEAD_LINK.findall(table(second, "waiting")) == emails[50:]
    assert "41\N{EN DASH}60 of 60 MQLs" in second
    accepted = LEAD_LINK.findall(table(second, "accepted"))
    assert accepted == emails[40:50]


def test_the_two_queues_page_apart_and_keep_the_owner_filter(app, client):
    admin_login(app, client, role="admin")
    ann = make_user(app, "sales", email="ann@example.com")
    bob = make_user(app, "sales", email="bob@example.com")
    waiting = many_leads(app, ann, 60)
    accepted = many_leads(app, ann, 55, stage="sql")
    many_leads(app, bob, 5, stage="sql", tie=1, who="bob-")
    start = f"/admin/leads?owner={ann}"
    text = client.get(start).get_data(as_text=True)
    accepted_next = link(text, "next", "accepted-queue")
    assert parse_qs(urlsplit(accepted_next).query)["owner"] == [str(ann)]
    text = client.get(accepted_next).get_data(as_text=True)
    assert LEAD_LINK.findall(table(text, "accepted")) == accepted[50:]
    assert LEAD_LINK.findall(table(text, "waiting")) == waiting[:50]
    # Paging the waiting queue now keeps the accepted queue on its second page.
    text = client.get(link(text, "next", "waiting-queue")).get_data(as_text=True)
    assert LEAD_LINK.findall(table(text, "waiting")) == waiting[50:]
    assert LEAD_LINK.findall(table(text, "accepted")) == accepted[50:]
    assert "Accepted leads (SQL) not converted yet (55)" in text


def test_the_untouched_mqls_page_and_count_them_all(app, client):
    admin_login(app, client, role="marketer")
    ann = make_user(app, "sales", email="ann@example.com")
    emails = many_leads(app, ann, 75)
    text = client.get("/admin/leads/health").get_data(as_text=True)
    assert '<strong id="untouched-count">75</strong>' in text
    labels = re.compile(r"<tr><td>([^<]+@example\.com)</td>")
    assert labels.findall(table(text, "untouched")) == emails[:50]
    text = client.get(link(text, "next", "untouched-mqls")).get_data(as_text=True)
    assert labels.findall(table(text, "untouched")) == emails[50:]
    assert "51\N{EN DASH}75 of 75 untouched MQLs" in text


BAD_CURSORS = [
    "yesterday",
    "2025-01-01T00:00:00+00:00",  # one key of two
    "2025-01-01T00:00:00+00:00,abc",
    "2025-13-01T00:00:00,1",
    "2025-01-01T00:00:00,99999999999999999999999999",
    "0001-01-01T00:00:00+05:00,1",  # before year 1 once in UTC
    "2025-01-01T00:00:00," + "9" * 300,
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_hand_edited_cursor_is_a_400_naming_it(app, client, sales, cursor):
    many_leads(app, sales, 3)
    for url, name in [
        ("/admin/leads?waiting_after=", "waiting_after"),
        ("/admin/leads?accepted_before=", "accepted_before"),
        ("/admin/leads/health?after=", "after"),
    ]:
        response = client.get(url + cursor)
        assert response.status_code == 400, (url, cursor)
        assert f"&#39;{name}&#39; is not a position in this list" in response.get_data(as_text=True)
    both = client.get("/admin/leads?waiting_after=x&waiting_before=y")
    assert both.status_code == 400 and "not both" in both.get_data(as_text=True)


def _deals(app, owner_id, specs) -> list[str]:
    """Opportunities from (name, stage, expected close); their names, as given."""
    with app.app_context():
        contact = Contact(email=f"buyer-{owner_id}@example.com", stage="opportunity", traits={})
        db.session.add(contact)
        db.session.flush()
        db.session.add_all(
            Opportunity(
                contact_id=contact.id,
                owner_id=owner_id,
                name=name,
                amount=Decimal("10"),
                stage=stage,
                expected_close=close,
                closed_at=None if stage == "open" else utcnow(),
            )
            for name, stage, close in specs
        )
        db.session.commit()
    return [name for name, _, _ in specs]


DEAL_LINK = re.compile(r'<a href="/admin/opportunities/\d+">([^<]+)</a>')


def test_opportunities_page_open_then_closed_dated_before_undated(app, client, sales):
    day = date(2030, 1, 1)
    specs = [(f"lost {i:02}", "lost", day + timedelta(days=i)) for i in range(10)]
    specs += [(f"open undated {i:02}", "open", None) for i in range(15)]
    specs += [(f"open {i:02}", "open", day + timedelta(days=i // 2)) for i in range(40)]
    specs += [(f"won undated {i:02}", "won", None) for i in range(5)]
    _deals(app, sales, specs)
    expected = (
        [f"open {i:02}" for i in range(40)]
        + [f"open undated {i:02}" for i in range(15)]
        + [f"lost {i:02}" for i in range(10)]
        + [f"won undated {i:02}" for i in range(5)]
    )
    url, seen = "/admin/opportunities", []
    while url:
        text = client.get(url).get_data(as_text=True)
        seen.append(DEAL_LINK.findall(table(text, "opportunities")))
        url = link(text, "next", "opportunities")
    assert [len(p) for p in seen] == [50, 20]
    assert [n for p in seen for n in p] == expected
    assert "51\N{EN DASH}70 of 70 opportunities" in text
    assert "<strong>50.00</strong>5 won" in text  # the totals count every page


def test_opportunity_links_keep_the_filters_even_everyone(app, client, sales):
    other = make_user(app, "sales", email="bob@example.com")
    _deals(app, sales, [(f"mine {i:02}", "open", None) for i in range(30)])
    _deals(app, other, [(f"bob {i:02}", "open", None) for i in range(30)])
    text = client.get("/admin/opportunities?owner=&stage=open").get_data(as_text=True)
    following = link(text, "next", "opportunities")
    assert parse_qs(urlsplit(following).query, keep_blank_values=True)["owner"] == [""]
    text = client.get(following).get_data(as_text=True)
    assert "51\N{EN DASH}60 of 60 opportunities" in text
    # A salesperson's own list (the default) has one page only.
    text = client.get("/admin/opportunities").get_data(as_text=True)
    assert link(text, "next", "opportunities") is None and "mine 29" in text


@pytest.mark.parametrize("cursor", ["1,0,2030-01-01", "1,0,2030-02-30,5", "x,0,2030-01-01,5"])
def test_a_bad_opportunities_cursor_is_a_400_that_changes_nothing(app, client, sales, cursor):
    _deals(app, sales, [("Deal", "open", None)])
    response = client.get(f"/admin/opportunities?after={cursor}")
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "is not a position in this list" in text and 'id="opportunities"' not in text
