"""Email opens and clicks through ingestion: message resolution, machine flags, counters,
points and segments, and the click that identifies a browser."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select

from automation.ingest import store_rows
from automation.rows import event_row
from automation.store import store_batch
from tests.automation.test_segments import load, members
from tests.conftest import BROWSER_UA, event, ingest_all, post_events
from tests.tracker.test_email_links import email_message, message_row, token
from tracker.automation_models import PointsEntry
from tracker.db import db
from tracker.email_models import EmailTemplate
from tracker.models import Contact, Event, Visitor
from tracker.redis_conn import get_redis
from tracker.stream import encode
from tracker.tokens import signing_key

GOOGLE_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)


def entry(kind: str, message_id: int, at: float | None = None, **fields: Any) -> dict[str, Any]:
    """A stamped email entry as the link endpoints write it."""
    body = {
        "id": str(uuid.uuid4()),
        "type": kind,
        "message": message_id,
        "at": time.time() if at is None else at,
        "ip": "203.0.113.5",
        "ua": BROWSER_UA,
    }
    if kind == "email_click":
        body.update(link=1, method="GET", target="https://www.example.com/pricing")
    body.update(fields)
    return body


def append(app, *entries: dict[str, Any]) -> None:
    app.extensions["event_sink"].append([encode(e) for e in entries])


def stored_events(app) -> list[Event]:
    with app.app_context():
        events = db.session.scalars(select(Event).order_by(Event.occurred_at, Event.id)).all()
        db.session.expunge_all()
        return list(events)


def test_opens_and_clicks_are_stored_for_the_contact_with_the_message_props(app):
    message_id = email_message(app)
    now = time.time()
    append(app, entry("email_open", message_id, now), entry("email_click", message_id, now + 20))
    assert ingest_all(app) == 2
    opened, clicked = stored_events(app)
    with app.app_context():
        template_id = db.session.scalar(select(EmailTemplate.id))
        contact_id = db.session.scalar(select(Contact.id))
    for stored in (opened, clicked):
        assert stored.contact_id == contact_id and stored.visitor_id is None
        assert stored.props["message_id"] == message_id
        assert stored.props["template_id"] == template_id  # a number, as rules compare it
        assert stored.props["variant"] == "A"
        assert not stored.is_bot
    assert (opened.type, clicked.type) == ("email_open", "email_click")
    assert clicked.target == "https://www.example.com/pricing" and clicked.props["link"] == 1
    assert 3590 <= opened.seconds <= 3700
    message = message_row(app, message_id)
    assert (message.opens, message.clicks, message.machine_opens, message.machine_clicks) == (
        1,
        1,
        0,
        0,
    )
    assert message.opened_at is not None and message.clicked_at is not None


def test_machine_events_are_stored_flagged_and_counted_apart(app):
    message_id = email_message(app)
    sent_at = time.time() - 3600
    append(
        app,
        entry("email_open", message_id, ua=GOOGLE_PROXY),
        entry("email_open", message_id, at=sent_at + 1),  # prefetched on delivery
        entry("email_click", message_id, method="HEAD"),
        entry("email_click", message_id, ua="Barracuda Sentinel (EE)"),
    )
    assert ingest_all(app) == 4
    reasons = sorted(e.bot_reason for e in stored_events(app))
    assert reasons == ["image_proxy", "prefetch", "scanner_head", "security_gateway"]
    assert all(e.is_bot for e in stored_events(app))
    message = message_row(app, message_id)
    assert (message.opens, message.clicks, message.machine_opens, message.machine_clicks) == (
        0,
        0,
        2,
        2,
    )
    # Machines take no branches: the human-only first open and click stay empty.
    assert message.opened_at is None and message.clicked_at is None


def test_a_burst_of_different_links_is_a_scanner_even_across_batches(app):
    message_id = email_message(app, links=["https://a.test/", "https://b.test/", "https://c.test/"])
    now = time.time()
    append(app, entry("email_click", message_id, now, link=1))
    ingest_all(app)
    append(
        app,
        entry("email_click", message_id, now + 0.3, link=2),
        entry("email_click", message_id, now + 0.5, link=3),
        entry("email_click", message_id, now + 60, link=1),  # a person, later
    )
    ingest_all(app)
    events = stored_events(app)
    assert [e.bot_reason for e in events] == [None, "scanner_burst", "scanner_burst", None]
    message = message_row(app, message_id)
    assert (message.clicks, message.machine_clicks) == (2, 2)


def test_a_human_click_proves_the_open(app):
    message_id = email_message(app)
    append(app, entry("email_click", message_id))
    ingest_all(app)
    message = message_row(app, message_id)
    assert (message.opens, message.clicks) == (0, 1)
    assert message.opened_at == message.clicked_at is not None


def test_storing_the_same_entries_again_counts_nothing_twice(app):
    message_id = email_message(app)
    rows = [event_row(entry("email_open", message_id)), event_row(entry("email_click", message_id))]
    with app.app_context():
        assert store_rows([dict(r) for r in rows]) == 2
        assert store_rows([dict(r) for r in rows]) == 0
    message = message_row(app, message_id)
    assert (message.opens, message.clicks) == (1, 1)
    assert len(stored_events(app)) == 2


def test_the_batch_names_the_messages_a_person_opened_or_clicked(app):
    human, machine = email_message(app), email_message(app)
    rows = [
        event_row(entry("email_open", human)),
        event_row(entry("email_open", machine, ua=GOOGLE_PROXY)),
        event_row(entry("email_click", machine, method="HEAD")),
    ]
    with app.app_context(), db.engine.begin() as conn:
        batch = store_batch(conn, rows)
    assert batch.human_email_messages == {human}
    assert batch.stored == 3


def test_an_entry_for_a_missing_message_is_skipped_not_retried(app):
    message_id = email_message(app)
    append(app, entry("email_open", 987654), entry("email_open", message_id))
    assert ingest_all(app) == 1
    assert message_row(app, message_id).opens == 1
    # Acknowledged, not left pending to fail again, and the batch's other event stored.
    stream, group = app.config["EVENT_STREAM"], app.config["INGEST_GROUP"]
    assert get_redis(app).xpending(stream, group)["pending"] == 0
    assert get_redis(app).xlen(stream) == 0
    assert [e.props["message_id"] for e in stored_events(app)] == [message_id]


def test_human_events_earn_points_and_count_for_segments_machine_ones_do_not(app, tmp_path):
    rules = """\
