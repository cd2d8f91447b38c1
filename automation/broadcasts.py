"""Broadcasts: a one-off send of a template to a segment, optionally as an A/B test first.

Starting a broadcast with a test (and a template of two or more variants)
sends a random share of the audience the variants, evenly split; once the
test period is over the scheduler enqueues the decision, which picks the
variant with the best human open or click rate and queues it for everyone
else. The broadcast's status guards each move (a conditional UPDATE in the
same transaction as the messages), and the messages' unique (broadcast,
contact) key keeps anyone from getting two: starting or deciding twice
creates nothing more.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from rq import Queue
from sqlalchemy import Connection, case, exists, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from automation.config_file import BroadcastSpec, ConfigFileError
from automation.outgoing import create_messages, current_version
from automation.variants import VariantCounts, pick_winner, split_test
from tracker.automation_models import Segment, SegmentMember
from tracker.email_models import Broadcast, EmailTemplate, Message
from tracker.errors import ClosedLoopError
from tracker.models import Contact, as_utc, utcnow

log = logging.getLogger(__name__)

BROADCASTS = Broadcast.__table__

CHUNK = 5000
"""Recipients queued per `create_messages` call (it looks their addresses up by id)."""

DECIDE_RETRY_SECONDS = 300
"""A decision job is enqueued at most once in this long per broadcast (a failed one retries)."""

DECIDE_QUEUE = "default"
"""Queue the decision jobs go to."""


class BroadcastError(ClosedLoopError):
    """A broadcast cannot be started or decided as asked; the message says why."""


@dataclass(frozen=True)
class Started:
    """What starting a broadcast queued."""

    broadcast_id: int
    status: str  # testing | sent
    audience: int
    message_ids: list[int]
    test: dict[str, int] = field(default_factory=dict)  # variant → test messages
    decide_at: datetime | None = None
    note: str | None = None


@dataclass(frozen=True)
class Decided:
    """The winner of a broadcast's test and the messages queued with it."""

    broadcast_id: int
    winner: str
    metric: str
    variants: dict[str, VariantCounts]
    message_ids: list[int]


def audience(
    conn: Connection, segment_id: int | None, skip_broadcast: int | None = None
) -> list[int]:
    """Contact ids a broadcast reaches now, in id order.

    The segment's members (or every contact when there is no segment), minus
    do-not-contact, minus whoever `skip_broadcast` already has a message for.
    """
    query = select(Contact.id).where(Contact.email_status == "ok").order_by(Contact.id)
    if segment_id is not None:
        query = query.join(SegmentMember, SegmentMember.contact_id == Contact.id).where(
            SegmentMember.segment_id == segment_id
        )
    if skip_broadcast is not None:
        query = query.where(
            ~exists().where(
                Message.broadcast_id == skip_broadcast, Message.contact_id == Contact.id
            )
        )
    return list(conn.execute(query).scalars())


def _queue(
    conn: Connection, template_id: int, broadcast_id: int, recipients: list[dict[str, Any]]
) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(recipients), CHUNK):
        chunk = [{**r, "broadcast_id": broadcast_id} for r in recipients[start : start + CHUNK]]
        ids += create_messages(conn, template_id, chunk, kind="broadcast")
    return ids


def _find(conn: Connection, name: str) -> Any:
    row = conn.execute(select(BROADCASTS).where(Broadcast.name == name)).first()
    if row is None:
        known = ", ".join(conn.execute(select(Broadcast.name).order_by(Broadcast.name)).scalars())
        hint = f"known: {known}" if known else "add one under `broadcasts:` in a rules file"
        raise BroadcastError(f"no broadcast named {name!r} ({hint})")
    return row


