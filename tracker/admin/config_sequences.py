"""Sequences in the admin: enrolment counts, the steps as YAML, and how each step does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Response, render_template
from sqlalchemy import func, select, union

from tracker.admin import bp
from tracker.admin.configure import SECTIONS, edit_page, row_or_404
from tracker.auth import roles
from tracker.db import db
from tracker.email_models import Enrolment, EnrolmentLog, Message, Sequence


@dataclass(frozen=True)
class StepStats:
    """One step of a sequence: what it does, who reached it, and its mail's results."""

    position: int
    does: str
    reached: int
    sent: int | None = None
    opened: int | None = None
    clicked: int | None = None


def enrolment_counts() -> dict[int, dict[str, int]]:
    """Per sequence id: enrolments by status (active, completed, exited)."""
    counts: dict[int, dict[str, int]] = {}
    rows = db.session.execute(
        select(Enrolment.sequence_id, Enrolment.status, func.count()).group_by(
            Enrolment.sequence_id, Enrolment.status
        )
    )
    for sequence_id, status, n in rows:
        counts.setdefault(sequence_id, {})[status] = n
    return counts


def step_stats(sequence: Sequence) -> list[StepStats]:
    """Per step: enrolments that reached it; for sends, messages sent, human opens and clicks."""
    from automation.sequence_defs import describe, make_sequence

    compiled = make_sequence(sequence.id, sequence.name, sequence.steps)
    # Reached: logged at that position (entered, sent, waited, …) or standing there now.
    mine = select(Enrolment.id).where(Enrolment.sequence_id == sequence.id)
    visits = union(
        select(EnrolmentLog.enrolment_id, EnrolmentLog.position).where(
            EnrolmentLog.enrolment_id.in_(mine), EnrolmentLog.position.is_not(None)
        ),
        select(Enrolment.id, Enrolment.position).where(Enrolment.sequence_id == sequence.id),
    ).subquery()
    reached = dict(
        db.session.execute(
            select(visits.c.position, func.count()).group_by(visits.c.position)
        ).all()
    )
    mail: dict[int, Any] = {
        row.step: row
        for row in db.session.execute(
            select(
                Message.step,
                func.count(Message.sent_at).label("sent"),
                func.count(Message.opened_at).label("opened"),
                func.count(Message.clicked_at).label("clicked"),
            )
            .join(Enrolment, Enrolment.id == Message.enrolment_id)
            .where(Enrolment.sequence_id == sequence.id)
            .group_by(Message.step)
        )
    }
    stats = []
    for position, step in enumerate(compiled.steps):
        row = mail.get(position)
        sends = step.kind == "send"
        stats.append(
            StepStats(
                position,
                describe(compiled, position),
                reached.get(position, 0),
                sent=(row.sent if row else 0) if sends else None,
                opened=(row.opened if row else 0) if sends else None,
                clicked=(row.clicked if row else 0) if sends else None,
            )
        )
    return stats


@bp.get("/sequences")
@roles("marketer")
def sequences_list() -> str:
    """Sequences with their active, completed and exited enrolments."""
    sequences = db.session.scalars(select(Sequence).order_by(Sequence.name)).all()
    return render_template(
        "admin/config/sequences.html", sequences=sequences, counts=enrolment_counts()
    )


@bp.route("/sequences/new", methods=["GET", "POST"])
@roles("marketer")
def sequence_new() -> Response | str:
    """Create a sequence from its YAML."""
    return edit_page(SECTIONS["sequences"], None, "admin.sequence_edit")


@bp.route("/sequences/<int:item_id>", methods=["GET", "POST"])
@roles("marketer")
def sequence_edit(item_id: int) -> Response | str:
    """Edit a sequence's steps, entry and exits; see how each step does."""
    sequence = row_or_404(Sequence, item_id)
    return edit_page(
        SECTIONS["sequences"],
        sequence,
        "admin.sequence_edit",
        "admin/config/sequence.html",
        steps=step_stats(sequence),
        counts=enrolment_counts().get(sequence.id, {}),
    )
