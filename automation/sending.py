"""Send queued messages: claim, render, hand to SMTP (or the outbox), record the outcome.

Each message is claimed (queued → sending, one attempt more) in a committed
transaction before the SMTP server hears of it, so a duplicated or retried
job never sends it twice. Messages are claimed CLAIM_CHUNK at a time, and
the outcomes of one chunk are committed with the claim of the next, so a
commit serves many messages. A message a dead worker left in `sending` is
failed by `expire_stale_sends`, never re-sent: nobody knows whether the
server took it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Connection, Engine, bindparam, select, update

from automation.mailer import SendFailed, keep_in_outbox, server_name, smtp_sender
from automation.ratelimit import RateLimiter
from automation.render import (
    CompiledVersion,
    Rendered,
    RenderSettings,
    cached_version,
    render_message,
    template_context,
)
from tracker.email_models import Message, TemplateVersion
from tracker.models import Contact, User, utcnow
from tracker.tokens import signing_key

MESSAGES = Message.__table__

SEND_LEASE_SECONDS = 600
"""A message in `sending` longer than this was left by a worker that died; it is failed."""

BACKOFF_SECONDS = (60, 300, 1800, 7200, 21600)
"""Wait before the next try after a temporary failure: after the 1st, 2nd, … attempt."""

CLAIM_CHUNK = 10
"""Messages claimed per commit. A worker that dies mid-chunk leaves at most this many in
`sending` (failed, never re-sent); fewer commits per message is what makes sending fast."""

MAX_SLEEP_SECONDS = 1.0
"""A worker waits this long at most for the rate limit; a longer wait defers the messages."""

STALE_ERROR = (
    "the worker stopped while sending (lease expired); not retried, as the SMTP server "
    "may have taken it"
)


@dataclass(frozen=True)
class SendSettings:
    """What sending needs from the configuration."""

    render: RenderSettings
    smtp_url: str
    max_attempts: int
    rate_per_second: float
    rate_per_hour: float


def settings_from(config: Any) -> SendSettings:
    """The send settings of an app's config."""
    return SendSettings(
        render=RenderSettings(
            base_url=config["BASE_URL"].rstrip("/"),
            key=signing_key(config["SECRET_KEY"]),
            default_sender=config["MAIL_FROM"],
            unsubscribe_mailto=config["UNSUBSCRIBE_MAILTO"],
        ),
        smtp_url=config["SMTP_URL"] or "",
        max_attempts=config["MAIL_MAX_ATTEMPTS"],
        rate_per_second=config["MAIL_RATE_PER_SECOND"],
        rate_per_hour=config["MAIL_RATE_PER_HOUR"],
    )


def backoff(attempts: int) -> timedelta:
    """How long a message waits after its `attempts`-th try failed for a temporary reason."""
    return timedelta(seconds=BACKOFF_SECONDS[min(max(attempts, 1), len(BACKOFF_SECONDS)) - 1])


def _load_version(conn: Connection, version_id: int) -> dict[str, Any]:
    row = conn.execute(
        select(
            TemplateVersion.sender,
            TemplateVersion.reply_to,
            TemplateVersion.preheader,
            TemplateVersion.variants,
        ).where(TemplateVersion.id == version_id)
    ).one()
    return dict(row._mapping)


def _recipients(conn: Connection, contact_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """What templates see of each contact (fields, traits, owner) and its email status."""
    ids = sorted(set(contact_ids))
    rows = conn.execute(
        select(
            Contact.id,
            Contact.email,
            Contact.first_name,
            Contact.last_name,
            Contact.company,
            Contact.stage,
            Contact.score,
            Contact.engagement_score,
            Contact.fit_score,
            Contact.traits,
            Contact.owner_id,
            Contact.email_status,
        ).where(Contact.id.in_(ids))
    ).all()
    owner_ids = {r.owner_id for r in rows if r.owner_id is not None}
    owners = {
        id_: {"name": name, "email": email}
        for id_, name, email in conn.execute(
            select(User.id, User.name, User.email).where(User.id.in_(owner_ids))
        )
    }
    found = {}
    for r in rows:
        fields = {
            "email": r.email,
            "first_name": r.first_name,
            "last_name": r.last_name,
            "company": r.company,
            "stage": r.stage,
            "score": r.score,
            "engagement_score": r.engagement_score,
            "fit_score": r.fit_score,
        }
        found[r.id] = {
            "context": template_context(fields, r.traits, owners.get(r.owner_id)),
            "email_status": r.email_status,
        }
    return found


@dataclass
class _Outcome:
    """What to write for one message once its attempt is over."""

    message_id: int
    values: dict[str, Any]
    outbox: tuple[bytes, str, str] | None = None
    bounced_contact: int | None = None


_SENT_FIELDS = ("sent_at", "smtp_message_id", "subject", "links")

# Built once: constructing a statement costs more than running it on this path.
_MARK_SENT = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("mid"), MESSAGES.c.status == "sending")
    .values(
        status="sent",
        error=None,
        lease_until=None,
        **{name: bindparam(f"v_{name}") for name in _SENT_FIELDS},
    )
)
_CLAIM = (
    update(MESSAGES)
    .where(
        MESSAGES.c.id.in_(bindparam("ids", expanding=True)),
        MESSAGES.c.status == "queued",
        MESSAGES.c.due_at <= bindparam("now"),
    )
    .values(
        status="sending",
        attempts=MESSAGES.c.attempts + 1,
        lease_until=bindparam("lease"),
    )
    .returning(MESSAGES.c.id)
)


