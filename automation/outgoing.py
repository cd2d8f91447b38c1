"""Queue messages: one row per email to send, created once per enrolment step or recipient.

Producers (sequence steps, broadcasts, test sends) call `create_messages`
inside their own transaction; the rows start `queued` and the send jobs take
them from there. The unique keys (enrolment, step) and (broadcast, contact)
make creating the same message twice a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from rq import Queue
from sqlalchemy import Connection, insert, select

from automation.bulk import insert_rows
from tracker.email_models import EmailTemplate, Message, TemplateVersion
from tracker.models import Contact, utcnow

MESSAGES = Message.__table__
LOOKUP_CHUNK = 5000

VariantChooser = Callable[[Connection, int, list[str]], str]
"""(connection, template id, variant names) → the variant a new message gets."""


class UnknownTemplate(LookupError):
    """A message was asked for a template that does not exist or has no version yet."""


@dataclass(frozen=True)
class CurrentVersion:
    """The version new messages of a template use, and its variant names."""

    template_id: int
    version_id: int
    variants: list[str]


def current_version(conn: Connection, template: int | str) -> CurrentVersion:
    """The current version of a template, by id or name."""
    column = EmailTemplate.id if isinstance(template, int) else EmailTemplate.name
    row = conn.execute(
        select(EmailTemplate.id, TemplateVersion.id, TemplateVersion.variants)
        .join(TemplateVersion, TemplateVersion.id == EmailTemplate.current_version_id)
        .where(column == template)
    ).first()
    if row is None:
        raise UnknownTemplate(f"no email template {template!r} with a saved version")
    template_id, version_id, variants = row
    return CurrentVersion(template_id, version_id, [v["name"] for v in variants])


def _default_chooser(conn: Connection, template_id: int, names: list[str]) -> str:
    from automation.variants import pick_variant

    return pick_variant(conn, template_id, names)


def create_messages(
    conn: Connection,
    template: int | str,
    recipients: Sequence[dict[str, Any]],
    *,
    kind: str,
    variant: str | None = None,
    due_at: datetime | None = None,
    choose: VariantChooser | None = None,
) -> list[int]:
    """Queue one message of `template` per recipient; return the ids of those created.

    Each recipient is {"contact_id": …} plus, for sequences, "enrolment_id" and
    "step", or, for broadcasts, "broadcast_id" (and optionally its own
    "variant"). Recipients whose message exists already are skipped. With no
    variant given, a template with several variants lets `choose` pick one per
    message (by default Thompson sampling on human clicks, see
    `automation.variants`).
    """
    if not recipients:
        return []
    version = current_version(conn, template)
    contact_ids = sorted({r["contact_id"] for r in recipients})
    emails: dict[int, str] = {}
    for start in range(0, len(contact_ids), LOOKUP_CHUNK):  # SQLite caps bound parameters
        chunk = contact_ids[start : start + LOOKUP_CHUNK]
        emails.update(
            conn.execute(select(Contact.id, Contact.email).where(Contact.id.in_(chunk))).all()
        )
    now = utcnow()
    chooser = choose or _default_chooser
    rows = []
    for recipient in recipients:
        chosen = recipient.get("variant") or variant
        if chosen is None:
            chosen = (
                version.variants[0]
                if len(version.variants) == 1
                else chooser(conn, version.template_id, version.variants)
            )
        elif chosen not in version.variants:
            raise UnknownTemplate(f"template {template!r} has no variant {chosen!r}")
        rows.append(
            {
                "contact_id": recipient["contact_id"],
                "template_id": version.template_id,
                "template_version_id": version.version_id,
                "variant": chosen,
                "kind": kind,
                "enrolment_id": recipient.get("enrolment_id"),
                "step": recipient.get("step"),
                "broadcast_id": recipient.get("broadcast_id"),
                "to_addr": emails[recipient["contact_id"]],
                "status": "queued",
                "attempts": 0,
                "opens": 0,
                "clicks": 0,
                "machine_opens": 0,
                "machine_clicks": 0,
                "due_at": due_at or now,
                "created_at": now,
            }
        )
    if kind == "sequence":
        conflict: tuple[str, ...] = ("enrolment_id", "step")
    elif kind == "broadcast":
        conflict = ("broadcast_id", "contact_id")
    else:
        return [conn.execute(insert(MESSAGES).values(row)).inserted_primary_key[0] for row in rows]
    return [
        id_ for (id_,) in insert_rows(conn, MESSAGES, rows, conflict=conflict, returning=("id",))
    ]


MAIL_QUEUE = "mail"
"""Queue the send jobs go to; a worker keeps its SMTP connection open across them."""


def dispatch(client: redis.Redis, message_ids: Sequence[int], batch: int) -> int:
    """Enqueue send jobs for queued messages, `batch` ids a job; return how many jobs.

    Call it after the transaction that created the messages has committed. A
    lost or duplicated job is harmless: each message is claimed before it is
    sent, and the scheduler re-enqueues queued messages whose job went missing.
    """
    queue = Queue(MAIL_QUEUE, connection=client)
    ids = list(message_ids)
    jobs = [
        Queue.prepare_data(
            "automation.jobs.send_messages",
            args=(ids[start : start + batch],),
            result_ttl=600,
            failure_ttl=7 * 86400,
        )
        for start in range(0, len(ids), max(batch, 1))
    ]
    if jobs:
        queue.enqueue_many(jobs)
    return len(jobs)


DISPATCH_LEASE_SECONDS = 300
"""A queued message the scheduler dispatched is not dispatched again for this long."""

DISPATCH_GRACE_SECONDS = 10
"""New messages are left this long to the job their producer enqueued before the scheduler
treats them as lost."""

DUE_SCAN_LIMIT = 2000
"""Most due messages one scheduler tick dispatches."""


def enqueue_due_messages(client: redis.Redis, now: datetime, batch: int) -> int:
    """Dispatch queued messages that are due and have no job on the way; return how many.

    This is how retries after a backoff, rate-limit deferrals and messages whose
    job was lost get sent. It also fails messages a dead worker left in
    `sending`. While the mail queue still holds jobs it leaves the rest alone:
    the workers are busy, and what they have not reached yet needs no second job.
    Runs in an app context (the scheduler's tick).
    """
    from sqlalchemy import or_, update

    from automation.sending import expire_stale_sends
    from tracker.db import db

    lease = now + timedelta(seconds=DISPATCH_LEASE_SECONDS)
    try:
        with db.engine.begin() as conn:
            expire_stale_sends(conn, now)
            if Queue(MAIL_QUEUE, connection=client).count:
                return 0
            ids = (
                conn.execute(
                    select(MESSAGES.c.id)
                    .where(
                        MESSAGES.c.status == "queued",
                        MESSAGES.c.due_at <= now,
                        or_(MESSAGES.c.lease_until.is_(None), MESSAGES.c.lease_until < now),
                        MESSAGES.c.created_at < now - timedelta(seconds=DISPATCH_GRACE_SECONDS),
                    )
                    .order_by(MESSAGES.c.due_at, MESSAGES.c.id)
                    .limit(DUE_SCAN_LIMIT)
                )
                .scalars()
                .all()
            )
            if ids:
                conn.execute(
                    update(MESSAGES)
                    .where(MESSAGES.c.id.in_(ids), MESSAGES.c.status == "queued")
                    .values(lease_until=lease)
                )
    finally:
        db.session.remove()
    dispatch(client, ids, batch)
    return len(ids)