def start(
    conn: Connection, name: str, now: datetime | None = None, rng: random.Random | None = None
) -> Started:
    """Queue a broadcast's test messages, or with no test everyone's; refuse a second start.

    Runs in the caller's transaction; dispatch the returned ids after the commit.
    """
    now = now or utcnow()
    row = _find(conn, name)
    if row.status != "draft":
        raise BroadcastError(
            f"broadcast {name!r} was started at {_when(row.started_at)} (status {row.status}); "
            "a broadcast is sent once: to send again, add one under another name"
        )
    variants = current_version(conn, row.template_id).variants
    contacts = audience(conn, row.segment_id)
    if not contacts:
        raise BroadcastError(
            f"broadcast {name!r} reaches no one: its audience has no contact that may be emailed"
        )
    testing = bool(row.test_percent) and len(variants) >= 2
    note = None
    if row.test_percent and not testing:
        note = "the template has one variant, so there is nothing to test: sent to everyone"
    if testing:
        split = split_test(contacts, row.test_percent, variants, rng or random.Random())
        if len(split) < len(variants):
            raise BroadcastError(
                f"a {row.test_percent}% test of {len(contacts)} contacts reaches {len(split)}, "
                f"fewer than the {len(variants)} variants: raise the test percent or drop the test"
            )
        recipients = [{"contact_id": c, "variant": v} for c, v in sorted(split.items())]
        decide_at = now + timedelta(seconds=row.decide_after_seconds or 0)
        values = {"status": "testing", "started_at": now}
    else:
        recipients = [{"contact_id": c} for c in contacts]
        decide_at = None
        values = {"status": "sent", "started_at": now, "finished_at": now}
    claimed = conn.execute(
        update(BROADCASTS)
        .where(Broadcast.id == row.id, Broadcast.status == "draft")
        .values(**values, updated_at=now)
    ).rowcount
    if not claimed:  # another start won the race since we read the row
        raise BroadcastError(f"broadcast {name!r} has just been started by someone else")
    ids = _queue(conn, row.template_id, row.id, recipients)
    test: dict[str, int] = {}
    if testing:
        for recipient in recipients:
            test[recipient["variant"]] = test.get(recipient["variant"], 0) + 1
    return Started(row.id, values["status"], len(contacts), ids, test, decide_at, note)


def decision_time(row: Any) -> datetime | None:
    """When a testing broadcast's test period ends."""
    if row.started_at is None or row.status != "testing":
        return None
    return as_utc(row.started_at) + timedelta(seconds=row.decide_after_seconds or 0)


def due_for_decision(conn: Connection, now: datetime) -> list[int]:
    """Ids of broadcasts in testing whose test period is over."""
    rows = conn.execute(select(BROADCASTS).where(Broadcast.status == "testing")).all()
    return [row.id for row in rows if (decision_time(row) or now) <= now]


def decide(conn: Connection, broadcast_id: int, now: datetime | None = None) -> Decided | None:
    """Pick a testing broadcast's winner and queue it for the rest of the audience.

    The audience is taken as it is now. Runs in the caller's transaction; returns
    None when the broadcast is not (or no longer) testing, so deciding twice does nothing.
    """
    now = now or utcnow()
    row = conn.execute(select(BROADCASTS).where(Broadcast.id == broadcast_id)).first()
    if row is None or row.status != "testing":
        return None
    counts = variant_counts(conn, broadcast_id=broadcast_id)
    current = current_version(conn, row.template_id).variants
    # The winner must be a variant the template still has: it is what the rest get.
    candidates = [name for name in current if name in counts] or current
    variants = {name: counts.get(name, VariantCounts()) for name in candidates}
    winner = pick_winner({name: c.stats(row.metric) for name, c in variants.items()})
    claimed = conn.execute(
        update(BROADCASTS)
        .where(Broadcast.id == broadcast_id, Broadcast.status == "testing")
        .values(status="sent", winner=winner, decided_at=now, finished_at=now, updated_at=now)
    ).rowcount
    if not claimed:
        return None
    rest = audience(conn, row.segment_id, skip_broadcast=broadcast_id)
    ids = _queue(
        conn, row.template_id, broadcast_id, [{"contact_id": c, "variant": winner} for c in rest]
    )
    return Decided(broadcast_id, winner, row.metric, variants, ids)


