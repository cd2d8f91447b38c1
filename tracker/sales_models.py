"""Tables of the sales side and of reporting: notes, lead actions, opportunities, campaigns."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tracker.db import db
from tracker.models import BigId, utcnow

Money = Numeric(14, 2)


class ContactNote(db.Model):
    """Something a person wrote about a contact."""

    __tablename__ = "contact_notes"
    __table_args__ = (Index("ix_contact_notes_contact_time", "contact_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LeadAction(db.Model):
    """What sales said about a lead: accept, not ready, disqualify, convert."""

    __tablename__ = "lead_actions"
    __table_args__ = (Index("ix_lead_actions_contact_time", "contact_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(20))  # accept | not_ready | disqualify | convert
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Campaign(db.Model):
    """A marketing effort: what it matches (UTM codes, emails, sequences) and what it cost."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(40))  # email | paid_search | social | event | …
    utm_campaigns: Mapped[list[str]] = mapped_column(JSON, default=list)
    template_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    sequence_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    starts_on: Mapped[date | None] = mapped_column(Date)
    ends_on: Mapped[date | None] = mapped_column(Date)
    cost: Mapped[Decimal | None] = mapped_column(Money)  # the total, when not per period
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CampaignCost(db.Model):
    """What a campaign cost in one period (a month, say), when cost is kept per period."""

    __tablename__ = "campaign_costs"
    __table_args__ = (Index("ix_campaign_costs_campaign_start", "campaign_id", "starts_on"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    starts_on: Mapped[date] = mapped_column(Date)
    ends_on: Mapped[date] = mapped_column(Date)
    amount: Mapped[Decimal] = mapped_column(Money)


class Opportunity(db.Model):
    """A deal with a contact: amount, expected close, open / won / lost, and its campaign."""

    __tablename__ = "opportunities"
    __table_args__ = (
        Index("ix_opportunities_contact", "contact_id"),
        Index("ix_opportunities_stage_closed", "stage", "closed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # None once the contact was erased: the deal stays for revenue reports, anonymous.
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    # auto: attributed from the contact's touches; manual: someone chose it.
    campaign_source: Mapped[str] = mapped_column(String(10), default="auto")
    name: Mapped[str] = mapped_column(String(200))
    amount: Mapped[Decimal] = mapped_column(Money)
    expected_close: Mapped[date | None] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(String(10), default="open")  # open | won | lost
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RollupDay(db.Model):
    """One day's count of one dashboard metric (per key: a UTM campaign, a stage), in UTC.

    Kept current by `automation.rollups`: event counts as ingestion stores events,
    counts of contacts, stage changes and sent mail settled from their tables.
    """

    __tablename__ = "rollup_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True, default="")
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class RollupVisitor(db.Model):
    """A visitor seen (by a human event) on a day, with a campaign's code or '' for any.

    What makes distinct visitors exact over any period without reading events.
    No foreign key: the row stays, anonymous, when the visitor is erased.
    """

    __tablename__ = "rollup_visitors"

    campaign: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    visitor_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


Credit = Numeric(28, 10)
"""A share of a conversion's value: exact on PostgreSQL, ten decimals kept."""


class AttributionCredit(db.Model):
    """What one contact's conversions of a day gave a campaign, by model and metric.

    Kept by `automation.attribution_store` so that reports never attribute raw
    touches per request. Campaign 0 is "no campaign". An erased contact's rows
    stay with `contact_id` NULL: the reports keep the credit, nobody's name.
    """

    __tablename__ = "attribution_credits"
    __table_args__ = (Index("ix_attribution_credits_contact_id", "contact_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    day: Mapped[date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(String(10))
    metric: Mapped[str] = mapped_column(String(20))
    campaign_id: Mapped[int] = mapped_column(Integer)
    value: Mapped[Decimal] = mapped_column(Credit)


class AttributionDay(db.Model):
    """The sum of the credits of one day, model, metric and campaign (0: none)."""

    __tablename__ = "attribution_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(10), primary_key=True)
    metric: Mapped[str] = mapped_column(String(20), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[Decimal] = mapped_column(Credit, default=0)


class AttributionDirty(db.Model):
    """A contact whose credits must be recomputed: database triggers add them when a
    contact, stage change or opportunity is written; ingestion when a touch arrives.

    No foreign key: a contact erased meanwhile is simply found gone.
    """

    __tablename__ = "attribution_dirty"

    contact_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class AttributionState(db.Model):
    """The single row saying which campaign definitions the stored credits follow."""

    __tablename__ = "attribution_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
