"""The `sequences` section of a rules file: written to the database by name, and read back.

A sequence whose steps change keeps its active enrolments at the step each
stands at, wherever that step now is (`automation.sequence_remap` works out
which old step became which new one), in the same transaction as the change.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, func, insert, or_, select, update

from automation.bulk import insert_rows
from automation.config_file import AutomationSpec, ConfigFileError
from automation.sequence_defs import SequenceSpec, describe, make_sequence, sequence_document
from automation.sequence_remap import (
    PlaceReport,
    Remap,
    match_origins,
    match_steps,
    remap,
    steps_digest,
)
from tracker.automation_models import Segment
from tracker.email_models import EmailTemplate, Enrolment, EnrolmentLog, Message
from tracker.email_models import Sequence as SequenceRow
from tracker.models import utcnow

log = logging.getLogger(__name__)

SEQUENCES = SequenceRow.__table__
ENROLMENTS = Enrolment.__table__
MESSAGES = Message.__table__

STEP_REMOVED = "step removed"
"""Exit reason and log detail of an enrolment completed because no step was left after its own."""


@dataclass
class StepsEdit:
    """What a page saving sequences knows and learns beyond the rules file.

    `origins`, by sequence name: the digest of the stored steps the steps
    editor's rows came from, and per saved step the index it had (None: new).
    `reports`: what each save did to active enrolments.
    """

    origins: dict[str, tuple[str, list[int | None]]] = field(default_factory=dict)
    reports: list[PlaceReport] = field(default_factory=list)


_EDIT: ContextVar[StepsEdit | None] = ContextVar("sequence_steps_edit", default=None)


@contextmanager
def steps_edit(
    origins: Mapping[str, tuple[str, Sequence[int | None]]] | None = None,
) -> Iterator[StepsEdit]:
    """Within it, saved sequences use these row origins and report what they did to enrolments.

    A context rather than an argument: pages save through the rules file's
    parser and `config_store.apply`, which know nothing of forms.
    """
    edit = StepsEdit(
        {name: (digest, list(rows)) for name, (digest, rows) in (origins or {}).items()}
    )
    token = _EDIT.set(edit)
    try:
        yield edit
    finally:
        _EDIT.reset(token)


def _problems(conn: Connection, spec: AutomationSpec, filename: str) -> list[str]:
    """What the file's sequences (and `enrol` actions) name that does not exist."""
    segments = set(conn.execute(select(Segment.name)).scalars())
    templates = set(conn.execute(select(EmailTemplate.name)).scalars())
    templates |= {getattr(t, "name", None) for t in getattr(spec, "templates", [])}
    problems = []
    for sequence in spec.sequences:
        where = f"{filename}:{sequence.line}: sequence {sequence.name!r}"
        if sequence.entry_segment and sequence.entry_segment not in segments:
            problems.append(f"{where}: no segment named {sequence.entry_segment!r}")
        for template in sorted(sequence.templates - templates):
            line = sequence.template_lines.get(template) or sequence.line
            problems.append(
                f"{filename}:{line}: sequence {sequence.name!r}: no email template named "
                f"{template!r} (define it under templates, in this file or one loaded before)"
            )
    known = {s.name for s in spec.sequences} | set(conn.execute(select(SEQUENCES.c.name)).scalars())
    for threshold in spec.thresholds:
        for action in threshold.actions:
            if action["type"] == "enrol" and action["sequence"] not in known:
                problems.append(
                    f"{filename}:{threshold.line}: threshold {threshold.name!r}: "
                    f"no sequence named {action['sequence']!r}"
                )
    return problems


