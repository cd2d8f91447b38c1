"""Tables the automation engines read and write: rules, points, thresholds, stages, tags."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from tracker.db import db
from tracker.models import BigId, utcnow


class ScoringRule(db.Model):
    """Points for an event (engagement) or for a contact attribute (fit)."""

    __tablename__ = "scoring_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # engagement | fit
    event_type: Mapped[str | None] = mapped_column(String(40))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"))
    conditions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    points: Mapped[int] = mapped_column(Integer)
    max_times: Mapped[int | None] = mapped_column(Integer)
    once_per_seconds: Mapped[int | None] = mapped_column(Integer)
    first_time_only: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DecayPolicy(db.Model):
    """How engagement points fade for a site's contacts (or everyone's, without a site)."""

    __tablename__ = "decay_policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"))
    mode: Mapped[str] = mapped_column(String(20))  # expire | percent
    window_days: Mapped[int | None] = mapped_column(Integer)
    percent: Mapped[int | None] = mapped_column(Integer)
    every_days: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PointsEntry(db.Model):
    """One change of a contact's score: the audit trail and the score timeline."""

    __tablename__ = "points_log"
    __table_args__ = (
        Index("ix_points_log_contact_rule", "contact_id", "rule_id"),
        Index("ix_points_log_contact_time", "contact_id", "created_at"),
        # One award per rule and event: a re-scored batch cannot award twice.
        UniqueConstraint("rule_id", "event_id", name="uq_points_log_rule_event"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_rules.id"))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    kind: Mapped[str] = mapped_column(String(20))  # engagement | fit
    delta: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(40))  # rule | fit | expired | decay
    expired: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Threshold(db.Model):
    """A score line; crossing it upwards fires the actions once."""

    __tablename__ = "thresholds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    score: Mapped[str] = mapped_column(String(20))  # engagement | fit | total
    minimum: Mapped[int] = mapped_column(Integer)
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"))
    stage: Mapped[str | None] = mapped_column(String(20))
    refire: Mapped[bool] = mapped_column(Boolean, default=False)
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ThresholdState(db.Model):
    """Where a contact stands against a threshold: above it or not, and how often it fired."""

    __tablename__ = "threshold_states"

    threshold_id: Mapped[int] = mapped_column(ForeignKey("thresholds.id"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), primary_key=True)
    above: Mapped[bool] = mapped_column(Boolean)
    fired: Mapped[int] = mapped_column(Integer, default=0)
    last_fired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ActionRun(db.Model):
    """One action of one firing: what makes every action happen exactly once."""

    __tablename__ = "action_runs"
    __table_args__ = (
        UniqueConstraint(
            "threshold_id",
            "contact_id",
            "firing",
            "position",
            name="uq_action_runs_firing_position",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    threshold_id: Mapped[int] = mapped_column(ForeignKey("thresholds.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    firing: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StageChange(db.Model):
    """A contact's lifecycle stage moved: from where, to where, when and why."""

    __tablename__ = "stage_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    from_stage: Mapped[str | None] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    cause: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ContactTag(db.Model):
    """A label on a contact, set by actions or by hand."""

    __tablename__ = "contact_tags"

    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Webhook(db.Model):
    """An HTTP endpoint actions call; disabled after repeated failures."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(200))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Segment(db.Model):
    """A rule tree over contacts; members are stored so sequences can react to joins."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    rebuilt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SegmentMember(db.Model):
    """A contact in a segment, since when."""

    __tablename__ = "segment_members"
    __table_args__ = (Index("ix_segment_members_contact", "contact_id"),)

    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), primary_key=True)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SegmentChange(db.Model):
    """A contact joined or left a segment."""

    __tablename__ = "segment_changes"
    __table_args__ = (Index("ix_segment_changes_segment_time", "segment_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    change: Mapped[str] = mapped_column(String(10))  # join | leave
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
