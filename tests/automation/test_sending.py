"""Sending through a real SMTP server (aiosmtpd): claims, retries, bounces, rate limit, outbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from rq import Queue
from sqlalchemy import select, update

from automation import mailer
from automation.outgoing import MAIL_QUEUE, create_messages, dispatch, enqueue_due_messages
from automation.ratelimit import RateLimiter
from automation.sending import STALE_ERROR, send_batch, settings_from
from automation.template_source import save_template
from automation.worker import run_worker
from tracker.db import db
from tracker.email_models import Broadcast, Message, OutboxMessage
from tracker.models import Contact, utcnow
from tracker.redis_conn import free_port, get_redis
from tracker.tokens import read_token, signing_key

TEMPLATE = {
    "subject": "Hello {{ contact.first_name | default('there') }}",
    "html": "<style>p{color:#123456}</style><p>Hi {{ contact.first_name }}, "
    '<a href="https://acme.test/guide">the guide</a></p>',
    "from": "Acme <news@acme.test>",
}


class Server:
    """Records messages; answers RCPT for chosen addresses with chosen replies."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.sessions = 0
        self.replies: dict[str, list[str]] = {}

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        queued = self.replies.get(address)
        if queued:
            return queued.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def smtp(app) -> Iterator[Server]:
    server = Server()
    port = free_port()
    controller = Controller(server, hostname="127.0.0.1", port=port)
    controller.start()
    app.config.update(SMTP_URL=f"smtp://127.0.0.1:{port}", MAIL_RATE_PER_SECOND=0)
    yield server
    mailer.close_all()
    controller.stop()


def queue_messages(app, count: int, template: dict | None = None, **contact: Any) -> list[int]:
    """`count` contacts, a broadcast to them, its messages queued; return the message ids."""
    with app.app_context():
        ids = []
        for n in range(count):
            row = Contact(email=f"c{n}@example.com", first_name=f"Ada{n}", traits={}, **contact)
            db.session.add(row)
            db.session.flush()
            ids.append(row.id)
        db.session.commit()
        with db.engine.begin() as conn:
            template_id, _ = save_template(conn, "news", template or TEMPLATE, utcnow())
        broadcast = Broadcast(name=f"b{template_id}-{ids[0]}", template_id=template_id)
        db.session.add(broadcast)
        db.session.commit()
        with db.engine.begin() as conn:
            return create_messages(
                conn,
                template_id,
                [{"contact_id": c, "broadcast_id": broadcast.id} for c in ids],
                kind="broadcast",
            )


def messages(app) -> list[Message]:
    with app.app_context():
        rows = db.session.scalars(select(Message).order_by(Message.id)).all()
        db.session.expunge_all()
        return rows


def send(app, ids: list[int]) -> dict[str, int]:
    with app.app_context():
        return send_batch(db.engine, get_redis(), ids, settings_from(app.config))


def test_a_worker_sends_each_message_once_over_one_connection(app, smtp):
    ids = queue_messages(app, 3)
    client = get_redis(app)
    dispatch(client, ids, batch=2)  # two jobs
    dispatch(client, ids, batch=50)  # and a duplicate of all three
    run_worker(app, [MAIL_QUEUE], burst=True)
    assert sorted(m["To"] for m in smtp.messages) == [f"c{n}@example.com" for n in range(3)]
    assert smtp.sessions == 1  # one connection across three jobs
    rows = messages(app)
    assert {(r.status, r.attempts) for r in rows} == {("sent", 1)}
    first = smtp.messages[0]
    row = next(r for r in rows if r.to_addr == first["To"])
    assert first["Message-ID"] == row.smtp_message_id and row.sent_at is not None
    assert row.subject == first["Subject"] and row.subject.startswith("Hello Ada")
    assert row.links == ["https://acme.test/guide"]
    html = first.get_body(("html",)).get_content()
    assert '<p style="color:#123456">' in html
    token = html.split("http://tracker.test/c/")[1].split('"')[0]
    assert read_token(signing_key("test-secret"), "click", token).link == 1
    # Running the same job again sends nothing.
    assert send(app, ids)["sent"] == 0 and len(smtp.messages) == 3


