"""The I/O around the sequence engine: enrol contacts, find due enrolments, run their steps.

The scheduler only finds due enrolments and enqueues them, a batch of ids per
job (`enqueue_due_enrolments`); the job (`run_due`) claims each with a lease
and processes its due steps in order, one transaction per step. Each step's
UPDATE is conditional on the enrolment still being where this run found it,
and a send's message is unique per (enrolment, step): a duplicated or
repeated job does every step once.

A sequence's steps may be edited while a job runs, and the edit moves every
active enrolment to its step's new index (`automation.sequence_config`). So a
step is decided with the definition current when its enrolment was read, in
the same transaction: the read returns the sequence's `updated_at` and locks
its row against edits until the step commits (PostgreSQL: FOR SHARE, which an
editor's FOR UPDATE waits for, and which waits for an editor's commit; SQLite:
the step takes the write lock first, BEGIN IMMEDIATE). A job compiles each
sequence once and again only when that `updated_at` differs from its own.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from rq import Queue
from sqlalchemy import Connection, Row, Select, and_, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from automation.outgoing import UnknownTemplate, create_messages
from automation.segments import memberships
from automation.sequence_defs import SequenceDef, SequenceError, make_sequence
from automation.sequence_steps import (
    Caps,
    ContactFacts,
    Decision,
    EnrolmentFacts,
    MessageFacts,
    PastEnrolment,
    contact_zone,
    decide,
    entry_refusal,
    zone,
)
from tracker.automation_models import Segment, SegmentMember
from tracker.db import db, take_write_lock
from tracker.email_models import Enrolment, EnrolmentLog, Message
from tracker.email_models import Sequence as SequenceRow
from tracker.models import Contact, Event, Site, Visitor, as_utc

log = logging.getLogger(__name__)

ENROLMENTS = Enrolment.__table__
LOG = EnrolmentLog.__table__
SEQUENCES = SequenceRow.__table__

SEQUENCE_QUEUE = "default"
"""Queue the enrolment jobs go to (with the other actions; mail has its own)."""

ENROLMENT_BATCH = 100
"""Enrolment ids one job takes: an RQ job costs ~9 ms of bookkeeping, a step far less."""

FIND_LIMIT = 5000
"""Most due enrolments one scheduler tick enqueues (oldest first); the next tick takes more."""

QUEUED_LEASE = timedelta(minutes=10)
"""An enqueued enrolment is not enqueued again for this long; a lost job's are found again."""

RUN_LEASE = timedelta(minutes=5)
"""How long a job holds an enrolment it claimed; released when it is done with it."""

TEMPLATE_RETRY = timedelta(hours=1)
"""A send whose template has no saved version is tried again after this long."""

RECENT = timedelta(days=7)
"""How far back the frequency cap looks (its longest window)."""

CHUNK = 1000
INSERT_CHUNK = 500


def _compile(row: Any) -> SequenceDef | None:
    """The stored row compiled; None (and a warning) for one that no longer checks out.

    Rows are checked when loaded from a file; one edited by hand into a broken
    state must not stop ingestion, which enrols and wakes enrolments.
    """
    try:
        return _make(row)
    except SequenceError as e:
        log.warning("sequence %r is skipped: %s", row.name, e)
        return None


def _make(row: Any) -> SequenceDef:
    return make_sequence(
        row.id,
        row.name,
        row.steps,
        exits=row.exits,
        send_window=row.send_window,
        entry_segment_id=row.entry_segment_id,
        on_not_ready=row.on_not_ready,
        reentry=row.reentry,
        reentry_days=row.reentry_days,
        enabled=row.enabled,
    )


def load_sequence(conn: Connection, key: int | str) -> SequenceDef | None:
    """A stored sequence by id or name, compiled for the engine; None when there is none."""
    column = SEQUENCES.c.id if isinstance(key, int) else SEQUENCES.c.name
    row = conn.execute(select(SEQUENCES).where(column == key)).first()
    return _compile(row) if row is not None else None


