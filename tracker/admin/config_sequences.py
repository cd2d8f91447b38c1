"""Sequences in the admin: the steps editor and the YAML one, how each step does, deleting.

Both editors save through the rules file's parser (`configure.item_form`):
the steps form becomes the same `sequences` item the YAML editor holds, so
both accept and refuse the same things, with the same messages. Either way
active enrolments stay at their step (`automation.sequence_config.steps_edit`):
the form tells which row was which stored step, the YAML is matched step by
step; the flash message says who kept their place and who moved on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from sqlalchemy import func, select, union
from sqlalchemy.exc import IntegrityError

from tracker.admin import bp
from tracker.admin.configure import (
    SECTIONS,
    edit_page,
    exported_item,
    item_form,
    item_text,
    row_or_404,
)
from tracker.admin.sequence_form import (
    FormRefused,
    SequenceForm,
    apply_op,
    form_of,
    form_problems,
    new_form,
    read_form,
    sequence_item,
)
from tracker.auth import roles
from tracker.automation_models import Segment, Threshold
from tracker.db import db
from tracker.email_models import (
    EmailTemplate,
    Enrolment,
    EnrolmentLog,
    Message,
    Sequence,
    TemplateVersion,
)
from tracker.models import utcnow
from tracker.sales_models import Campaign


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
    return edit_page(
        SECTIONS["sequences"], None, "admin.sequence_edit", "admin/config/sequence.html"
    )


@bp.route("/sequences/<int:item_id>", methods=["GET", "POST"])
@roles("marketer")
def sequence_edit(item_id: int) -> Response | str:
    """Edit a sequence as YAML; see how each step does."""
    from automation.sequence_config import steps_edit

    sequence = row_or_404(Sequence, item_id)
    with steps_edit() as edit:
        page = edit_page(
            SECTIONS["sequences"],
            sequence,
            "admin.sequence_edit",
            "admin/config/sequence.html",
            steps=step_stats(sequence),
            counts=enrolment_counts().get(sequence.id, {}),
        )
    if isinstance(page, Response) and page.status_code == 302:
        _flash_places(edit.reports)
    return page


def _flash_places(reports: list[Any]) -> None:
    """Tell the marketer where a save left the people in the sequence."""
    for report in reports:
        flash(report.summary("this sequence") + ".")


# ---------------------------------------------------------------- the steps editor


def _editor_choices() -> dict[str, Any]:
    """What the editor's selects offer: templates (with variants), segments, kinds, days, …"""
    from automation.scoring import EVENT_TYPES
    from automation.sequence_defs import BRANCH_ON, DAYS, FUNNEL, REENTRY, STEP_KINDS

    templates = [
        (name, [v["name"] for v in variants or []])
        for name, variants in db.session.execute(
            select(EmailTemplate.name, TemplateVersion.variants)
            .outerjoin(TemplateVersion, TemplateVersion.id == EmailTemplate.current_version_id)
            .order_by(EmailTemplate.name)
        )
    ]
    return {
        "templates": templates,
        "segments": db.session.scalars(select(Segment.name).order_by(Segment.name)).all(),
        "kinds": STEP_KINDS,
        "days": DAYS,
        "branch_on": BRANCH_ON,
        "reentries": REENTRY,
        "stages": FUNNEL,
        "event_types": sorted(EVENT_TYPES),
    }


def _first_template() -> str:
    """The template a new send step starts with (the first by name; none yet: blank)."""
    return db.session.scalar(select(EmailTemplate.name).order_by(EmailTemplate.name).limit(1)) or ""


def _stored_form(sequence: Sequence | None) -> SequenceForm:
    """The editor filled from the stored sequence (a new one: a single send)."""
    from automation.sequence_remap import steps_digest

    if sequence is None:
        return new_form(_first_template())
    form = form_of(exported_item("sequences", sequence.name) or {"name": sequence.name})
    return replace(form, based_on=steps_digest(sequence.steps or []))


def steps_editor(
    sequence: Sequence | None, typed: SequenceForm, status: int = 200, **extra: Any
) -> Response:
    """The steps editor page for `typed`, with the stored sequence's per-step stats."""
    extra.setdefault("row_problems", {})
    page = render_template(
        "admin/config/sequence_steps.html",
        row=sequence,
        form=typed,
        stats={s.position: s for s in step_stats(sequence)} if sequence else {},
        counts=enrolment_counts().get(sequence.id, {}) if sequence else {},
        **_editor_choices(),
        **extra,
    )
    return Response(page, status)


