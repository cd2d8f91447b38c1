"""A contact's data rights: export everything known about it, or erase it.

Erasing deletes the person's rows everywhere (events, messages, points,
notes, tags, memberships, enrolments, sales actions, visitors, the contact)
in one transaction, children before parents so foreign keys hold on
PostgreSQL and SQLite alike. Opportunities stay for the revenue reports,
detached from the contact and renamed; aggregates (counts, rollups) stay.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, delete, or_, select, update

from tracker.automation_models import (
    ActionRun,
    ContactTag,
    PointsEntry,
    ScoringRule,
    Segment,
    SegmentChange,
    SegmentMember,
    StageChange,
    ThresholdState,
)
from tracker.db import db
from tracker.email_models import Enrolment, EnrolmentLog, Message, OutboxMessage, Sequence
from tracker.models import Contact, Event, User, Visitor, utcnow
from tracker.sales_models import ContactNote, LeadAction, Opportunity

ERASED_NAME = "Erased contact"
"""What an erased contact's opportunities are called afterwards."""


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _row(model: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every column of an ORM row as JSON-ready values."""
    table: Table = model.__table__
    return {c.key: _plain(getattr(model, c.key)) for c in table.columns if c.key not in skip}


def _all(query: Any) -> list[Any]:
    return list(db.session.scalars(query))


def export_contact(contact_id: int) -> dict[str, Any] | None:
    """Everything stored about one contact as JSON-ready data, or None when there is none."""
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        return None
    visitors = _all(select(Visitor).where(Visitor.contact_id == contact_id).order_by(Visitor.id))
    visitor_ids = [v.id for v in visitors]
    events = _all(
        select(Event)
        .where(_events_of(contact_id, visitor_ids))
        .order_by(Event.occurred_at, Event.id)
    )
    owner = db.session.get(User, contact.owner_id) if contact.owner_id else None
    enrolments = _all(
        select(Enrolment).where(Enrolment.contact_id == contact_id).order_by(Enrolment.id)
    )
    sequences = dict(db.session.execute(select(Sequence.id, Sequence.name)).all())
    logs = _all(
        select(EnrolmentLog)
        .where(EnrolmentLog.enrolment_id.in_([e.id for e in enrolments] or [0]))
        .order_by(EnrolmentLog.id)
    )
    rules = dict(db.session.execute(select(ScoringRule.id, ScoringRule.name)).all())
    segments = dict(db.session.execute(select(Segment.id, Segment.name)).all())
    users = dict(db.session.execute(select(User.id, User.name)).all())
    return {
        "exported_at": utcnow().isoformat(),
        "contact": _row(contact),
        "owner": {"name": owner.name, "email": owner.email} if owner else None,
        "tags": sorted(
            db.session.scalars(select(ContactTag.tag).where(ContactTag.contact_id == contact_id))
        ),
        "segments": [
            {"segment": segments.get(m.segment_id), "since": _plain(m.since)}
            for m in _all(select(SegmentMember).where(SegmentMember.contact_id == contact_id))
        ],
        "segment_changes": [
            {**_row(c, skip=("contact_id",)), "segment": segments.get(c.segment_id)}
            for c in _all(
                select(SegmentChange)
                .where(SegmentChange.contact_id == contact_id)
                .order_by(SegmentChange.id)
            )
        ],
        "visitors": [_row(v) for v in visitors],
        "events": [_row(e) for e in events],
        "points": [
            {**_row(p, skip=("contact_id",)), "rule": rules.get(p.rule_id)}
            for p in _all(
                select(PointsEntry)
                .where(PointsEntry.contact_id == contact_id)
                .order_by(PointsEntry.id)
            )
        ],
        "stage_changes": [
            _row(c, skip=("contact_id",))
            for c in _all(
                select(StageChange)
                .where(StageChange.contact_id == contact_id)
                .order_by(StageChange.id)
            )
        ],
        "messages": [
            _row(m, skip=("contact_id", "links"))
            for m in _all(
                select(Message).where(Message.contact_id == contact_id).order_by(Message.id)
            )
        ],
        "enrolments": [
            {
                **_row(e, skip=("contact_id", "lease_until")),
                "sequence": sequences.get(e.sequence_id),
                "log": [_row(log) for log in logs if log.enrolment_id == e.id],
            }
            for e in enrolments
        ],
        "notes": [
            {**_row(n, skip=("contact_id",)), "author": users.get(n.author_id)}
            for n in _all(
                select(ContactNote)
                .where(ContactNote.contact_id == contact_id)
                .order_by(ContactNote.id)
            )
        ],
        "opportunities": [
            {**_row(o, skip=("contact_id",)), "owner": users.get(o.owner_id)}
            for o in _all(
                select(Opportunity)
                .where(Opportunity.contact_id == contact_id)
                .order_by(Opportunity.id)
            )
        ],
        "lead_actions": [
            {**_row(a, skip=("contact_id",)), "user": users.get(a.user_id)}
            for a in _all(
                select(LeadAction)
                .where(LeadAction.contact_id == contact_id)
                .order_by(LeadAction.id)
            )
        ],
    }


def _events_of(contact_id: int, visitor_ids: list[int]) -> Any:
    """The contact's events: attributed to it, or made by one of its browsers before it
    identified itself."""
    if not visitor_ids:
        return Event.contact_id == contact_id
    return or_(Event.contact_id == contact_id, Event.visitor_id.in_(visitor_ids))


def erase_contact(contact_id: int) -> dict[str, int] | None:
    """Delete one contact and everything about it; return rows removed per table.

    None when there is no such contact. Commits.
    """
    from automation.attribution_store import forget, unmark

    contact = db.session.get(Contact, contact_id)
    if contact is None:
        return None
    email = contact.email
    session = db.session
    # Campaign credit stays in the reports, anonymous; computed first if it was pending.
    forget(session.connection(), contact_id)
    visitor_ids = list(session.scalars(select(Visitor.id).where(Visitor.contact_id == contact_id)))
    event_ids = select(Event.id).where(_events_of(contact_id, visitor_ids)).scalar_subquery()
    message_ids = select(Message.id).where(Message.contact_id == contact_id).scalar_subquery()
    enrolment_ids = select(Enrolment.id).where(Enrolment.contact_id == contact_id).scalar_subquery()
    counts: dict[str, int] = {}

    def remove(name: str, statement: Any) -> None:
        counts[name] = counts.get(name, 0) + (session.execute(statement).rowcount or 0)

    # Children first: points name events, messages name enrolments, events name visitors.
    remove(
        "points_log",
        delete(PointsEntry).where(
            or_(PointsEntry.contact_id == contact_id, PointsEntry.event_id.in_(event_ids))
        ),
    )
    remove("events", delete(Event).where(_events_of(contact_id, visitor_ids)))
    # Mail kept instead of sent holds the address and the body: it goes too.
    remove(
        "outbox",
        delete(OutboxMessage).where(
            or_(OutboxMessage.message_id.in_(message_ids), OutboxMessage.to_addr == email)
        ),
    )
    remove("messages", delete(Message).where(Message.contact_id == contact_id))
    remove(
        "enrolment_log", delete(EnrolmentLog).where(EnrolmentLog.enrolment_id.in_(enrolment_ids))
    )
    remove("enrolments", delete(Enrolment).where(Enrolment.contact_id == contact_id))
    for model in (
        ActionRun,
        ThresholdState,
        StageChange,
        ContactTag,
        SegmentMember,
        SegmentChange,
        ContactNote,
        LeadAction,
    ):
        remove(model.__tablename__, delete(model).where(model.contact_id == contact_id))
    # Revenue stays in the reports; the deal no longer says whose it was.
    counts["opportunities_anonymised"] = (
        session.execute(
            update(Opportunity)
            .where(Opportunity.contact_id == contact_id)
            .values(contact_id=None, name=ERASED_NAME, updated_at=utcnow())
        ).rowcount
        or 0
    )
    remove("visitors", delete(Visitor).where(Visitor.contact_id == contact_id))
    remove("contacts", delete(Contact).where(Contact.id == contact_id))
    unmark(session.connection(), contact_id)
    session.commit()
    return counts
