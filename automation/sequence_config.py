"""The `sequences` section of a rules file: written to the database by name, and read back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from automation.bulk import insert_rows
from automation.config_file import AutomationSpec, ConfigFileError
from automation.sequence_defs import SequenceSpec, sequence_document
from tracker.automation_models import Segment
from tracker.email_models import EmailTemplate
from tracker.email_models import Sequence as SequenceRow
from tracker.models import utcnow

SEQUENCES = SequenceRow.__table__


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

    Run after segments and templates are written. Active enrolments carry on
    with the new steps from the position they are at.
    """
    problems = _problems(conn, spec, filename)
    if problems:
        raise ConfigFileError(problems)
    if not spec.sequences:
        return 0
    segments = dict(conn.execute(select(Segment.name, Segment.id)).all())
    now = utcnow()
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
    return len(spec.sequences)


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