def _write(conn: Connection, outcomes: list[_Outcome]) -> None:
    sent = []
    for outcome in outcomes:
        if outcome.values.get("status") == "sent":
            sent.append(
                {"mid": outcome.message_id}
                | {f"v_{name}": outcome.values[name] for name in _SENT_FIELDS}
            )
        else:
            conn.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == outcome.message_id, MESSAGES.c.status == "sending")
                .values(**outcome.values)
            )
        if outcome.bounced_contact is not None:
            conn.execute(
                update(Contact.__table__)
                .where(Contact.id == outcome.bounced_contact, Contact.email_status == "ok")
                .values(email_status="bounced", email_status_at=outcome.values["bounced_at"])
            )
        if outcome.outbox is not None:
            raw, to_addr, subject = outcome.outbox
            keep_in_outbox(conn, raw, to_addr, subject, outcome.message_id)
    if sent:
        conn.execute(_MARK_SENT, sent)


def _failure(row: Any, failed: SendFailed, attempts: int, settings: SendSettings) -> _Outcome:
    now = utcnow()
    if failed.invalid_recipient:
        values: dict[str, Any] = {
            "status": "bounced",
            "bounced_at": now,
            "error": failed.text[:2000],
            "lease_until": None,
        }
        return _Outcome(row.id, values, bounced_contact=row.contact_id)
    if failed.temporary and attempts < settings.max_attempts:
        return _Outcome(
            row.id,
            {
                "status": "queued",
                "due_at": now + backoff(attempts),
                "lease_until": None,
                "error": f"attempt {attempts}: {failed.text}"[:2000],
            },
        )
    reason = "gave up after temporary failures" if failed.temporary else "refused"
    return _Outcome(
        row.id,
        {
            "status": "failed",
            "error": f"{reason} (attempt {attempts}): {failed.text}"[:2000],
            "lease_until": None,
        },
    )


def _deliver(rendered: Rendered, row: Any, settings: SendSettings, attempts: int) -> _Outcome:
    """Hand one rendered message over; the outcome to record."""
    sent = {
        "status": "sent",
        "sent_at": None,
        "smtp_message_id": rendered.message_id,
        "subject": rendered.subject[:500],
        "links": rendered.links,
        "error": None,
        "lease_until": None,
    }
    if not settings.smtp_url:
        sent["sent_at"] = utcnow()
        return _Outcome(row.id, sent, (rendered.raw, row.to_addr, rendered.subject))
    try:
        smtp_sender(settings.smtp_url).send(rendered.sender_address, row.to_addr, rendered.raw)
    except SendFailed as failed:
        return _failure(row, failed, attempts, settings)
    sent["sent_at"] = utcnow()
    return _Outcome(row.id, sent)


def send_batch(
    engine: Engine,
    client: redis.Redis,
    message_ids: Iterable[int],
    settings: SendSettings,
) -> dict[str, int]:
    """Send these messages (those still queued and due); return counts by outcome."""
    counts = {"sent": 0, "failed": 0, "bounced": 0, "suppressed": 0, "retry": 0, "deferred": 0}
    ids = sorted(set(message_ids))
    if not ids:
        return counts
    limiter = (
        RateLimiter(
            client, server_name(settings.smtp_url), settings.rate_per_second, settings.rate_per_hour
        )
        if settings.smtp_url
        else None
    )
    with engine.connect() as conn:
        with conn.begin():
            rows = conn.execute(
                select(
                    MESSAGES.c.id,
                    MESSAGES.c.contact_id,
                    MESSAGES.c.template_version_id,
                    MESSAGES.c.variant,
                    MESSAGES.c.kind,
                    MESSAGES.c.to_addr,
                    MESSAGES.c.attempts,
                )
                .where(MESSAGES.c.id.in_(ids), MESSAGES.c.status == "queued")
                .order_by(MESSAGES.c.id)
            ).all()
            if not rows:
                return counts
            recipients = _recipients(conn, (r.contact_id for r in rows))
            versions: dict[int, CompiledVersion] = {
                v: cached_version(v, lambda version_id: _load_version(conn, version_id))
                for v in {r.template_version_id for r in rows}
            }
        pending: list[_Outcome] = []
        position = 0
        # Rendering runs on a second thread, in claim order and ahead of the sending:
        # it works while this thread waits for the SMTP server's replies. (A message
        # rendered and then not claimed, or deferred, is simply not sent.)
        renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        rendering = {
            row.id: renderer.submit(
                _prepare, row, recipients.get(row.contact_id), versions, settings
            )
            for row in rows
        }
        try:
            while position < len(rows):
                wanted = min(CLAIM_CHUNK, len(rows) - position)
                if limiter is not None:
                    wanted, wait = _wait_for_tokens(limiter, wanted)
                    if wanted == 0:
                        with conn.begin():
                            _write(conn, pending)
                            pending = []
                            counts["deferred"] += _defer(
                                conn, [r.id for r in rows[position:]], wait
                            )
                        break
                chunk = rows[position : position + wanted]
                position += wanted
                now = utcnow()
                with conn.begin():
                    _write(conn, pending)
                    pending = []
                    claimed = set(
                        conn.execute(
                            _CLAIM,
                            {
                                "ids": [r.id for r in chunk],
                                "now": now,
                                "lease": now + timedelta(seconds=SEND_LEASE_SECONDS),
                            },
                        ).scalars()
                    )
                prepared = [(row, rendering[row.id]) for row in chunk if row.id in claimed]
                for row, future in prepared:
                    ready = future.result()
                    outcome = (
                        ready
                        if isinstance(ready, _Outcome)
                        else _deliver(ready, row, settings, row.attempts + 1)
                    )
                    status = outcome.values["status"]
                    counts["retry" if status == "queued" else status] += 1
                    pending.append(outcome)
        finally:
            renderer.shutdown(cancel_futures=True)
            if pending:
                with conn.begin():
                    _write(conn, pending)
    return counts