def apply_sequences(conn: Connection, spec: AutomationSpec, filename: str) -> int:
    """Create or update (by name) the file's sequences in the caller's transaction.

    Run after segments and templates are written. Active enrolments of a
    sequence whose steps changed stay at their step (`keep_places`).
    """
    problems = _problems(conn, spec, filename)
    if problems:
        raise ConfigFileError(problems)
    if not spec.sequences:
        return 0
    segments = dict(conn.execute(select(Segment.name, Segment.id)).all())
    now = utcnow()
    # Locked: a second save of the same sequence must remap from this one's steps, not
    # from the ones both read first, and the runner (FOR SHARE) waits for the new steps
    # (PostgreSQL; SQLite writes one at a time anyway). NO KEY UPDATE, not UPDATE: new
    # enrolments' foreign-key checks on the sequence go on, so ingestion never deadlocks
    # with a save.
    before = {
        row.name: row
        for row in conn.execute(
            select(SEQUENCES.c.id, SEQUENCES.c.name, SEQUENCES.c.steps)
            .where(SEQUENCES.c.name.in_([s.name for s in spec.sequences]))
            .order_by(SEQUENCES.c.name)
            .with_for_update(key_share=True)
        )
    }
    insert_rows(
        conn,
        SEQUENCES,
        [
            {
                "name": s.name,
                "entry_segment_id": segments.get(s.entry_segment) if s.entry_segment else None,
                "on_not_ready": s.on_not_ready,
                "steps": s.steps,
                "exits": s.exits,
                "send_window": s.send_window,
                "reentry": s.reentry,
                "reentry_days": s.reentry_days,
                "enabled": s.enabled,
                "updated_at": now,
            }
            for s in spec.sequences
        ],
        conflict=("name",),
        update={
            c: "new"
            for c in (
                "entry_segment_id",
                "on_not_ready",
                "steps",
                "exits",
                "send_window",
                "reentry",
                "reentry_days",
                "enabled",
                "updated_at",
            )
        },
    )
    edit = _EDIT.get()
    for s in spec.sequences:
        old = before.get(s.name)
        if old is None or old.steps == s.steps:
            continue
        report = keep_places(
            conn,
            old.id,
            s.name,
            old.steps,
            s.steps,
            _step_map(edit, s.name, old.steps, s.steps),
            now,
        )
        if report is not None:
            log.info("%s", report.summary())
            if edit is not None:
                edit.reports.append(report)
    return len(spec.sequences)


def _step_map(
    edit: StepsEdit | None, name: str, old: list[Any], new: list[Any]
) -> list[int | None]:
    """Old step → new index: by the form's row origins when they index these very steps (no
    one saved between the form's loading and this save), else by matching the steps."""
    origins = edit.origins.get(name) if edit is not None else None
    if origins is not None:
        digest, rows = origins
        if digest == steps_digest(old) and len(rows) == len(new):
            return match_origins(rows, len(old))
    return match_steps(old, new)


def keep_places(
    conn: Connection,
    sequence_id: int,
    name: str,
    old_steps: list[Any],
    new_steps: list[Any],
    step_map: Sequence[int | None],
    now: datetime,
) -> PlaceReport | None:
    """Move the sequence's active enrolments, and their messages' step numbers, with their steps.

    Those at a removed step go on to the next old step still there; with none
    left they complete (reason STEP_REMOVED). Their next_at stays: a wait
    they were in still counts. Messages already made stay, under their step's
    new number (none when it was removed), so no step is sent twice nor
    skipped for a message of another step. Returns None when no one is active.
    """
    moves = remap(step_map, len(new_steps))
    active = (ENROLMENTS.c.sequence_id == sequence_id, ENROLMENTS.c.status == "active")
    standing = dict(
        conn.execute(
            select(ENROLMENTS.c.position, func.count())
            .where(*active)
            .group_by(ENROLMENTS.c.position)
        ).all()
    )
    if not standing:
        return None
    if moves.moves_steps:
        _renumber_messages(conn, sequence_id, moves)
    completed = _complete_at_removed_end(conn, sequence_id, moves, standing, now)
    _move(conn, sequence_id, moves, now)
    moved_on: Counter[int] = Counter()
    for position, n in standing.items():
        if moves.removed(position) and moves.place(position) < moves.new_count:
            moved_on[moves.place(position)] += n
    compiled = make_sequence(sequence_id, name, new_steps)
    return PlaceReport(
        sequence=name,
        kept=sum(n for position, n in standing.items() if not moves.removed(position)),
        moved_on=dict(moved_on),
        completed=completed,
        steps={position: describe(compiled, position) for position in moved_on},
    )


