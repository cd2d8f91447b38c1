"""Tables of the email engine: templates, messages, sequences, enrolments, broadcasts, outbox."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
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


class EmailTemplate(db.Model):
    """A named email; its content lives in immutable versions."""

    __tablename__ = "email_templates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The version new messages use; no foreign key, as versions point back here.
    current_version_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TemplateVersion(db.Model):
    """One saved state of a template, CSS already inlined; never changed once written.

    `variants` is a list of {"name", "subject", "html", "text"}: subject-only
    variants share the body, whole-template variants carry their own.
    `source` is the template as the marketer wrote it, for export and editing.
    """

    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "version", name="uq_template_versions"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("email_templates.id"))
    version: Mapped[int] = mapped_column(Integer)
    sender: Mapped[str | None] = mapped_column(String(320))
    reply_to: Mapped[str | None] = mapped_column(String(320))
    preheader: Mapped[str | None] = mapped_column(Text)
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Message(db.Model):
    """One email to one contact: queued → sending → sent / failed / bounced / suppressed.

    Unique per enrolment step and per broadcast recipient, so a retried or
    duplicated job never sends twice. `links` are the URLs the click endpoint
    may redirect to, by position; the counters are filled by ingestion.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("enrolment_id", "step", name="uq_messages_enrolment_step"),
        UniqueConstraint("broadcast_id", "contact_id", name="uq_messages_broadcast_contact"),
        Index("ix_messages_status_due", "status", "due_at"),
        Index("ix_messages_contact_created", "contact_id", "created_at"),
        Index("ix_messages_template_variant", "template_id", "variant"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    template_id: Mapped[int] = mapped_column(ForeignKey("email_templates.id"))
    template_version_id: Mapped[int] = mapped_column(ForeignKey("template_versions.id"))
    variant: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(20))  # sequence | broadcast | test
    enrolment_id: Mapped[int | None] = mapped_column(ForeignKey("enrolments.id"))
    step: Mapped[int | None] = mapped_column(Integer)
    broadcast_id: Mapped[int | None] = mapped_column(ForeignKey("broadcasts.id"))
    to_addr: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    subject: Mapped[str | None] = mapped_column(String(500))
    links: Mapped[list[str] | None] = mapped_column(JSON)
    smtp_message_id: Mapped[str | None] = mapped_column(String(300), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    clicked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    opens: Mapped[int] = mapped_column(Integer, default=0)
    clicks: Mapped[int] = mapped_column(Integer, default=0)
    machine_opens: Mapped[int] = mapped_column(Integer, default=0)
    machine_clicks: Mapped[int] = mapped_column(Integer, default=0)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    bounced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Sequence(db.Model):
    """A nurture sequence: how contacts enter, its steps, and when they leave early."""

    __tablename__ = "sequences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    entry_segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"))
    on_not_ready: Mapped[bool] = mapped_column(Boolean, default=False)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    exits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    send_window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reentry: Mapped[str] = mapped_column(String(20), default="never")
    reentry_days: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Enrolment(db.Model):
    """A contact going through a sequence; at most one active per contact and sequence."""

    __tablename__ = "enrolments"
    __table_args__ = (
        Index(
            "uq_enrolments_active",
            "sequence_id",
            "contact_id",
            unique=True,
            sqlite_where=db.text("status = 'active'"),
            postgresql_where=db.text("status = 'active'"),
        ),
        Index("ix_enrolments_status_next", "status", "next_at"),
        Index("ix_enrolments_contact", "contact_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    status: Mapped[str] = mapped_column(String(20), default="active")  # active|completed|exited
    position: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cause: Mapped[str] = mapped_column(String(200))
    exit_reason: Mapped[str | None] = mapped_column(String(200))
    # No foreign key: messages point at enrolments already.
    last_message_id: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EnrolmentLog(db.Model):
    """What happened to an enrolment, step by step: entered, sent, waited, branched, left."""

    __tablename__ = "enrolment_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enrolment_id: Mapped[int] = mapped_column(ForeignKey("enrolments.id"), index=True)
    position: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Broadcast(db.Model):
    """A one-off send of a template to a segment, optionally as an A/B test first."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("email_templates.id"))
    segment_id: Mapped[int | None] = mapped_column(ForeignKey("segments.id"))
    test_percent: Mapped[int | None] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(10), default="open")  # open | click
    decide_after_seconds: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="draft")
    winner: Mapped[str | None] = mapped_column(String(40))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxMessage(db.Model):
    """A message kept instead of sent, when no SMTP_URL is set (the embedded default)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    to_addr: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(500))
    raw: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