def decide_now(conn: Connection, name: str, now: datetime | None = None) -> Decided:
    """Decide a testing broadcast before its test period is over (the operator's call)."""
    row = _find(conn, name)
    decided = decide(conn, row.id, now) if row.status == "testing" else None
    if decided is None:
        raise BroadcastError(
            f"broadcast {name!r} is not being tested (status {row.status}); "
            "only a broadcast sent with a test, and not yet decided, has a winner to pick"
        )
    return decided


def enqueue_decisions(client: redis.Redis, broadcast_ids: list[int]) -> int:
    """Enqueue the decision job of each broadcast not enqueued lately; return how many."""
    queue = Queue(DECIDE_QUEUE, connection=client)
    count = 0
    for broadcast_id in broadcast_ids:
        if client.set(f"cl:broadcast:decide:{broadcast_id}", "1", nx=True, ex=DECIDE_RETRY_SECONDS):
            queue.enqueue(
                "automation.jobs.decide_broadcast",
                broadcast_id,
                job_timeout=3600,
                result_ttl=600,
                failure_ttl=7 * 86400,
            )
            count += 1
    return count


def enqueue_due_decisions(client: redis.Redis, now: datetime | None = None) -> int:
    """The scheduler's part (in an app context): enqueue the decisions that are due."""
    from tracker.db import db

    try:
        with db.engine.connect() as conn:
            due = due_for_decision(conn, now or utcnow())
    except SQLAlchemyError as e:  # the next tick tries again; ingestion must not stop for this
        log.warning("broadcast decisions not checked, database unavailable: %s", e)
        return 0
    finally:
        db.session.remove()
    return enqueue_decisions(client, due)


def variant_counts(
    conn: Connection, *, template_id: int | None = None, broadcast_id: int | None = None
) -> dict[str, VariantCounts]:
    """Per variant: messages, sends, human and machine opens and clicks (counted per message).

    Of one broadcast, or of a template across sequences and broadcasts (test sends
    to the marketer left out).
    """
    query = select(
        Message.variant,
        func.count(),
        func.count(Message.sent_at),
        func.count(Message.opened_at),
        func.count(Message.clicked_at),
        func.count(case((Message.machine_opens > 0, 1))),
        func.count(case((Message.machine_clicks > 0, 1))),
    ).group_by(Message.variant)
    if broadcast_id is not None:
        query = query.where(Message.broadcast_id == broadcast_id)
    if template_id is not None:
        query = query.where(Message.template_id == template_id, Message.kind != "test")
    return {
        variant: VariantCounts(messages, sends, opens, clicks, machine_opens, machine_clicks)
        for variant, messages, sends, opens, clicks, machine_opens, machine_clicks in conn.execute(
            query.order_by(Message.variant)
        )
    }


def report(conn: Connection, name: str) -> dict[str, Any]:
    """A broadcast as `broadcasts show NAME` prints it: settings, audience, variants, winner."""
    row = _find(conn, name)
    template = conn.execute(select(EmailTemplate.name).where(EmailTemplate.id == row.template_id))
    segment = conn.execute(select(Segment.name).where(Segment.id == row.segment_id)).scalar()
    return {
        "name": row.name,
        "status": row.status,
        "template": template.scalar(),
        "segment": segment,
        "test_percent": row.test_percent,
        "metric": row.metric,
        "decide_after_seconds": row.decide_after_seconds,
        "started_at": row.started_at and as_utc(row.started_at),
        "decide_at": decision_time(row),
        "decided_at": row.decided_at and as_utc(row.decided_at),
        "winner": row.winner,
        "audience": len(audience(conn, row.segment_id)),
        "variants": variant_counts(conn, broadcast_id=row.id),
    }


