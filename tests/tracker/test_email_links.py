"""The links in every email: open pixel, click redirect, unsubscribe, and the bounce hook."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests.automation.conftest import store_template
from tests.conftest import BROWSER_UA, ingest_all, make_app
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, EnrolmentLog, Message
from tracker.email_models import Sequence as Seq
from tracker.models import Contact, Event, EventSpool, utcnow
from tracker.redis_conn import free_port, get_redis
from tracker.tokens import make_token, read_token, signing_key

LINKS = ("https://www.example.com/pricing?plan=pro#top", "https://other.org/article")
GIF_BYTES = 43


def email_message(
    app: Flask,
    email: str = "ann@example.org",
    links: Sequence[str] = LINKS,
    sent_ago: float | None = 3600.0,
    smtp_message_id: str | None = None,
) -> int:
    """A sent message to `email` (the contact is created if new); return its id."""
    with app.app_context():
        contact = db.session.scalar(select(Contact).where(Contact.email == email))
        if contact is None:
            contact = Contact(email=email, first_name="Ann", traits={}, stage="lead", score=0)
            db.session.add(contact)
            db.session.commit()
        template = db.session.scalar(select(EmailTemplate).where(EmailTemplate.name == "welcome"))
        template_id = template.id if template else store_template("welcome")
        version_id = db.session.get(EmailTemplate, template_id).current_version_id
        message = Message(
            contact_id=contact.id,
            template_id=template_id,
            template_version_id=version_id,
            variant="A",
            kind="test",
            to_addr=email,
            status="sent",
            subject="Hello",
            links=list(links),
            smtp_message_id=smtp_message_id,
            sent_at=utcnow() - timedelta(seconds=sent_ago) if sent_ago is not None else None,
        )
        db.session.add(message)
        db.session.commit()
        return message.id


def token(app: Flask, purpose: str, message_id: int, link: int = 0) -> str:
    return make_token(signing_key(app.config["SECRET_KEY"]), purpose, message_id, link)


def tampered(value: str) -> str:
    return value[:-1] + ("A" if value[-1] != "A" else "B")


def stream_entries(app: Flask) -> list[dict[str, Any]]:
    entries = get_redis(app).xrange(app.config["EVENT_STREAM"])
    return [json.loads(fields[b"d"]) for _, fields in entries]


def message_row(app: Flask, message_id: int) -> Message:
    with app.app_context():
        message = db.session.get(Message, message_id)
        db.session.expunge(message)
        return message


def contact_row(app: Flask, email: str = "ann@example.org") -> Contact:
    with app.app_context():
        contact = db.session.scalar(select(Contact).where(Contact.email == email))
        db.session.expunge(contact)
        return contact


def enrol(app: Flask, email: str = "ann@example.org", status: str = "active") -> int:
    with app.app_context():
        contact_id = db.session.scalar(select(Contact.id).where(Contact.email == email))
        sequence = db.session.scalar(select(Seq).where(Seq.name == f"nurture-{status}"))
        if sequence is None:
            sequence = Seq(name=f"nurture-{status}", steps=[], exits={})
            db.session.add(sequence)
            db.session.flush()
        enrolment = Enrolment(
            sequence_id=sequence.id, contact_id=contact_id, status=status, position=1, cause="test"
        )
        db.session.add(enrolment)
        db.session.commit()
        return enrolment.id


def enrolment_row(app: Flask, enrolment_id: int) -> Enrolment:
    with app.app_context():
        enrolment = db.session.get(Enrolment, enrolment_id)
        db.session.expunge(enrolment)
        return enrolment


# --- tokens ---------------------------------------------------------------------------------


def test_tampered_malformed_and_foreign_tokens_get_a_404_everywhere(app, client):
    message_id = email_message(app)
    good_open = token(app, "open", message_id)
    good_click = token(app, "click", message_id, 1)
    good_unsub = token(app, "unsubscribe", message_id)
    for path in (
        f"/o/{tampered(good_open)}.gif",
        f"/o/{good_click}.gif",  # a click token is not an open token
        "/o/not-a-token.gif",
        f"/c/{tampered(good_click)}",
        f"/c/{good_open}",
        f"/c/{good_unsub}",
        "/c/x",
        f"/u/{tampered(good_unsub)}",
        f"/u/{good_open}",
        "/u/%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00",
    ):
        assert client.get(path).status_code == 404, path
    assert client.post(f"/u/{tampered(good_unsub)}").status_code == 404
    assert client.post(f"/u/{good_click}").status_code == 404
    assert stream_entries(app) == []
    assert contact_row(app).email_status == "ok"
    # The pixel's 404 is the collection error shape; people get a page.
    assert client.get("/o/nope.gif").get_json()["error"]["code"] == "not_found"
    page = client.get(f"/c/{tampered(good_click)}")
    assert page.mimetype == "text/html" and b"does not work" in page.data


def test_a_token_for_a_message_that_does_not_exist_is_a_404(app, client):
    assert client.get(f"/c/{token(app, 'click', 987654, 1)}").status_code == 404
    assert client.get(f"/u/{token(app, 'unsubscribe', 987654)}").status_code == 404
    assert client.post(f"/u/{token(app, 'unsubscribe', 987654)}").status_code == 404
    assert stream_entries(app) == []


# --- opens ----------------------------------------------------------------------------------


def test_the_pixel_records_an_open_in_the_stream_and_answers_a_gif(app, client):
    message_id = email_message(app)
    response = client.get(
        f"/o/{token(app, 'open', message_id)}.gif",
        headers={"User-Agent": BROWSER_UA},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert response.status_code == 200
    assert response.mimetype == "image/gif" and len(response.data) == GIF_BYTES
    assert "no-store" in response.headers["Cache-Control"]
    [entry] = stream_entries(app)
    assert entry["type"] == "email_open" and entry["message"] == message_id
    assert entry["ip"] == "203.0.113.0" and entry["ua"] == BROWSER_UA  # IPs kept as /24

    assert ingest_all(app) == 1
    with app.app_context():
        stored = db.session.scalars(select(Event)).one()
        assert stored.type == "email_open" and not stored.is_bot
        assert stored.site_id is None and stored.visitor_id is None
        assert stored.contact_id == message_row(app, message_id).contact_id
        assert stored.props["message_id"] == message_id
        assert 3590 <= stored.seconds <= 3700
    message = message_row(app, message_id)
    assert (message.opens, message.machine_opens) == (1, 0)
    assert message.opened_at is not None


def test_an_open_is_accepted_while_redis_is_down(database_url, redis_url, app):
    message_id = email_message(app)
    down = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0")
    response = down.test_client().get(
        f"/o/{token(down, 'open', message_id)}.gif", headers={"User-Agent": BROWSER_UA}
    )
    assert response.status_code == 200 and len(response.data) == GIF_BYTES
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(EventSpool)) == 1
        from automation.ingest import drain_spool

        assert drain_spool() == 1
    assert message_row(app, message_id).opens == 1


# --- clicks ---------------------------------------------------------------------------------


def test_a_click_redirects_only_to_the_stored_url(app, client, site):
    message_id = email_message(app)
    click = token(app, "click", message_id, 2)
    response = client.get(
        f"/c/{click}?url=https://evil.test/&next=https://evil.test/",
        headers={"User-Agent": BROWSER_UA, "Referer": "https://evil.test/"},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == LINKS[1]
    [entry] = stream_entries(app)
    assert entry["type"] == "email_click" and entry["link"] == 2 and entry["method"] == "GET"
    assert entry["target"] == LINKS[1]


def test_a_link_number_the_message_does_not_have_is_a_404(app, client):
    message_id = email_message(app)
    assert client.get(f"/c/{token(app, 'click', message_id, 3)}").status_code == 404
    no_links = email_message(app, links=[])
    assert client.get(f"/c/{token(app, 'click', no_links, 1)}").status_code == 404
    unsafe = email_message(app, links=["javascript:alert(1)"])
    assert client.get(f"/c/{token(app, 'click', unsafe, 1)}").status_code == 404
    assert stream_entries(app) == []


def test_links_into_a_tracked_site_carry_an_identify_token_and_others_do_not(app, client, site):
    message_id = email_message(app)
    into_site = client.get(f"/c/{token(app, 'click', message_id, 1)}")
    location = urlsplit(into_site.headers["Location"])
    assert (location.hostname, location.path, location.fragment) == (
        "www.example.com",
        "/pricing",
        "top",
    )
    query = parse_qs(location.query)
    assert query["plan"] == ["pro"]
    ref = read_token(signing_key(app.config["SECRET_KEY"]), "identify", query["cl_c"][0])
    assert ref is not None and ref.message_id == message_id

    foreign = client.get(f"/c/{token(app, 'click', message_id, 2)}")
    assert foreign.headers["Location"] == LINKS[1]
    assert "cl_c" not in foreign.headers["Location"]


def test_a_head_click_is_recorded_and_flagged_as_a_scanner(app, client):
    message_id = email_message(app)
    response = client.head(
        f"/c/{token(app, 'click', message_id, 2)}", headers={"User-Agent": BROWSER_UA}
    )
    assert response.status_code == 302 and response.headers["Location"] == LINKS[1]
    ingest_all(app)
    with app.app_context():
        stored = db.session.scalars(select(Event)).one()
        assert (stored.is_bot, stored.bot_reason) == (True, "scanner_head")
    message = message_row(app, message_id)
    assert (message.clicks, message.machine_clicks, message.clicked_at) == (0, 1, None)


# --- unsubscribe ----------------------------------------------------------------------------


def test_get_only_asks_and_post_unsubscribes_and_ends_enrolments(app, client):
    message_id = email_message(app)
    active = enrol(app)
    completed = enrol(app, status="completed")
    path = f"/u/{token(app, 'unsubscribe', message_id)}"

    page = client.get(path)
    assert page.status_code == 200 and b'<form method="post"' in page.data
    assert b"ann@example.org" in page.data
    assert contact_row(app).email_status == "ok"
    assert enrolment_row(app, active).status == "active"

    done = client.post(path)
    assert done.status_code == 200 and b"unsubscribed" in done.data
    contact = contact_row(app)
    assert contact.email_status == "unsubscribed" and contact.email_status_at is not None
    assert message_row(app, message_id).unsubscribed_at is not None
    ended = enrolment_row(app, active)
    assert (ended.status, ended.exit_reason) == ("exited", "unsubscribed")
    assert ended.ended_at is not None
    assert enrolment_row(app, completed).status == "completed"
    with app.app_context():
        log = db.session.scalars(select(EnrolmentLog).where(EnrolmentLog.enrolment_id == active))
        assert [(e.action, e.detail) for e in log] == [("exited", "unsubscribed")]

    # Idempotent: again changes nothing.
    assert client.post(path).status_code == 200
    again = contact_row(app)
    assert again.email_status_at == contact.email_status_at
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(EnrolmentLog)) == 1


def test_rfc_8058_one_click_post_unsubscribes_without_cookie_or_csrf(app, client):
    message_id = email_message(app)
    response = client.post(
        f"/u/{token(app, 'unsubscribe', message_id)}",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert contact_row(app).email_status == "unsubscribed"


def test_the_confirm_page_escapes_the_address(app, client):
    email = '"<script>x</script>"@example.org'
    message_id = email_message(app, email=email)
    page = client.get(f"/u/{token(app, 'unsubscribe', message_id)}")
    assert b"<script>x" not in page.data and b"&lt;script&gt;x" in page.data


def test_unsubscribing_never_softens_a_harder_status(app, client):
    message_id = email_message(app)
    with app.app_context():
        contact = db.session.scalar(select(Contact))
        contact.email_status = "complained"
        db.session.commit()
    assert client.post(f"/u/{token(app, 'unsubscribe', message_id)}").status_code == 200
    assert contact_row(app).email_status == "complained"


# --- bounce hook ----------------------------------------------------------------------------


@pytest.fixture
def hook_app(database_url, redis_url, app) -> Flask:
    return make_app(database_url, redis_url, BOUNCE_SECRET="s3cret")


def post_hook(app: Flask, body: Any, secret: str | None = "s3cret") -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return app.test_client().post("/hooks/bounce", data=data, headers=headers)


def test_the_hook_is_off_without_a_secret_and_refuses_a_wrong_one(app, hook_app):
    email_message(app)
    notification = {"type": "bounce", "email": "ann@example.org"}
    assert post_hook(app, notification).status_code == 404
    for secret in (None, "wrong", "s3cret "):
        response = post_hook(hook_app, notification, secret)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
    assert contact_row(app).email_status == "ok"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        {"type": "spam", "email": "ann@example.org"},
        {"type": "bounce"},
        {"type": "bounce", "email": 5},
        {"type": "bounce", "email": "ann@example.org", "permanent": "yes"},
        {"type": "bounce", "email": "ann@example.org", "message_id": ["x"]},
        {"notifications": {"type": "bounce"}},
        # One bad notification refuses the whole request: nothing half-applied.
        {
            "notifications": [
                {"type": "complaint", "email": "ann@example.org"},
                {"type": "bounce", "email": "nobody"},
            ]
        },
    ],
)
def test_a_malformed_notification_is_a_400_and_changes_nothing(app, hook_app, body):
    message_id = email_message(app, smtp_message_id="<m1@closedloop>")
    enrolment = enrol(app)
    response = post_hook(hook_app, body)
    assert response.status_code == 400
    assert set(response.get_json()["error"]) == {"code", "message"}
    assert contact_row(app).email_status == "ok"
    assert message_row(app, message_id).status == "sent"
    assert enrolment_row(app, enrolment).status == "active"


def test_a_hard_bounce_marks_contact_and_message_and_ends_enrolments(app, hook_app):
    message_id = email_message(app, smtp_message_id="<m1@closedloop>")
    enrolment = enrol(app)
    response = post_hook(
        hook_app,
        {
            "type": "bounce",
            "email": " Ann@Example.org ",
            "message_id": "m1@closedloop",
            "reason": "550 5.1.1 user unknown",
        },
    )
    assert response.status_code == 200
    assert response.get_json() == {
        "received": 1,
        "unknown": 0,
        "contacts_marked": 1,
        "enrolments_ended": 1,
        "messages_updated": 1,
    }
    assert contact_row(app).email_status == "bounced"
    message = message_row(app, message_id)
    assert message.status == "bounced" and message.bounced_at is not None
    assert "user unknown" in message.error
    assert enrolment_row(app, enrolment).exit_reason == "bounced"


def test_a_soft_bounce_is_noted_on_the_message_only(app, hook_app):
    message_id = email_message(app, smtp_message_id="<m2@closedloop>")
    enrolment = enrol(app)
    response = post_hook(
        hook_app,
        {
            "notifications": [
                {
                    "type": "bounce",
                    "email": "ann@example.org",
                    "message_id": "<m2@closedloop>",
                    "permanent": False,
                    "reason": "mailbox full",
                },
                {"type": "bounce", "email": "stranger@example.org"},
            ]
        },
    )
    assert response.status_code == 200
    assert response.get_json()["unknown"] == 1
    assert contact_row(app).email_status == "ok"
    message = message_row(app, message_id)
    assert message.status == "sent" and message.error == "soft bounce: mailbox full"
    assert enrolment_row(app, enrolment).status == "active"


def test_a_complaint_marks_the_contact_complained(app, hook_app):
    email_message(app)
    enrolment = enrol(app)
    response = post_hook(hook_app, {"type": "complaint", "email": "ann@example.org"})
    assert response.get_json()["contacts_marked"] == 1
    assert contact_row(app).email_status == "complained"
    assert enrolment_row(app, enrolment).exit_reason == "complained"