def _prepare(
    row: Any,
    recipient: dict[str, Any] | None,
    versions: dict[int, CompiledVersion],
    settings: SendSettings,
) -> Rendered | _Outcome:
    """One claimed message rendered, or the outcome that it will not be sent (suppressed)."""
    if row.kind != "test" and (recipient is None or recipient["email_status"] != "ok"):
        status = recipient["email_status"] if recipient else "gone"
        return _Outcome(
            row.id,
            {
                "status": "suppressed",
                "error": f"contact's email status is {status}",
                "lease_until": None,
            },
        )
    try:
        rendered = render_message(
            versions[row.template_version_id],
            row.variant,
            message_id=row.id,
            to_addr=row.to_addr,
            context=recipient["context"] if recipient else {"contact": {}},
            settings=settings.render,
        )
    except Exception as e:  # a template that passed its checks and still fails
        return _Outcome(
            row.id,
            {
                "status": "failed",
                "error": f"rendering failed: {type(e).__name__}: {e}"[:2000],
                "lease_until": None,
            },
        )
    return rendered


def _wait_for_tokens(limiter: RateLimiter, wanted: int) -> tuple[int, float]:
    """(tokens for up to `wanted` sends, 0 when the wait is long; that wait in seconds).

    Short waits are slept through here.
    """
    while True:
        grant = limiter.take(wanted)
        if grant.tokens:
            return grant.tokens, 0.0
        if grant.wait_seconds > MAX_SLEEP_SECONDS:
            return 0, grant.wait_seconds
        time.sleep(grant.wait_seconds)


def _defer(conn: Connection, message_ids: list[int], wait: float) -> int:
    """Put messages the rate limit has no room for back, due when it will have."""
    return conn.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id.in_(message_ids), MESSAGES.c.status == "queued")
        .values(due_at=utcnow() + timedelta(seconds=wait), lease_until=None)
    ).rowcount


def expire_stale_sends(conn: Connection, now: datetime) -> int:
    """Fail messages left in `sending` past their lease (their worker died); return how many."""
    return conn.execute(
        update(MESSAGES)
        .where(MESSAGES.c.status == "sending", MESSAGES.c.lease_until < now)
        .values(status="failed", error=STALE_ERROR, lease_until=None)
    ).rowcount


def send_preview(
    conn: Connection, version_id: int, variant: str, to_addr: str, settings: SendSettings
) -> str:
    """Send a version with sample data and untracked links (a test with no contact); say how.

    There is no message row, so nothing is tracked; through SMTP (no rate
    limit: one message) or, without SMTP_URL, into the outbox via `conn`.
    """
    from automation.template_source import SAMPLE_CONTACT, SAMPLE_OWNER

    version = cached_version(version_id, lambda v: _load_version(conn, v))
    rendered = render_message(
        version,
        variant,
        message_id=0,
        to_addr=to_addr,
        context=template_context(SAMPLE_CONTACT, {}, SAMPLE_OWNER),
        settings=settings.render,
        track=False,
    )
    if not settings.smtp_url:
        outbox_id = keep_in_outbox(conn, rendered.raw, to_addr, rendered.subject)
        return f"kept in the outbox as #{outbox_id}"
    smtp_sender(settings.smtp_url).send(rendered.sender_address, to_addr, rendered.raw)
    return f"sent via SMTP as {rendered.message_id}"