def listing(conn: Connection) -> list[dict[str, Any]]:
    """Every broadcast with its status, template, segment and message count."""
    messages = dict(
        conn.execute(
            select(Message.broadcast_id, func.count())
            .where(Message.broadcast_id.is_not(None))
            .group_by(Message.broadcast_id)
        ).all()
    )
    rows = conn.execute(
        select(Broadcast.id, Broadcast.name, Broadcast.status, Broadcast.winner)
        .add_columns(EmailTemplate.name.label("template"), Segment.name.label("segment"))
        .join(EmailTemplate, EmailTemplate.id == Broadcast.template_id)
        .outerjoin(Segment, Segment.id == Broadcast.segment_id)
        .order_by(Broadcast.id)
    )
    return [{**row._asdict(), "messages": messages.get(row.id, 0)} for row in rows]


def _when(moment: datetime | None) -> str:
    return as_utc(moment).isoformat(timespec="seconds") if moment else "never"


def apply_specs(conn: Connection, specs: list[BroadcastSpec], filename: str) -> int:
    """Create or update (by name) the file's broadcasts in the caller's transaction.

    A broadcast that has started keeps what it was sent with: changing it is
    refused, repeating it unchanged is fine (so `automation show` output loads back).
    """
    if not specs:
        return 0
    templates = dict(conn.execute(select(EmailTemplate.name, EmailTemplate.id)).all())
    segments = dict(conn.execute(select(Segment.name, Segment.id)).all())
    existing = {row.name: row for row in conn.execute(select(BROADCASTS))}
    problems, rows = [], []
    for spec in specs:
        where = f"{filename}:{spec.line}: broadcast {spec.name!r}"
        if spec.template not in templates:
            problems.append(f"{where}: no email template named {spec.template!r}")
            continue
        if spec.segment is not None and spec.segment not in segments:
            problems.append(f"{where}: no segment named {spec.segment!r}")
            continue
        values = {
            "template_id": templates[spec.template],
            "segment_id": segments.get(spec.segment) if spec.segment else None,
            "test_percent": spec.test_percent,
            "metric": spec.metric,
            "decide_after_seconds": spec.decide_after_seconds,
        }
        old = existing.get(spec.name)
        if old is not None and old.status != "draft":
            if any(getattr(old, column) != value for column, value in values.items()):
                problems.append(
                    f"{where}: it was started at {_when(old.started_at)}, so its template, "
                    "segment and test can no longer change; add the new send under another name"
                )
            continue
        rows.append((spec.name, old is not None, values))
    if problems:
        raise ConfigFileError(problems)
    now = utcnow()
    for name, known, values in rows:
        if known:
            conn.execute(
                update(BROADCASTS)
                .where(Broadcast.name == name, Broadcast.status == "draft")
                .values(**values, updated_at=now)
            )
        else:
            conn.execute(
                BROADCASTS.insert().values(name=name, status="draft", updated_at=now, **values)
            )
    return len(specs)


def export_specs(conn: Connection) -> list[dict[str, Any]]:
    """The broadcasts as the `broadcasts` section of a rules file."""
    rows = conn.execute(
        select(BROADCASTS, EmailTemplate.name.label("template"), Segment.name.label("segment"))
        .join(EmailTemplate, EmailTemplate.id == Broadcast.template_id)
        .outerjoin(Segment, Segment.id == Broadcast.segment_id)
        .order_by(Broadcast.id)
    )
    out = []
    for row in rows:
        item: dict[str, Any] = {"name": row.name, "template": row.template}
        if row.segment:
            item["segment"] = row.segment
        if row.test_percent:
            item["test"] = {
                "percent": row.test_percent,
                "metric": row.metric,
                "decide_after": format_duration(row.decide_after_seconds or 0),
            }
        out.append(item)
    return out


def format_duration(seconds: int) -> str | int:
    """Seconds as the largest whole unit a rules file takes ("4h", "2d"), else a number."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return seconds
