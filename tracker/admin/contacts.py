"""Contacts in the admin: the searchable list and its CSV, the 360° page, notes, export, erase."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Response, abort, redirect, render_template, request, url_for
from sqlalchemy import select

from tracker.admin import bp
from tracker.admin.csv_export import csv_response, today, wants_csv
from tracker.auth import current_user, roles
from tracker.automation_models import ContactTag, Segment, SegmentMember
from tracker.contact_search import ContactFilters, export_contacts, parse_filters, search_contacts
from tracker.contact_timeline import contact_timeline
from tracker.db import db
from tracker.models import Contact, User, Visitor
from tracker.privacy import erase_contact, export_contact
from tracker.sales_models import ContactNote

MAX_NOTE = 5000
"""Longest note, in characters."""


def _stages() -> tuple[str, ...]:
    from automation.thresholds import STAGES

    return STAGES


@bp.get("/contacts")
@roles("admin", "marketer", "sales")
def contacts() -> Response:
    """Search and filter contacts, most recently active first; `?format=csv`: all of them."""
    parsed = parse_filters(request.args, _stages())
    if wants_csv() and not parsed.errors:
        return _contacts_csv(parsed.filters)
    page = search_contacts(parsed.filters)
    users = db.session.execute(select(User.id, User.name).order_by(User.name)).all()
    segments = db.session.execute(select(Segment.id, Segment.name).order_by(Segment.name)).all()
    body = render_template(
        "admin/contacts/list.html",
        filters=parsed.filters,
        raw=request.args,
        errors=parsed.errors,
        page=page,
        stages=_stages(),
        users=users,
        segments=segments,
        erased=request.args.get("erased") == "1",
    )
    return Response(body, 400 if parsed.errors else 200)


CSV_COLUMNS = (
    "email",
    "first_name",
    "last_name",
    "company",
    "stage",
    "owner",
    "engagement_score",
    "fit_score",
    "score",
    "segments",
    "created_at",
    "last_seen_at",
)
"""The contacts CSV's columns (times in UTC; segments separated by "; ")."""


def _contacts_csv(filters: ContactFilters) -> Response:
    """Every contact the filters match, oldest first, streamed a chunk at a time."""
    rows = (
        [
            c.email,
            c.first_name,
            c.last_name,
            c.company,
            c.stage,
            c.owner,
            c.engagement_score,
            c.fit_score,
            c.score,
            "; ".join(c.segments),
            c.created_at,
            c.last_seen,
        ]
        for chunk in export_contacts(filters)
        for c in chunk
    )
    return csv_response(f"contacts_{today()}", CSV_COLUMNS, rows)


def _header(contact: Contact) -> dict[str, Any]:
    """What the top of the contact page shows besides the contact's own columns."""
    owner = db.session.get(User, contact.owner_id) if contact.owner_id else None
    tags = sorted(
        db.session.scalars(select(ContactTag.tag).where(ContactTag.contact_id == contact.id))
    )
    segments = sorted(
        db.session.scalars(
            select(Segment.name)
            .join(SegmentMember, SegmentMember.segment_id == Segment.id)
            .where(SegmentMember.contact_id == contact.id)
        )
    )
    first_touch = db.session.scalar(
        select(Visitor)
        .where(Visitor.contact_id == contact.id)
        .order_by(Visitor.first_seen)
        .limit(1)
    )
    return {"owner": owner, "tags": tags, "segments": segments, "first_touch": first_touch}


def _contact_or_404(contact_id: int) -> Contact:
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        abort(404)
    return contact


def _parse_before(raw: str | None) -> datetime | None:
    """The "show more" cursor; a wrong one is the visitor's mistake (400), never a 500."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        abort(400, f"'before' must be a time like 2025-01-31T12:00:00+00:00, not {raw[:40]!r}")
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _contact_page(
    contact: Contact, status: int = 200, errors: dict[str, str] | None = None, **form: str
) -> Response:
    before = _parse_before(request.args.get("before"))
    body = render_template(
        "admin/contacts/show.html",
        contact=contact,
        timeline=contact_timeline(contact.id, before),
        before=before,
        errors=errors or {},
        form=form,
        **_header(contact),
    )
    return Response(body, status)


@bp.get("/contacts/<int:contact_id>")
@roles("admin", "marketer", "sales")
def contact(contact_id: int) -> Response:
    """One contact: who, scores, stage, owner, tags, segments, and the timeline."""
    return _contact_page(_contact_or_404(contact_id))


@bp.post("/contacts/<int:contact_id>/notes")
@roles("admin", "marketer", "sales")
def add_note(contact_id: int) -> Response:
    """Write a note on a contact; it shows in the timeline."""
    contact = _contact_or_404(contact_id)
    body = (request.form.get("body") or "").strip()
    error = None
    if not body:
        error = "write something: the note is empty"
    elif len(body) > MAX_NOTE:
        error = f"a note is at most {MAX_NOTE} characters; this one has {len(body)}"
    if error:
        return _contact_page(contact, 400, {"body": error}, body=body)
    db.session.add(ContactNote(contact_id=contact.id, author_id=current_user().id, body=body))
    db.session.commit()
    return redirect(url_for("admin.contact", contact_id=contact.id) + "#timeline")


@bp.get("/contacts/<int:contact_id>/export.json")
@roles("admin")
def export(contact_id: int) -> Response:
    """Everything known about a contact, as a JSON download."""
    data = export_contact(contact_id)
    if data is None:
        abort(404)
    response = Response(json.dumps(data, indent=2, ensure_ascii=False), mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="contact-{contact_id}.json"'
    return response


@bp.post("/contacts/<int:contact_id>/erase")
@roles("admin")
def erase(contact_id: int) -> Response:
    """Erase a contact for good, once its email address is typed again."""
    contact = _contact_or_404(contact_id)
    typed = (request.form.get("confirm") or "").strip().lower()
    if typed != contact.email.lower():
        error = "type the contact's email address exactly to confirm the erasure"
        return _contact_page(contact, 400, {"confirm": error})
    erase_contact(contact.id)
    return redirect(url_for("admin.contacts", erased=1))