def load_sequences(conn: Connection, *conditions: Any) -> list[SequenceDef]:
    """Stored sequences matching the conditions (all of them without any), by id."""
    query = select(SEQUENCES).where(*conditions).order_by(SEQUENCES.c.id)
    return [s for s in map(_compile, conn.execute(query)) if s is not None]


@dataclass(frozen=True)
class HeldSequence:
    """A sequence as a job compiled it, and the `updated_at` of the row it compiled (`version`).

    `sequence` is None for a row that no longer checks out (see `_compile`).
    """

    version: datetime
    sequence: SequenceDef | None


def hold_sequence(conn: Connection, sequence_id: int) -> HeldSequence:
    """The stored sequence compiled, with its version; an enrolment's sequence always exists."""
    row = conn.execute(select(SEQUENCES).where(SEQUENCES.c.id == sequence_id)).one()
    return HeldSequence(row.updated_at, _compile(row))


# --- Entering --------------------------------------------------------------------------


def _history(
    conn: Connection, sequence_id: int, contact_ids: Sequence[int]
) -> dict[int, list[PastEnrolment]]:
    found: dict[int, list[PastEnrolment]] = defaultdict(list)
    for start in range(0, len(contact_ids), CHUNK):
        query = select(ENROLMENTS.c.contact_id, ENROLMENTS.c.status, ENROLMENTS.c.ended_at).where(
            ENROLMENTS.c.sequence_id == sequence_id,
            ENROLMENTS.c.contact_id.in_(contact_ids[start : start + CHUNK]),
        )
        for contact_id, status, ended_at in conn.execute(query):
            found[contact_id].append(PastEnrolment(status, as_utc(ended_at) if ended_at else None))
    return found


def _reachable(conn: Connection, contact_ids: Sequence[int]) -> set[int]:
    """The contacts that may get email (email_status ok)."""
    found: set[int] = set()
    contacts = Contact.__table__
    for start in range(0, len(contact_ids), CHUNK):
        found.update(
            conn.execute(
                select(contacts.c.id).where(
                    contacts.c.id.in_(contact_ids[start : start + CHUNK]),
                    contacts.c.email_status == "ok",
                )
            ).scalars()
        )
    return found