def _steps_page(sequence: Sequence | None) -> Response:
    """GET: the form; POST: a row button re-renders it, Save saves it through the parser."""
    if request.method == "GET":
        return steps_editor(sequence, _stored_form(sequence))
    name = sequence.name if sequence is not None else None
    try:
        typed = read_form(request.form, name)
    except FormRefused as e:
        return steps_editor(sequence, _stored_form(sequence), 400, problems=[str(e)])
    op = request.form.get("op") or "save"
    if op != "save":
        row = op.partition(":")[2]
        try:
            typed = apply_op(
                typed, op, request.form.get(f"step-{row}-add") or "", _first_template()
            )
        except FormRefused as e:
            return steps_editor(sequence, typed, 400, problems=[str(e)])
        return steps_editor(sequence, typed)
    from automation.sequence_config import steps_edit

    # Which stored step each row was, so the people standing at it stay with it.
    origins = {name: (typed.based_on, [row.origin for row in typed.steps])} if name else {}
    with steps_edit(origins) as edit:
        outcome = item_form("sequences", item_text(sequence_item(typed)), name)
    if isinstance(outcome, list):
        problems, by_row = form_problems(outcome, len(typed.steps))
        return steps_editor(sequence, typed, 400, problems=problems, row_problems=by_row)
    _flash_places(edit.reports)
    saved_id = db.session.scalar(select(Sequence.id).where(Sequence.name == outcome.name))
    return redirect(url_for("admin.sequence_steps", item_id=saved_id, saved=1))


@bp.route("/sequences/new/steps", methods=["GET", "POST"])
@roles("marketer")
def sequence_steps_new() -> Response:
    """Build a new sequence step by step in a form."""
    return _steps_page(None)


@bp.route("/sequences/<int:item_id>/steps", methods=["GET", "POST"])
@roles("marketer")
def sequence_steps(item_id: int) -> Response:
    """Edit a sequence in a form (steps, entry, exits, window, re-entry); see how each step does."""
    return _steps_page(row_or_404(Sequence, item_id))


# ---------------------------------------------------------------- disabling, deleting


@bp.post("/sequences/<int:item_id>/disable")
@roles("marketer")
def sequence_disable(item_id: int) -> Response:
    """Stop new enrolments (active ones hold where they are), saved as `enabled: false` is."""
    sequence = row_or_404(Sequence, item_id)
    item = exported_item("sequences", sequence.name) or {"name": sequence.name}
    outcome = item_form("sequences", item_text({**item, "enabled": False}), sequence.name)
    if isinstance(outcome, list):
        problems, _ = form_problems(outcome, 0)
        return steps_editor(sequence, _stored_form(sequence), 400, problems=problems)
    return redirect(url_for("admin.sequence_steps", item_id=sequence.id, saved=1))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def deletion_refusal(sequence: Sequence) -> str | None:
    """Why the sequence cannot be deleted, or None when nothing needs it."""
    enrolments = db.session.scalar(
        select(func.count()).select_from(Enrolment).where(Enrolment.sequence_id == sequence.id)
    )
    messages = db.session.scalar(
        select(func.count())
        .select_from(Message)
        .join(Enrolment, Enrolment.id == Message.enrolment_id)
        .where(Enrolment.sequence_id == sequence.id)
    )
    if enrolments or messages:
        return (
            f"Sequence {sequence.name!r} has {_plural(enrolments or 0, 'enrolment')} and "
            f"{_plural(messages or 0, 'message')}: the reports need that history, so it cannot "
            "be deleted. Disabling it stops new enrolments (active ones hold where they are)."
        )
    enrolling = [
        name
        for name, actions in db.session.execute(
            select(Threshold.name, Threshold.actions).order_by(Threshold.name)
        )
        if any(
            a.get("type") == "enrol" and a.get("sequence") == sequence.name for a in actions or []
        )
    ]
    if enrolling:
        thresholds = "threshold" if len(enrolling) == 1 else "thresholds"
        return (
            f"Sequence {sequence.name!r} is where the {thresholds} "
            f"{', '.join(repr(n) for n in enrolling)} enrol contacts: remove that enrol action "
            "first, or disable the sequence instead."
        )
    return None


def delete_sequence(sequence: Sequence) -> str | None:
    """Delete a sequence no enrolment, message or threshold needs, and take it out of campaigns.

    One transaction; returns why it was refused instead (nothing changed then).
    """
    refusal = deletion_refusal(sequence)
    if refusal is not None:
        return refusal
    for campaign in db.session.scalars(select(Campaign)):
        if sequence.id in (campaign.sequence_ids or []):
            campaign.sequence_ids = [i for i in campaign.sequence_ids if i != sequence.id]
            campaign.updated_at = utcnow()
    db.session.delete(sequence)
    try:
        db.session.commit()
    except IntegrityError:
        # A contact was enrolled between the check and the delete: that is history now.
        db.session.rollback()
        return deletion_refusal(sequence) or "the sequence changed meanwhile: try again"
    return None


@bp.post("/sequences/<int:item_id>/delete")
@roles("marketer")
def sequence_delete(item_id: int) -> Response:
    """Delete a sequence without history; one with enrolments or messages is refused (409)."""
    sequence = row_or_404(Sequence, item_id)
    if not request.form.get("confirm"):
        problems = ["tick “Yes, delete it” to confirm the deletion"]
        return steps_editor(sequence, _stored_form(sequence), 400, problems=problems)
    refusal = delete_sequence(sequence)
    if refusal is not None:
        return steps_editor(sequence, _stored_form(sequence), 409, refusal=refusal)
    return redirect(url_for("admin.sequences_list", deleted=1))
