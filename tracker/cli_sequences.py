"""Operator commands for nurture sequences: `sequences enrol|show`, `leads not-ready`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from tracker.db import db
from tracker.payload import normalise_email

sequences_cli = AppGroup("sequences", help="Nurture sequences: enrol contacts, see enrolments.")
leads_cli = AppGroup("leads", help="What sales decides about a lead (the admin comes later).")


def _safe(text: Any) -> str:
    """Typed text made safe for a terminal (control characters shown as ?)."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    from tracker.models import as_utc

    return as_utc(moment).isoformat(timespec="minutes")


def _contact(email: str) -> Any:
    from tracker.models import Contact

    contact = db.session.scalar(select(Contact).where(Contact.email == normalise_email(email)))
    db.session.remove()
    if contact is None:
        raise click.ClickException(f"no contact has the email {_safe(email)!r}")
    return contact


@sequences_cli.command("enrol")
@click.argument("email")
@click.argument("sequence")
def sequences_enrol(email: str, sequence: str) -> None:
    """Enrol a contact in a sequence by hand; its first step runs on the next scheduler tick."""
    from automation.sequence_runner import enrol, load_sequence, refusal
    from tracker.models import utcnow

    contact = _contact(email)
    now = utcnow()
    with db.engine.begin() as conn:
        found = load_sequence(conn, sequence)
        if found is None:
            raise click.ClickException(
                f"no sequence named {_safe(sequence)!r} (list them: sequences show)"
            )
        created = enrol(conn, [contact.id], found, "manual", now)
        reason = None if created else refusal(conn, contact.id, found, now)
    if not created:
        raise click.ClickException(
            f"{_safe(contact.email)} was not enrolled in {_safe(found.name)!r}: {_safe(reason)}"
        )
    click.echo(f"enrolled {_safe(contact.email)} in {_safe(found.name)!r} (enrolment {created[0]})")


def _entry(sequence: Any, segments: dict[int, str]) -> str:
    parts = []
    if sequence.entry_segment_id is not None:
        segment = _safe(segments.get(sequence.entry_segment_id, sequence.entry_segment_id))
        parts.append(f"not ready in {segment}" if sequence.on_not_ready else f"joins {segment}")
    elif sequence.on_not_ready:
        parts.append("not ready")
    return ", ".join(parts) or "manual"


@sequences_cli.command("show")
@click.argument("sequence", required=False)
@click.option("--limit", default=100, show_default=True, help="Most enrolments listed.")
def sequences_show(sequence: str | None, limit: int) -> None:
    """Sequences with their enrolment counts; with a name, its active enrolments and next steps."""
    from automation.sequence_defs import describe
    from automation.sequence_runner import load_sequence, load_sequences
    from tracker.automation_models import Segment
    from tracker.email_models import Enrolment
    from tracker.models import Contact

    with db.engine.connect() as conn:
        if sequence is None:
            sequences = load_sequences(conn)
            if not sequences:
                click.echo("no sequences (add them under `sequences:` and `automation load`)")
                return
            segments = dict(conn.execute(select(Segment.id, Segment.name)).all())
            counts = {
                (sequence_id, status): n
                for sequence_id, status, n in conn.execute(
                    select(Enrolment.sequence_id, Enrolment.status, func.count()).group_by(
                        Enrolment.sequence_id, Enrolment.status
                    )
                )
            }
            for found in sequences:
                state = "" if found.enabled else "  (disabled)"
                click.echo(
                    f"{_safe(found.name)}\tentry: {_entry(found, segments)}\t"
                    f"{counts.get((found.id, 'active'), 0)} active, "
                    f"{counts.get((found.id, 'completed'), 0)} completed, "
                    f"{counts.get((found.id, 'exited'), 0)} exited{state}"
                )
            return
        found = load_sequence(conn, sequence)
        if found is None:
            raise click.ClickException(f"no sequence named {_safe(sequence)!r}")
        rows = conn.execute(
            select(Contact.email, Enrolment.position, Enrolment.next_at, Enrolment.id)
            .join(Contact, Contact.id == Enrolment.contact_id)
            .where(Enrolment.sequence_id == found.id, Enrolment.status == "active")
            .order_by(Enrolment.next_at, Enrolment.id)
            .limit(limit)
        ).all()
    click.echo(f"{_safe(found.name)}: {len(rows)} active enrolments shown (at most {limit})")
    for email, position, next_at, enrolment_id in rows:
        click.echo(
            f"  {_safe(email)}\tstep {position + 1}: {_safe(describe(found, position))}\t"
            f"due {_when(next_at)}\t(enrolment {enrolment_id})"
        )


@leads_cli.command("not-ready")
@click.argument("email")
@click.option("--reason", required=True, help="Why the lead is not ready (kept with the stage).")
def leads_not_ready(email: str, reason: str) -> None:
    """Send a lead back to nurture: stage `nurture`, and the sequence for its segment."""
    from automation.sales import record_action, send_to_nurture
    from tracker.models import utcnow

    if not reason.strip():
        raise click.BadParameter("say why the lead is not ready", param_hint="--reason")
    contact = _contact(email)
    now = utcnow()
    cause = f"not ready: {reason.strip()}"
    # The same change as the admin's "not ready" button, kept as a lead action without a user.
    with db.engine.begin() as conn:
        record_action(conn, contact.id, None, "not_ready", reason.strip(), now)
        nurture = send_to_nurture(conn, {"id": contact.id, "stage": contact.stage}, cause, now)
    who = _safe(contact.email)
    click.echo(f"{who} is now in stage nurture")
    if nurture.sequence is None:
        raise click.ClickException(
            "no sequence takes not-ready leads in this contact's segments: add one with "
            "`entry: {not_ready: true}` (optionally with a segment) and `automation load` it"
        )
    if nurture.enrolment_id is None:
        raise click.ClickException(
            f"not enrolled in {_safe(nurture.sequence)!r}: {_safe(nurture.refusal)}"
        )
    click.echo(f"enrolled in {_safe(nurture.sequence)!r} (enrolment {nurture.enrolment_id})")
