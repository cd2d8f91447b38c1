"""The admin's contacts: search and filters, the 360° page and its timeline, notes."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from tests.conftest import admin_login, make_user, post_form
from tracker.automation_models import (
    ContactTag,
    PointsEntry,
    ScoringRule,
    Segment,
    SegmentChange,
    SegmentMember,
    StageChange,
    Threshold,
    ThresholdState,
)
from tracker.contact_timeline import Entry, contact_timeline, merge
from tracker.db import db
from tracker.email_models import (
    EmailTemplate,
    Enrolment,
    EnrolmentLog,
    Message,
    OutboxMessage,
    Sequence,
    TemplateVersion,
)
from tracker.models import Contact, Event, Visitor
from tracker.sales_models import ContactNote, LeadAction, Opportunity
from tracker.sites import create_site

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
XSS = "<script>alert(1)</script>"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _event(contact_id: int | None, visitor_id: int | None, site_id: int | None, **fields: Any):
    return Event(
        uuid=uuid.uuid4(), contact_id=contact_id, visitor_id=visitor_id, site_id=site_id, **fields
    )


def seed_contact(app, email: str = "ada@acme.test", **columns: Any) -> int:
    """A contact with one row of every kind the timeline and the erasure know; returns its id.

    Times are T0 + minutes: web events 1 to 7, email 10 to 13, score 20, stage 21,
    enrolment 22, segment 23, note 24, opportunity 25 (won 30), sales action 26.
    """
    with app.app_context():
        site = create_site(f"Site {email}", ["acme.test"])
        owner = make_owner(email)
        contact = Contact(
            email=email,
            first_name=columns.pop("first_name", "Ada"),
            last_name=columns.pop("last_name", "Lovelace"),
            company=columns.pop("company", "Acme"),
            traits=columns.pop("traits", {"plan": "pro"}),
            stage="mql",
            score=35,
            engagement_score=25,
            fit_score=10,
            owner_id=owner,
            **columns,
        )
        db.session.add(contact)
        db.session.flush()
        visitor = Visitor(
            site_id=site.id,
            key=f"v-{contact.id}-abcdef",
            contact_id=contact.id,
            first_seen=at(0),
            last_seen=at(8),
            landing_url="https://acme.test/?utm_source=news",
            referrer="https://search.test/",
            utm_source="news",
        )
        db.session.add(visitor)
        db.session.flush()
        cid, vid, sid = contact.id, visitor.id, site.id
        web = [
            dict(
                type="pageview", url="https://acme.test/pricing", title="Pricing", path="/pricing"
            ),
            dict(type="search", url="https://acme.test/s", query="webhooks"),
            dict(type="download", url="https://acme.test/", target="https://acme.test/guide.pdf"),
            dict(type="outbound", url="https://acme.test/", target="https://partner.test/"),
            dict(type="custom", url="https://acme.test/", name="video_play", props={"v": 1}),
            dict(type="identify", url="https://acme.test/", email=email, props={"plan": "pro"}),
            dict(
                type="pageview",
                url="https://acme.test/crawl",
                title="Crawled",
                is_bot=True,
                bot_reason="crawler",
            ),
        ]
        events = [
            _event(cid, vid, sid, occurred_at=at(i + 1), **fields) for i, fields in enumerate(web)
        ]
        # Browsed before it identified: attributed to no contact, but its visitor's.
        events.append(
            _event(
                None,
                vid,
                sid,
                type="pageview",
                url="https://acme.test/a",
                title="Anon",
                occurred_at=at(0),
            )
        )
        db.session.add_all(events)
        template = EmailTemplate(name=f"Welcome {email}")
        db.session.add(template)
        db.session.flush()
        version = TemplateVersion(
            template_id=template.id, version=1, variants=[], source={}, digest="x"
        )
        sequence = Sequence(name=f"Nurture {email}", steps=[])
        db.session.add_all([version, sequence])
        db.session.flush()
        enrolment = Enrolment(sequence_id=sequence.id, contact_id=cid, cause="segment join")
        db.session.add(enrolment)
        db.session.flush()
        message = Message(
            contact_id=cid,
            template_id=template.id,
            template_version_id=version.id,
            variant="A",
            kind="sequence",
            enrolment_id=enrolment.id,
            step=0,
            to_addr=email,
            status="sent",
            subject="Hello Ada",
            sent_at=at(10),
        )
        db.session.add(message)
        db.session.flush()
        props = {"message_id": message.id, "template_id": template.id, "variant": "A"}
        db.session.add_all(
            [
                _event(
                    cid,
                    None,
                    None,
                    type="email_open",
                    occurred_at=at(11),
                    props=props,
                    is_bot=True,
                    bot_reason="apple_mpp",
                ),
                _event(cid, None, None, type="email_open", occurred_at=at(12), props=props),
                _event(
                    cid,
                    None,
                    None,
                    type="email_click",
                    occurred_at=at(13),
                    props=props,
                    target="https://acme.test/offer",
                ),
                OutboxMessage(message_id=message.id, to_addr=email, subject="Hello", raw="..."),
            ]
        )
        rule = ScoringRule(name=f"Pricing page {email}", kind="engagement", points=10)
        segment = Segment(name=f"Hot {email}", rules={})
        db.session.add_all([rule, segment])
        db.session.flush()
        threshold = Threshold(name=f"MQL {email}", score="total", minimum=30)
        db.session.add(threshold)
        db.session.flush()
        db.session.add_all(
            [
                PointsEntry(
                    contact_id=cid,
                    rule_id=rule.id,
                    event_id=events[0].id,
                    kind="engagement",
                    delta=10,
                    reason="rule",
                    created_at=at(20),
                ),
                StageChange(
                    contact_id=cid,
                    from_stage="lead",
                    to_stage="mql",
                    cause="threshold MQL",
                    created_at=at(21),
                ),
                EnrolmentLog(
                    enrolment_id=enrolment.id, position=0, action="entered", created_at=at(22)
                ),
                SegmentMember(segment_id=segment.id, contact_id=cid, since=at(23)),
                SegmentChange(
                    segment_id=segment.id, contact_id=cid, change="join", created_at=at(23)
                ),
                ContactTag(contact_id=cid, tag="vip"),
                ThresholdState(threshold_id=threshold.id, contact_id=cid, above=True, fired=1),
                ContactNote(
                    contact_id=cid, author_id=owner, body="Called, keen", created_at=at(24)
                ),
                Opportunity(
                    contact_id=cid,
                    owner_id=owner,
                    name=f"Deal with {email}",
                    amount=Decimal("1200.50"),
                    stage="won",
                    created_at=at(25),
                    closed_at=at(30),
                ),
                LeadAction(contact_id=cid, user_id=owner, action="accept", created_at=at(26)),
            ]
        )
        db.session.commit()
        return cid


def make_owner(email: str) -> int:
    from tracker.models import User

    user = User(email=f"owner-{email}", name=f"Owner of {email}", role="sales")
    db.session.add(user)
    db.session.flush()
    return user.id


def _contact(app, email: str, **columns: Any) -> int:
    with app.app_context():
        contact = Contact(email=email, **columns)
        db.session.add(contact)
        db.session.commit()
        return contact.id


def _emails(page: str) -> list[str]:
    return re.findall(r'<a href="/admin/contacts/\d+">([^<]+)</a>', page)


def test_search_matches_email_name_and_company_in_any_case(app, client):
    admin_login(app, client)
    _contact(app, "ada@acme.test", first_name="Ada", last_name="Lovelace", company="Acme")
    _contact(app, "bob@other.test", first_name="Bob", last_name="Byte", company="Initech")
    _contact(app, "carol@acme.test", first_name="Carol", company="100% Fun")
    for query, expected in [
        ("ACME", {"ada@acme.test", "carol@acme.test"}),
        ("ada lovelace", {"ada@acme.test"}),
        ("initech", {"bob@other.test"}),
        ("byte", {"bob@other.test"}),
        ("100%", {"carol@acme.test"}),
        # LIKE's wildcards are taken literally: "%" is not "anything".
        ("%", {"carol@acme.test"}),
        ("_", set()),
    ]:
        page = client.get("/admin/contacts", query_string={"q": query})
        assert page.status_code == 200
        assert set(_emails(page.get_data(as_text=True))) == expected, query


def test_filters_by_stage_owner_segment_and_score_range(app, client):
    admin_login(app, client)
    owner = make_user(app, "sales", email="seller@example.com")
    a = _contact(app, "a@x.test", stage="mql", score=50, owner_id=owner)
    _contact(app, "b@x.test", stage="lead", score=5)
    c = _contact(app, "c@x.test", stage="mql", score=10)
    with app.app_context():
        segment = Segment(name="Hot", rules={})
        db.session.add(segment)
        db.session.flush()
        db.session.add(SegmentMember(segment_id=segment.id, contact_id=c))
        db.session.commit()
        segment_id = segment.id

    def emails(**args: Any) -> set[str]:
        page = client.get("/admin/contacts", query_string=args)
        assert page.status_code == 200, page.get_data(as_text=True)
        return set(_emails(page.get_data(as_text=True)))

    assert emails(stage="mql") == {"a@x.test", "c@x.test"}
    assert emails(owner=owner) == {"a@x.test"}
    assert emails(owner="none") == {"b@x.test", "c@x.test"}
    assert emails(segment=segment_id) == {"c@x.test"}
    assert emails(min_score=10) == {"a@x.test", "c@x.test"}
    assert emails(min_score=6, max_score=10) == {"c@x.test"}
    assert emails(stage="mql", max_score=20) == {"c@x.test"}
    assert a


def test_list_is_newest_activity_first_and_paginated(app, client):
    admin_login(app, client)
    with app.app_context():
        site = create_site("S", ["x.test"])
        db.session.flush()
        for i in range(55):
            contact = Contact(email=f"c{i:02d}@x.test", updated_at=at(-1000))
            db.session.add(contact)
            db.session.flush()
            if i % 2 == 0:  # seen on the site at minute i; the odd ones only changed long ago
                db.session.add(
                    Visitor(
                        site_id=site.id,
                        key=f"visitor-{i:04d}",
                        contact_id=contact.id,
                        first_seen=at(i),
                        last_seen=at(i),
                    )
                )
        db.session.commit()
    first = client.get("/admin/contacts").get_data(as_text=True)
    emails = _emails(first)
    assert len(emails) == 50 and "55 contacts" in first
    assert emails[:3] == ["c54@x.test", "c52@x.test", "c50@x.test"]
    assert 'rel="next"' in first
    second = client.get("/admin/contacts", query_string={"page": 2}).get_data(as_text=True)
    rest = _emails(second)
    assert len(rest) == 5 and not set(rest) & set(emails)
    assert 'rel="next"' not in second and 'rel="prev"' in second


def test_bad_filters_are_named_next_to_their_field_with_a_400(app, client):
    admin_login(app, client)
    _contact(app, "a@x.test", stage="mql", score=50)
    for args, message in [
        ({"min_score": "lots"}, "minimum score must be a whole number, not &#39;lots&#39;"),
        ({"stage": "hot"}, "unknown stage &#39;hot&#39;"),
        ({"min_score": "9", "max_score": "3"}, "the maximum score (3) is below the minimum (9)"),
        ({"page": "0"}, "page must be between 1 and"),
        ({"segment": "x"}, "segment must be a whole number"),
        ({"owner": "1.5"}, "owner must be a whole number"),
        ({"q": "y" * 300}, "search at most 200 characters"),
    ]:
        response = client.get("/admin/contacts", query_string=args)
        body = response.get_data(as_text=True)
        assert response.status_code == 400, args
        assert message in body, (args, body)
        assert 'class="error"' in body and '<form class="filters"' in body


def test_the_contact_page_shows_the_header_and_every_kind_of_timeline_entry(app, client):
    admin_login(app, client)
    contact_id = seed_contact(app)
    page = client.get(f"/admin/contacts/{contact_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for text in (
        "ada@acme.test",
        "Lovelace",
        "Acme",
        "engagement 25 + fit 10",
        "Owner of ada@acme.test",
        '<span class="tag">vip</span>',
        "Hot ada@acme.test",
        "utm_source=news",
        "<dt>plan</dt><dd>pro</dd>",
        "Page view: Pricing",
        "Search: webhooks",
        "Download: https://acme.test/guide.pdf",
        "Outbound click: https://partner.test/",
        "Event: video_play",
        "Identified as ada@acme.test",
        "Email sent: Hello Ada",
        "Email opened: Welcome ada@acme.test (A)",
        "Email link clicked: Welcome ada@acme.test (A)",
        "Score +10 (engagement)",
        "rule “Pricing page ada@acme.test”",
        "Stage lead → mql",
        "threshold MQL",
        "Sequence “Nurture ada@acme.test”: entered",
        "Joined segment “Hot ada@acme.test”",
        "Called, keen",
        "Opportunity opened: Deal with ada@acme.test",
        "Opportunity won: Deal with ada@acme.test",
        "amount 1,200.50",
        "Accepted by sales",
    ):
        assert text in html, text
    # The machine open and the crawler are marked, with why.
    assert '<span class="badge">machine: apple_mpp</span>' in html
    assert '<span class="badge">bot: crawler</span>' in html
    # Newest first: the won deal (minute 30) before the sale (26) before the first page view.
    assert (
        html.index("Opportunity won")
        < html.index("Accepted by sales")
        < html.index("Page view: Pricing")
    )
    # A sales user sees it too, without the privacy actions.
    with app.test_client() as sales:
        admin_login(app, sales, role="sales")
        other = sales.get(f"/admin/contacts/{contact_id}").get_data(as_text=True)
        assert "Page view: Pricing" in other and "Erase contact" not in other
    assert "Erase contact" in html


def test_timeline_entries_know_human_from_machine(app):
    contact_id = seed_contact(app)
    with app.app_context():
        timeline = contact_timeline(contact_id)
    kinds = [(e.kind, e.title, e.machine, e.bot_reason) for e in timeline.entries]
    opens = [k for k in kinds if k[1].startswith("Email opened")]
    assert sorted(opens, key=lambda k: k[2]) == [
        ("email", "Email opened: Welcome ada@acme.test (A)", False, None),
        ("email", "Email opened: Welcome ada@acme.test (A)", True, "apple_mpp"),
    ]
    assert [e.at for e in timeline.entries] == sorted(
        (e.at for e in timeline.entries), reverse=True
    )
    assert timeline.older is None
    # The anonymous page view of its browser is the visitor's, not shown as the contact's.
    assert not any("Anon" in e.title for e in timeline.entries)


def test_show_more_pages_through_every_entry_once(app, client):
    contact_id = seed_contact(app)
    with app.app_context():
        whole = contact_timeline(contact_id).entries
        seen: list[Entry] = []
        before = None
        while True:
            page = contact_timeline(contact_id, before, limit=4)
            assert page.entries
            seen.extend(page.entries)
            if page.older is None:
                break
            before = page.older
    # The segment join and change share minute 23: the cut never splits or repeats them.
    assert seen == whole
    admin_login(app, client)
    first = client.get(f"/admin/contacts/{contact_id}").get_data(as_text=True)
    assert 'id="more"' not in first  # 21 entries fit one page of 500
    older = client.get(f"/admin/contacts/{contact_id}", query_string={"before": at(5).isoformat()})
    body = older.get_data(as_text=True)
    assert older.status_code == 200
    assert "Search: webhooks" in body and "Page view: Crawled" not in body
    bad = client.get(f"/admin/contacts/{contact_id}", query_string={"before": "yesterday"})
    assert bad.status_code == 400 and "must be a time like" in bad.get_data(as_text=True)


def test_merge_moves_a_group_of_one_instant_whole_to_the_next_page():
    entries = [Entry(at(m), "web", f"e{i}", order=(1, i)) for i, m in enumerate([5, 4, 4, 4, 3])]
    page = merge([entries[:3], entries[3:]], limit=3)
    assert [e.title for e in page.entries] == ["e0"]
    assert page.older == at(5)
    # A group bigger than a page is shown rather than skipped.
    crowd = [Entry(at(1), "web", f"c{i}", order=(1, i)) for i in range(5)]
    assert len(merge([crowd], limit=3).entries) == 3


def test_unknown_contact_is_a_404(app, client):
    admin_login(app, client)
    assert client.get("/admin/contacts/999999").status_code == 404
    response = post_form(
        client, "/admin/contacts/999999/notes", {"body": "hi"}, page="/admin/contacts"
    )
    assert response.status_code == 404


def test_notes_are_checked_stored_and_shown_in_the_timeline(app, client):
    admin_login(app, client, role="marketer")
    contact_id = _contact(app, "n@x.test")
    path = f"/admin/contacts/{contact_id}"
    for body, message in [
        ("   ", "the note is empty"),
        ("x" * 5001, "a note is at most 5000 characters; this one has 5001"),
    ]:
        response = post_form(client, f"{path}/notes", {"body": body}, page=path)
        assert response.status_code == 400
        html = response.get_data(as_text=True)
        assert message in html and 'id="note-body"' in html
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ContactNote)) == 0
    response = post_form(client, f"{path}/notes", {"body": f"Met at the fair {XSS}"}, page=path)
    assert response.status_code == 302 and response.headers["Location"].endswith("#timeline")
    html = client.get(path).get_data(as_text=True)
    assert "Met at the fair &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "by Marketer" in html
    with app.app_context():
        note = db.session.scalars(select(ContactNote)).one()
        assert note.contact_id == contact_id and note.body.startswith("Met at the fair")


def test_notes_need_the_csrf_token(app, client):
    admin_login(app, client)
    contact_id = _contact(app, "n@x.test")
    response = client.post(f"/admin/contacts/{contact_id}/notes", data={"body": "hi"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ContactNote)) == 0


def test_what_visitors_and_marketers_typed_is_shown_as_text(app, client):
    admin_login(app, client)
    contact_id = seed_contact(
        app, email="x@acme.test", first_name=XSS, company=XSS, traits={"note": XSS}
    )
    with app.app_context():
        visitor = db.session.scalars(select(Visitor)).first()
        visitor.utm_campaign = XSS
        visitor.landing_url = f"https://acme.test/?q={XSS}"
        db.session.add(
            _event(
                contact_id,
                visitor.id,
                visitor.site_id,
                type="pageview",
                title=XSS,
                url=f"https://acme.test/{XSS}",
                utm_campaign=XSS,
                occurred_at=at(40),
            )
        )
        db.session.add(
            _event(
                contact_id,
                visitor.id,
                visitor.site_id,
                type="custom",
                name=XSS,
                props={XSS: XSS},
                occurred_at=at(41),
            )
        )
        db.session.commit()
    for path in ("/admin/contacts", f"/admin/contacts/{contact_id}"):
        html = client.get(path, query_string={"q": "x@"}).get_data(as_text=True)
        assert "<script" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


def test_seeded_contact_has_every_related_row(app):
    """Guards the fixture the erasure tests rely on: one row in every table about a contact."""
    contact_id = seed_contact(app)
    with app.app_context():
        for model in (Event, Message, Enrolment, EnrolmentLog, PointsEntry, OutboxMessage):
            assert db.session.scalar(select(func.count()).select_from(model)) > 0, model
        assert db.session.get(Contact, contact_id).traits == {"plan": "pro"}