def _insert_enrolments(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert active enrolments, skipping any (sequence, contact) with an active one already.

    The partial unique index decides, so two workers enrolling the same contact
    at once still make one enrolment.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    created: list[int] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        statement = (
            dialect.insert(ENROLMENTS)
            .values(rows[start : start + INSERT_CHUNK])
            .on_conflict_do_nothing(
                index_elements=["sequence_id", "contact_id"],
                index_where=text("status = 'active'"),
            )
            .returning(ENROLMENTS.c.id)
        )
        created += conn.execute(statement).scalars().all()
    return created


def enrol(
    conn: Connection,
    contact_ids: Iterable[int],
    sequence: SequenceDef,
    cause: str,
    now: datetime,
) -> list[int]:
    """Enrol the contacts the sequence may take now; return the new enrolments' ids.

    Nobody enters a disabled sequence; do-not-contact contacts, contacts
    already active in it and those its re-entry policy keeps out are skipped.
    The first step is due at once.
    """
    if not sequence.enabled:
        return []
    ids = sorted(set(contact_ids))
    if not ids:
        return []
    reachable = _reachable(conn, ids)
    history = _history(conn, sequence.id, ids)
    rows = [
        {
            "sequence_id": sequence.id,
            "contact_id": contact_id,
            "status": "active",
            "position": 0,
            "next_at": now,
            "cause": cause[:200],
            "started_at": now,
            "updated_at": now,
        }
        for contact_id in ids
        if contact_id in reachable
        and entry_refusal(sequence.reentry, sequence.reentry_days, history[contact_id], now) is None
    ]
    if not rows:
        return []
    created = _insert_enrolments(conn, rows)
    if created:
        conn.execute(
            insert(LOG),
            [
                {
                    "enrolment_id": id_,
                    "position": 0,
                    "action": "entered",
                    "detail": cause[:500],
                    "created_at": now,
                }
                for id_ in created
            ],
        )
    return created


def refusal(conn: Connection, contact_id: int, sequence: SequenceDef, now: datetime) -> str | None:
    """Why `enrol` would not take this contact into the sequence now, or None."""
    if not sequence.enabled:
        return f"sequence {sequence.name!r} is disabled"
    if not _reachable(conn, [contact_id]):
        status = conn.execute(select(Contact.email_status).where(Contact.id == contact_id)).scalar()
        return f"the contact is do-not-contact for email ({status})"
    history = _history(conn, sequence.id, [contact_id])
    return entry_refusal(sequence.reentry, sequence.reentry_days, history[contact_id], now)


def enrol_joined(conn: Connection, joined: Mapping[int, Sequence[int]], now: datetime) -> list[int]:
    """Enrol contacts who just joined segments into the sequences those segments start."""
    segment_ids = [segment_id for segment_id, contacts in joined.items() if contacts]
    if not segment_ids:
        return []
    names = dict(
        conn.execute(select(Segment.id, Segment.name).where(Segment.id.in_(segment_ids))).all()
    )
    created = []
    for sequence in load_sequences(
        conn,
        SEQUENCES.c.entry_segment_id.in_(segment_ids),
        SEQUENCES.c.enabled,
        ~SEQUENCES.c.on_not_ready,
    ):
        segment_id = sequence.entry_segment_id
        cause = f"joined segment {names.get(segment_id, segment_id)}"
        created += enrol(conn, joined[segment_id], sequence, cause, now)  # type: ignore[index]
    return created


def not_ready_sequence(conn: Connection, contact_id: int) -> SequenceDef | None:
    """The sequence for a lead marked not ready: one for a segment it is in, else a general one."""
    candidates = load_sequences(conn, SEQUENCES.c.on_not_ready, SEQUENCES.c.enabled)
    segments = memberships(conn, [contact_id]).get(contact_id, set())
    for sequence in candidates:
        if sequence.entry_segment_id is not None and sequence.entry_segment_id in segments:
            return sequence
    for sequence in candidates:
        if sequence.entry_segment_id is None:
            return sequence
    return None


def wake_branches(conn: Connection, message_ids: Iterable[int], now: datetime) -> int:
    """Make enrolments waiting on a branch over these messages due now; return how many.

    Called by ingestion for messages that just got a human open or click, so a
    branch is taken as soon as the click is known rather than at the window's end.
    """
    ids = sorted(set(message_ids))
    if not ids:
        return 0
    waiting: dict[int, list[int]] = defaultdict(list)  # enrolment ids by position
    cache: dict[int, SequenceDef | None] = {}
    for start in range(0, len(ids), CHUNK):
        query = select(ENROLMENTS.c.id, ENROLMENTS.c.sequence_id, ENROLMENTS.c.position).where(
            ENROLMENTS.c.last_message_id.in_(ids[start : start + CHUNK]),
            ENROLMENTS.c.status == "active",
            ENROLMENTS.c.next_at > now,
        )
        for enrolment_id, sequence_id, position in conn.execute(query):
            if sequence_id not in cache:
                cache[sequence_id] = load_sequence(conn, sequence_id)
            # Only a branch step may be woken early: a wait's end is its due time.
            if _is_branch(cache[sequence_id], position):
                waiting[position].append(enrolment_id)
    if not waiting:
        return 0
    # Only where each stood when read: an edit that committed since (before the steps were
    # compiled, or after) moved it to another step, which may be no branch.
    return conn.execute(
        update(ENROLMENTS)
        .where(
            ENROLMENTS.c.status == "active",
            or_(
                *(
                    and_(ENROLMENTS.c.position == position, ENROLMENTS.c.id.in_(at))
                    for position, at in waiting.items()
                )
            ),
        )
        .values(next_at=now, lease_until=None, updated_at=now)
    ).rowcount


def _is_branch(sequence: SequenceDef | None, position: int) -> bool:
    return (
        sequence is not None
        and position < len(sequence.steps)
        and sequence.steps[position].kind == "branch"
    )


# --- Finding what is due ---------------------------------------------------------------


def due_enrolments(conn: Connection, now: datetime, limit: int = FIND_LIMIT) -> list[int]:
    """Active enrolments of enabled sequences whose step is due and that no job holds."""
    query = (
        select(ENROLMENTS.c.id)
        .join(SEQUENCES, SEQUENCES.c.id == ENROLMENTS.c.sequence_id)
        .where(
            ENROLMENTS.c.status == "active",
            ENROLMENTS.c.next_at <= now,
            or_(ENROLMENTS.c.lease_until.is_(None), ENROLMENTS.c.lease_until <= now),
            SEQUENCES.c.enabled,
        )
        .order_by(ENROLMENTS.c.next_at, ENROLMENTS.c.id)
        .limit(limit)
    )
    return list(conn.execute(query).scalars())


def enqueue_due_enrolments(client: redis.Redis, now: datetime, batch: int) -> int:
    """Enqueue jobs for due enrolments, `batch` ids a job, oldest first; return how many jobs.

    The enrolments are leased for QUEUED_LEASE as they are enqueued, so the
    next tick does not enqueue them again while their job waits for a worker.
    Run inside an app context.
    """
    with db.engine.begin() as conn:
        ids = due_enrolments(conn, now)
        for start in range(0, len(ids), CHUNK):
            conn.execute(
                update(ENROLMENTS)
                .where(ENROLMENTS.c.id.in_(ids[start : start + CHUNK]))
                .values(lease_until=now + QUEUED_LEASE)
            )
    if not ids:
        return 0
    size = max(batch, 1)
    jobs = [
        Queue.prepare_data(
            "automation.jobs.run_enrolments",
            args=(ids[start : start + size],),
            result_ttl=600,
            failure_ttl=7 * 86400,
        )
        for start in range(0, len(ids), size)
    ]
    Queue(SEQUENCE_QUEUE, connection=client).enqueue_many(jobs)
    return len(jobs)


# --- Running steps ---------------------------------------------------------------------


@dataclass
class RunResult:
    """What one run did: enrolments it took, steps it made, messages it queued."""

    enrolments: int = 0
    steps: int = 0
    message_ids: list[int] = field(default_factory=list)


class _Moved(Exception):
    """The enrolment changed under us (another job, a wake-up): leave it to that."""


def claim(conn: Connection, enrolment_ids: Sequence[int], now: datetime) -> list[int]:
    """Lease the due, active enrolments among these ids to this run; return them oldest first."""
    claimed: list[int] = []
    ids = sorted(set(enrolment_ids))
    for start in range(0, len(ids), CHUNK):
        claimed += conn.execute(
            update(ENROLMENTS)
            .where(
                ENROLMENTS.c.id.in_(ids[start : start + CHUNK]),
                ENROLMENTS.c.status == "active",
                ENROLMENTS.c.next_at <= now,
            )
            .values(lease_until=now + RUN_LEASE)
            .returning(ENROLMENTS.c.id)
        ).scalars()
    return sorted(claimed)


def _contact_facts(
    conn: Connection, sequence: SequenceDef, enrolment: Any, now: datetime
) -> ContactFacts:
    contact_id = enrolment.contact_id
    contact = conn.execute(
        select(
            Contact.email_status,
            Contact.stage,
            Contact.engagement_score,
            Contact.fit_score,
            Contact.traits,
        ).where(Contact.id == contact_id)
    ).one()
    own = (contact.traits or {}).get("timezone")
    site = None
    if zone(own) is None:
        # The site the contact was first seen on: its visitors' earliest first visit.
        site = conn.execute(
            select(Site.timezone)
            .join(Visitor, Visitor.site_id == Site.id)
            .where(Visitor.contact_id == contact_id)
            .order_by(Visitor.first_seen, Visitor.id)
            .limit(1)
        ).scalar()
    in_segment = True
    if sequence.exits.left_segment and sequence.entry_segment_id is not None:
        in_segment = (
            conn.execute(
                select(SegmentMember.contact_id).where(
                    SegmentMember.segment_id == sequence.entry_segment_id,
                    SegmentMember.contact_id == contact_id,
                )
            ).first()
            is not None
        )
    goal = False
    if sequence.exits.goal_event is not None:
        query = select(Event.id).where(
            Event.contact_id == contact_id,
            Event.type == sequence.exits.goal_event,
            Event.occurred_at >= enrolment.started_at,
        )
        if sequence.exits.goal_name:
            query = query.where(Event.name == sequence.exits.goal_name)
        goal = conn.execute(query.limit(1)).first() is not None
    return ContactFacts(
        email_status=contact.email_status,
        stage=contact.stage,
        score=contact.engagement_score + contact.fit_score,
        in_entry_segment=in_segment,
        goal_reached=goal,
        zone=contact_zone(own, site),
    )


def _last_message(conn: Connection, message_id: int | None) -> MessageFacts | None:
    if message_id is None:
        return None
    row = conn.execute(
        select(
            Message.status, Message.due_at, Message.sent_at, Message.opened_at, Message.clicked_at
        ).where(Message.id == message_id)
    ).first()
    if row is None:
        return None
    status, due_at, sent_at, opened_at, clicked_at = row
    return MessageFacts(
        status,
        as_utc(due_at),
        *(as_utc(t) if t else None for t in (sent_at, opened_at, clicked_at)),
    )


def recent_sends(conn: Connection, contact_id: int, now: datetime) -> list[datetime]:
    """When the contact's sequence emails of the last 7 days went (or will go) out.

    Queued and sent ones count; failed and suppressed ones never reached anyone.
    """
    rows = conn.execute(
        select(func.coalesce(Message.sent_at, Message.due_at)).where(
            Message.contact_id == contact_id,
            Message.kind == "sequence",
            Message.status.notin_(("failed", "suppressed")),
            Message.due_at > now - RECENT - timedelta(days=1),
        )
    ).scalars()
    return [as_utc(t) for t in rows if as_utc(t) > now - RECENT]


def _existing_message(conn: Connection, enrolment_id: int, step: int) -> int | None:
    return conn.execute(
        select(Message.id).where(Message.enrolment_id == enrolment_id, Message.step == step)
    ).scalar()


def _step(
    conn: Connection,
    enrolment: Any,
    sequence: SequenceDef,
    now: datetime,
    caps: Caps,
    result: RunResult,
) -> Decision:
    """Decide and record one step of the enrolment, in the caller's transaction."""
    position = enrolment.position
    contact = _contact_facts(conn, sequence, enrolment, now)
    facts = EnrolmentFacts(
        position, as_utc(enrolment.next_at), _last_message(conn, enrolment.last_message_id)
    )
    sending = position < len(sequence.steps) and sequence.steps[position].kind == "send"
    sends = recent_sends(conn, enrolment.contact_id, now) if sending else []
    decision = decide(sequence, facts, contact, now, sends, caps)
    values: dict[str, Any] = {
        "position": decision.position,
        "next_at": decision.at,
        "updated_at": now,
    }
    if decision.final:
        values.update(status=decision.action, ended_at=now, lease_until=None)
        if decision.action == "exited":
            values["exit_reason"] = decision.detail[:200]
    elif decision.at > now:
        values["lease_until"] = None  # asleep: the finder may take it when it is due
    created: list[int] = []
    if decision.action == "sent":
        recipient = {
            "contact_id": enrolment.contact_id,
            "enrolment_id": enrolment.id,
            "step": position,
        }
        created = create_messages(conn, decision.template, [recipient], kind="sequence", due_at=now)
        values["last_message_id"] = (
            created[0] if created else _existing_message(conn, enrolment.id, position)
        )
    moved = conn.execute(
        update(ENROLMENTS)
        .where(
            ENROLMENTS.c.id == enrolment.id,
            ENROLMENTS.c.status == "active",
            ENROLMENTS.c.position == position,
            ENROLMENTS.c.next_at == enrolment.next_at,
        )
        .values(values)
    ).rowcount
    if moved != 1:
        raise _Moved
    conn.execute(
        insert(LOG).values(
            enrolment_id=enrolment.id,
            position=position,
            action=decision.action,
            detail=decision.detail[:500] or None,
            created_at=now,
        )
    )
    result.message_ids += created
    result.steps += 1
    return decision


def _postpone_for_template(enrolment_id: int, error: str, now: datetime) -> None:
    with db.engine.begin() as conn:
        position = conn.execute(
            update(ENROLMENTS)
            .where(ENROLMENTS.c.id == enrolment_id, ENROLMENTS.c.status == "active")
            .values(next_at=now + TEMPLATE_RETRY, lease_until=None, updated_at=now)
            .returning(ENROLMENTS.c.position)
        ).scalar()
        if position is not None:
            conn.execute(
                insert(LOG).values(
                    enrolment_id=enrolment_id,
                    position=position,
                    action="postponed",
                    detail=f"{error}; trying again in an hour"[:500],
                    created_at=now,
                )
            )


def _locked_enrolment(enrolment_id: int) -> Select[Any]:
    """The enrolment with its sequence's `updated_at` (`sequence_version`), the sequence row
    share-locked (PostgreSQL): an edit holding it FOR UPDATE makes this wait for its commit,
    and no edit commits until this transaction ends. The one query a step made before."""
    return (
        select(ENROLMENTS, SEQUENCES.c.updated_at.label("sequence_version"))
        .join(SEQUENCES, SEQUENCES.c.id == ENROLMENTS.c.sequence_id)
        .where(ENROLMENTS.c.id == enrolment_id)
        .with_for_update(read=True, of=SEQUENCES)
    )


def _read_step(
    conn: Connection, enrolment_id: int, held: dict[int, HeldSequence]
) -> tuple[Row[Any] | None, SequenceDef | None]:
    """The enrolment and the definition to decide its step with, as they stand in this
    transaction, which no edit of the sequence can commit under.

    `held` is what the job compiled before; a sequence it has not seen, or whose
    version changed, is compiled again here.
    """
    take_write_lock(conn)
    query = _locked_enrolment(enrolment_id)
    enrolment = conn.execute(query).first()
    if enrolment is None:
        return None, None
    known = held.get(enrolment.sequence_id)
    if known is None or known.version != enrolment.sequence_version:
        known = held[enrolment.sequence_id] = hold_sequence(conn, enrolment.sequence_id)
        # Read again: when the lock above waited for an edit, PostgreSQL returned the newest
        # sequence row but the enrolment row from before the edit moved it. (When the job
        # holds the version locked, it compiled it in an earlier statement: this read's
        # snapshot had that version already, and the moves that came with it.)
        enrolment = conn.execute(query).one()
    return enrolment, known.sequence


def _run_one(
    enrolment_id: int,
    sequences: dict[int, HeldSequence],
    now: datetime,
    caps: Caps,
    result: RunResult,
) -> None:
    """Process the enrolment's due steps in order, once each, one transaction per step."""
    while True:
        try:
            with db.engine.begin() as conn:
                enrolment, sequence = _read_step(conn, enrolment_id, sequences)
                if (
                    enrolment is None
                    or enrolment.status != "active"
                    or as_utc(enrolment.next_at) > now
                ):
                    return
                if sequence is None or not sequence.enabled:
                    # Paused with its sequence; the finder skips it until it is enabled again.
                    conn.execute(
                        update(ENROLMENTS)
                        .where(ENROLMENTS.c.id == enrolment_id)
                        .values(lease_until=None)
                    )
                    return
                decision = _step(conn, enrolment, sequence, now, caps, result)
        except _Moved:
            return
        except UnknownTemplate as e:
            _postpone_for_template(enrolment_id, str(e), now)
            return
        if decision.final or decision.at > now:
            return


def run_due(enrolment_ids: Sequence[int], now: datetime, caps: Caps) -> RunResult:
    """Claim these enrolments and run every step of theirs that is due at `now`.

    Returns the messages created, for the caller to dispatch after the commits.
    """
    result = RunResult()
    try:
        with db.engine.begin() as conn:
            claimed = claim(conn, enrolment_ids, now)
        sequences: dict[int, HeldSequence] = {}
        for enrolment_id in claimed:
            _run_one(enrolment_id, sequences, now, caps, result)
            result.enrolments += 1
    finally:
        db.session.remove()
    return result