segments:
  - name: Openers
    match:
      email: {action: opened, within_days: 14}
rules:
  - name: Opened an email
    event: email_open
    points: 5
"""
    result, _ = load(app, tmp_path, rules)
    assert result.exit_code == 0, result.output
    human = email_message(app, email="ann@example.org")
    machine = email_message(app, email="bob@example.org")
    append(app, entry("email_open", human), entry("email_open", machine, ua=GOOGLE_PROXY))
    ingest_all(app)
    assert members(app, "Openers") == {"ann@example.org"}
    with app.app_context():
        scores = dict(db.session.execute(select(Contact.email, Contact.score)).all())
        assert db.session.query(PointsEntry).count() == 1
    assert scores == {"ann@example.org": 5, "bob@example.org": 0}


def visitor_contact(app, key: str) -> int | None:
    with app.app_context():
        return db.session.scalar(select(Visitor.contact_id).where(Visitor.key == key))


def test_a_page_reached_from_an_email_link_identifies_its_visitor(app, client, site):
    message_id = email_message(app)
    with app.app_context():
        contact_id = db.session.scalar(select(Contact.id))
    # The visitor browsed anonymously before; then arrives through the email's link.
    post_events(client, site.key, [event(url="https://example.com/blog")], visitor="visitor-0042")
    ingest_all(app)
    identify = token(app, "identify", message_id)
    landing = f"https://www.example.com/pricing?plan=pro&cl_c={identify}"
    post_events(client, site.key, [event(url=landing)], visitor="visitor-0042")
    ingest_all(app)
    assert visitor_contact(app, "visitor-0042") == contact_id
    # Its history is the contact's now, and nobody else was created.
    assert {e.contact_id for e in stored_events(app)} == {contact_id}
    with app.app_context():
        assert db.session.query(Contact).count() == 1


def test_a_forged_or_foreign_identify_token_is_ignored(app, client, site):
    message_id = email_message(app)
    forged = token(app, "identify", message_id)[:-1] + "x"
    click_token = token(app, "click", message_id, 1)  # signed, but not for identifying
    other_key = signing_key("another-secret")
    from tracker.tokens import make_token

    foreign = make_token(other_key, "identify", message_id)
    for n, value in enumerate((forged, click_token, foreign, "")):
        url = f"https://example.com/pricing?cl_c={value}"
        post_events(client, site.key, [event(url=url)], visitor=f"visitor-10{n}")
    assert ingest_all(app) == 4
    for n in range(4):
        assert visitor_contact(app, f"visitor-10{n}") is None
    assert all(e.contact_id is None for e in stored_events(app))


def test_the_first_human_open_is_kept_whatever_order_batches_arrive_in(app):
    message_id = email_message(app)
    now = time.time()
    append(app, entry("email_open", message_id, now))
    ingest_all(app)
    first = message_row(app, message_id).opened_at
    append(app, entry("email_open", message_id, now + 60))
    ingest_all(app)
    assert message_row(app, message_id).opened_at == first
    append(app, entry("email_open", message_id, now - 60))  # late from a slower worker
    ingest_all(app)
    message = message_row(app, message_id)
    assert message.opened_at < first and message.opens == 3
    assert message.clicked_at is None
