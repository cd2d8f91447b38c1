"""One contact as plain JSON-ready data: who, scores, stage, owner, visitors, events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tracker.automation_models import (
    ContactTag,
    PointsEntry,
    ScoringRule,
    Segment,
    SegmentMember,
    StageChange,
)
from tracker.db import db
from tracker.models import Contact, Event, User, Visitor
from tracker.payload import normalise_email


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _columns(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: _iso(getattr(row, name)) for name in names}


def contact_report(email: str, events: int = 50) -> dict[str, Any] | None:
    """Everything known about one contact, or None when no contact has that email."""
    contact = db.session.scalar(select(Contact).where(Contact.email == normalise_email(email)))
    if contact is None:
        return None
    owner = db.session.get(User, contact.owner_id) if contact.owner_id else None
    visitors = db.session.scalars(
        select(Visitor).where(Visitor.contact_id == contact.id).order_by(Visitor.first_seen)
    ).all()
    recent = db.session.scalars(
        select(Event)
        .where(Event.contact_id == contact.id)
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(events)
    ).all()
    points = db.session.execute(
        select(PointsEntry, ScoringRule.name)
        .outerjoin(ScoringRule, ScoringRule.id == PointsEntry.rule_id)
        .where(PointsEntry.contact_id == contact.id)
        .order_by(PointsEntry.created_at.desc(), PointsEntry.id.desc())
        .limit(events)
    ).all()
    stages = db.session.scalars(
        select(StageChange)
        .where(StageChange.contact_id == contact.id)
        .order_by(StageChange.created_at, StageChange.id)
    ).all()
    return {
        "contact": _columns(
            contact,
            (
                "id",
                "email",
                "first_name",
                "last_name",
                "company",
                "traits",
                "created_at",
                "updated_at",
            ),
        ),
        "score": contact.score,
        "engagement_score": contact.engagement_score,
        "fit_score": contact.fit_score,
        "stage": contact.stage,
        "owner": {"name": owner.name, "email": owner.email} if owner else None,
        "tags": sorted(
            db.session.scalars(select(ContactTag.tag).where(ContactTag.contact_id == contact.id))
        ),
        "segments": sorted(
            db.session.scalars(
                select(Segment.name)
                .join(SegmentMember, SegmentMember.segment_id == Segment.id)
                .where(SegmentMember.contact_id == contact.id)
            )
        ),
        "stage_history": [
            _columns(c, ("from_stage", "to_stage", "cause", "created_at")) for c in stages
        ],
        "points": [
            {"rule": name, **_columns(p, ("kind", "delta", "reason", "created_at"))}
            for p, name in points
        ],
        "visitors": [
            _columns(
                v,
                (
                    "id",
                    "site_id",
                    "key",
                    "first_seen",
                    "last_seen",
                    "landing_url",
                    "referrer",
                    "utm_source",
                    "utm_medium",
                    "utm_campaign",
                    "click_id",
                    "is_bot",
                ),
            )
            for v in visitors
        ],
        "events": [
            {
                "uuid": str(e.uuid),
                **_columns(
                    e,
                    (
                        "type",
                        "occurred_at",
                        "url",
                        "title",
                        "name",
                        "target",
                        "query",
                        "seconds",
                        "props",
                        "is_bot",
                        "bot_reason",
                    ),
                ),
            }
            for e in recent
        ],
    }