def _renumber_messages(conn: Connection, sequence_id: int, moves: Remap) -> None:
    """The active enrolments' messages under their step's new index (a removed step's: none)."""
    mine = MESSAGES.c.enrolment_id.in_(
        select(ENROLMENTS.c.id).where(
            ENROLMENTS.c.sequence_id == sequence_id, ENROLMENTS.c.status == "active"
        )
    )
    kept = {old: -1 - new for old, new in enumerate(moves.step_map) if new is not None}
    # Through negative numbers: one statement swapping 0 and 1 would break the unique
    # (enrolment, step) key halfway, as both databases check it row by row.
    parked = case(kept, value=MESSAGES.c.step, else_=None) if kept else None
    conn.execute(update(MESSAGES).where(mine, MESSAGES.c.step.is_not(None)).values(step=parked))
    conn.execute(
        update(MESSAGES).where(mine, MESSAGES.c.step < 0).values(step=-1 - MESSAGES.c.step)
    )


def _complete_at_removed_end(
    conn: Connection, sequence_id: int, moves: Remap, standing: Mapping[int, int], now: datetime
) -> int:
    """Complete the enrolments at a removed step with no old step left after it; how many."""
    ending = [p for p in standing if moves.removed(p) and moves.place(p) == moves.new_count]
    if not ending:
        return 0
    ids = (
        conn.execute(
            update(ENROLMENTS)
            .where(
                ENROLMENTS.c.sequence_id == sequence_id,
                ENROLMENTS.c.status == "active",
                ENROLMENTS.c.position.in_(ending),
            )
            .values(
                status="completed",
                position=moves.new_count,
                exit_reason=STEP_REMOVED,
                ended_at=now,
                lease_until=None,
                updated_at=now,
            )
            .returning(ENROLMENTS.c.id)
        )
        .scalars()
        .all()
    )
    if ids:
        conn.execute(
            insert(EnrolmentLog.__table__),
            [
                {
                    "enrolment_id": id_,
                    "position": moves.new_count,
                    "action": "completed",
                    "detail": STEP_REMOVED,
                    "created_at": now,
                }
                for id_ in ids
            ],
        )
    return len(ids)


def _move(conn: Connection, sequence_id: int, moves: Remap, now: datetime) -> None:
    """Set each active enrolment's position to where its step now is."""
    position = ENROLMENTS.c.position
    changed = {p: q for p, q in enumerate(moves.places[: moves.old_count]) if q != p}
    # Past the old end (the runner has yet to complete them): the new end.
    beyond = (position >= moves.old_count) & (position != moves.new_count)
    if not changed and moves.old_count == moves.new_count:
        return
    whens = [(position >= moves.old_count, moves.new_count)]
    whens += [(position == p, q) for p, q in changed.items()]
    conn.execute(
        update(ENROLMENTS)
        .where(
            ENROLMENTS.c.sequence_id == sequence_id,
            ENROLMENTS.c.status == "active",
            or_(position.in_(list(changed)), beyond),
        )
        .values(position=case(*whens, else_=position), updated_at=now)
    )


def export_sequences(conn: Connection) -> list[dict[str, Any]]:
    """The sequences as the `sequences` section of a rules file."""
    segments = dict(conn.execute(select(Segment.id, Segment.name)).all())
    return [
        sequence_document(
            SequenceSpec(
                name=row.name,
                steps=row.steps,
                entry_segment=segments.get(row.entry_segment_id),
                on_not_ready=row.on_not_ready,
                exits=row.exits or {},
                send_window=row.send_window,
                reentry=row.reentry,
                reentry_days=row.reentry_days,
                enabled=row.enabled,
            )
        )
        for row in conn.execute(select(SEQUENCES).order_by(SEQUENCES.c.id))
    ]