def test_temporary_failures_are_retried_later_then_given_up(app, smtp):
    app.config["MAIL_MAX_ATTEMPTS"] = 2
    (message_id,) = queue_messages(app, 1)
    smtp.replies["c0@example.com"] = ["451 4.3.0 Try again later", "452 4.2.2 Mailbox full"]
    assert send(app, [message_id])["retry"] == 1
    (row,) = messages(app)
    assert (row.status, row.attempts) == ("queued", 1) and "451" in row.error
    assert row.due_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None) + timedelta(seconds=30)
    # Not due yet: a job for it does nothing.
    assert send(app, [message_id])["retry"] == 0
    with app.app_context():
        db.session.execute(update(Message).values(due_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert send(app, [message_id])["failed"] == 1
    (row,) = messages(app)
    assert (row.status, row.attempts) == ("failed", 2) and "452" in row.error
    assert smtp.messages == []


def test_permanent_failures_fail_and_invalid_recipients_bounce_the_contact(app, smtp):
    ids = queue_messages(app, 3)
    smtp.replies["c0@example.com"] = ["550 5.1.1 No such user"]
    smtp.replies["c1@example.com"] = ["554 5.7.1 Message refused by policy"]
    counts = send(app, ids)
    assert (counts["bounced"], counts["failed"], counts["sent"]) == (1, 1, 1)
    rows = messages(app)
    assert [r.status for r in rows] == ["bounced", "failed", "sent"]
    assert rows[0].bounced_at is not None and "550" in rows[0].error
    with app.app_context():
        statuses = db.session.execute(select(Contact.email, Contact.email_status)).all()
    assert dict(statuses) == {
        "c0@example.com": "bounced",
        "c1@example.com": "ok",
        "c2@example.com": "ok",
    }
    assert [m["To"] for m in smtp.messages] == ["c2@example.com"]


def test_do_not_contact_is_never_sent(app, smtp):
    (message_id,) = queue_messages(app, 1, email_status="unsubscribed")
    assert send(app, [message_id])["suppressed"] == 1
    (row,) = messages(app)
    assert row.status == "suppressed" and smtp.messages == []


def test_the_hourly_rate_limit_defers_what_it_has_no_room_for(app, smtp):
    app.config.update(MAIL_RATE_PER_HOUR=3)
    ids = queue_messages(app, 5)
    counts = send(app, ids)
    assert (counts["sent"], counts["deferred"]) == (3, 2)
    assert len(smtp.messages) == 3
    later = [r for r in messages(app) if r.status == "queued"]
    assert len(later) == 2 and all(r.attempts == 0 for r in later)
    assert all(
        r.due_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None) + timedelta(minutes=10)
        for r in later
    )


def test_the_token_bucket_is_shared_and_atomic(app):
    client = get_redis(app)
    one = RateLimiter(client, "smtp.test:25", per_second=4, per_hour=0)
    other = RateLimiter(client, "smtp.test:25", per_second=4, per_hour=0)
    assert one.take(3).tokens == 3
    grant = other.take(3)
    assert grant.tokens == 1
    empty = one.take(1)
    assert empty.tokens == 0 and 0 < empty.wait_seconds <= 0.25
    hourly = RateLimiter(client, "smtp.other:25", per_second=0, per_hour=2)
    assert [hourly.take(1).tokens for _ in range(3)] == [1, 1, 0]
    assert hourly.take(1).wait_seconds > 60
    assert RateLimiter(client, "x", 0, 0).take(500).tokens == 500


def test_without_smtp_mail_is_kept_in_the_outbox(app):
    ids = queue_messages(app, 2)
    assert send(app, ids)["sent"] == 2
    with app.app_context():
        kept = db.session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [k.message_id for k in kept] == ids
        mail = message_from_bytes(kept[0].raw.encode(), policy=policy.default)
    assert mail["Subject"] == "Hello Ada0" == kept[0].subject
    assert "/c/" in mail.get_body(("html",)).get_content()
    assert {r.status for r in messages(app)} == {"sent"}


def test_the_scheduler_fails_abandoned_sends_and_dispatches_due_messages(app):
    ids = queue_messages(app, 3)
    past = utcnow() - timedelta(minutes=20)
    with app.app_context():
        db.session.execute(update(Message).values(created_at=past, due_at=past))
        # A worker died while sending the first; the second is waiting for a retry.
        db.session.execute(
            update(Message)
            .where(Message.id == ids[0])
            .values(status="sending", lease_until=utcnow() - timedelta(seconds=1))
        )
        db.session.execute(
            update(Message).where(Message.id == ids[1]).values(due_at=utcnow() + timedelta(hours=1))
        )
        db.session.commit()
        client = get_redis(app)
        assert enqueue_due_messages(client, utcnow(), batch=50) == 1
        # Its job is on the way: the next tick leaves it alone.
        assert enqueue_due_messages(client, utcnow(), batch=50) == 0
    (job,) = Queue(MAIL_QUEUE, connection=client).jobs
    assert job.args == ([ids[2]],)
    rows = messages(app)
    assert (rows[0].status, rows[0].error) == ("failed", STALE_ERROR)
    assert rows[1].status == rows[2].status == "queued"
    assert rows[2].lease_until is not None


def test_mail_test_sends_now_and_outbox_list_shows_it(app):
    queue_messages(app, 1)  # the template, and contact c0@example.com
    runner = app.test_cli_runner()
    tracked = runner.invoke(
        args=["mail", "test", "news", "--to", "me@acme.test", "--contact", "c0@example.com"]
    )
    assert tracked.exit_code == 0, tracked.output
    assert "sent to me@acme.test via the outbox" in tracked.output
    preview = runner.invoke(args=["mail", "test", "news", "--to", "nobody@acme.test"])
    assert preview.exit_code == 0 and "sample data" in preview.output
    listing = runner.invoke(args=["outbox", "list"]).output.splitlines()
    assert [line.split("\t")[2:] for line in listing] == [
        ["nobody@acme.test", "Hello Ada"],
        ["me@acme.test", "Hello Ada0"],
    ]
    missing = runner.invoke(args=["mail", "test", "nope", "--to", "me@acme.test"])
    assert missing.exit_code != 0 and "no email template 'nope'" in missing.output
