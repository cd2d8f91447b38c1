"""The closed-loop reports: campaign ROI, email performance, score calibration.

This module does the I/O: the ROI table sums stored credits
(`automation.attribution_store`) and daily rollups; email performance and
calibration are a handful of grouped queries over the tables; the pure maths is
`automation.report_tables`. Periods are whole days in UTC, both ends included;
no end means no limit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select, true

from automation import attribution_store, rollups
from automation.attribution import CampaignIndex
from automation.report_tables import (
    CostPeriod,
    band_label,
    band_of,
    campaign_cost,
    ratio,
    roi,
)
from tracker.automation_models import Segment, StageChange, Threshold
from tracker.db import db
from tracker.email_models import Broadcast, EmailTemplate, Enrolment, Message, Sequence
from tracker.models import Contact, as_utc
from tracker.sales_models import Campaign, CampaignCost, Opportunity

METRICS = ("leads", "mqls", "converted", "opportunities", "revenue")
"""What attribution credits, per campaign."""

MQL_AFTER_CLICK = timedelta(days=7)
"""A click is credited with an MQL that follows it within this long."""

REACHED_OPPORTUNITY = ("opportunity", "customer")
"""Stages that mean a contact became an opportunity at some point."""


@dataclass(frozen=True)
class Period:
    """Whole days, both ends included; None is open."""

    starts_on: date | None = None
    ends_on: date | None = None

    def __post_init__(self) -> None:
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise ValueError("the period ends before it starts: swap the dates")

    def where(self, column: Any) -> ColumnElement[bool]:
        """SQL: `column` (a timestamp) falls in the period."""
        conditions = []
        if self.starts_on:
            conditions.append(column >= datetime.combine(self.starts_on, time(), UTC))
        if self.ends_on and self.ends_on < date.max:
            following = datetime.combine(self.ends_on + timedelta(days=1), time(), UTC)
            conditions.append(column < following)
        return and_(true(), *conditions)


# --- campaign ROI ---------------------------------------------------------------------------


@dataclass
class RoiRow:
    """One campaign's line (campaign_id None: what no campaign earned)."""

    campaign_id: int | None
    name: str
    channel: str
    visitors: int = 0
    leads: Fraction = Fraction(0)
    mqls: Fraction = Fraction(0)
    converted: Fraction = Fraction(0)
    opportunities: Fraction = Fraction(0)
    revenue: Fraction = Fraction(0)
    cost: Fraction = Fraction(0)

    @property
    def cost_per_lead(self) -> Fraction | None:
        """Cost over leads; None (a dash) with no leads."""
        return ratio(self.cost, self.leads)

    @property
    def cost_per_opportunity(self) -> Fraction | None:
        """Cost over opportunities; None with none."""
        return ratio(self.cost, self.opportunities)

    @property
    def roi(self) -> Fraction | None:
        """(revenue - cost) / cost; None without a cost."""
        return roi(self.revenue, self.cost)


@dataclass
class RoiReport:
    """The campaign ROI table for one model and period."""

    model: str
    period: Period
    rows: list[RoiRow] = field(default_factory=list)
    waiting: int = 0
    """Contacts whose credit is still being recomputed (the figures will move)."""


ROI_COLUMNS = (
    "campaign",
    "channel",
    "visitors",
    "leads",
    "mqls",
    "converted_leads",
    "opportunities",
    "revenue",
    "cost",
    "cost_per_lead",
    "cost_per_opportunity",
    "roi",
)
"""The ROI table's columns, as the CSV names them."""


def roi_cells(row: RoiRow) -> list[Any]:
    """One ROI row's values in `ROI_COLUMNS` order."""
    return [
        row.name,
        row.channel,
        row.visitors,
        row.leads,
        row.mqls,
        row.converted,
        row.opportunities,
        row.revenue,
        row.cost,
        row.cost_per_lead,
        row.cost_per_opportunity,
        row.roi,
    ]


def roi_report(model: str, period: Period) -> RoiReport:
    """Per campaign: visitors, attributed leads, MQLs, conversions, deals, revenue; cost, ROI."""
    waiting = attribution_store.catch_up(db.engine)
    campaigns = list(db.session.scalars(select(Campaign).order_by(Campaign.name, Campaign.id)))
    index = CampaignIndex.build(attribution_store.campaign_keys(db.session.connection()))
    costs: dict[int, list[CostPeriod]] = defaultdict(list)
    for row in db.session.execute(
        select(
            CampaignCost.campaign_id,
            CampaignCost.starts_on,
            CampaignCost.ends_on,
            CampaignCost.amount,
        )
    ):
        costs[row.campaign_id].append(CostPeriod(row.starts_on, row.ends_on, row.amount))

    conn = db.session.connection()
    totals = attribution_store.totals(conn, model, period.starts_on, period.ends_on)
    visitors = _visitors_per_campaign(index, period)

    rows = []
    for campaign in campaigns:
        row = RoiRow(campaign.id, campaign.name, campaign.channel)
        row.visitors = visitors.get(campaign.id, 0)
        row.cost = campaign_cost(
            campaign.cost,
            campaign.starts_on,
            campaign.ends_on,
            costs.get(campaign.id, ()),
            period.starts_on,
            period.ends_on,
        )
        rows.append(row)
    nobody = RoiRow(None, "(no campaign)", "")
    by_id: dict[int | None, RoiRow] = {row.campaign_id: row for row in rows}
    by_id[None] = nobody
    for (campaign_id, metric), value in totals.items():
        target = by_id.get(campaign_id, nobody)
        setattr(target, metric, getattr(target, metric) + value)
    if any(getattr(nobody, metric) for metric in METRICS):
        rows.append(nobody)
    return RoiReport(model, period, rows, waiting)


def _visitors_per_campaign(index: CampaignIndex, period: Period) -> dict[int, int]:
    """Distinct human visitors whose events carried one of a campaign's codes in the period
    (from the daily rollups: a first touch is an event too)."""
    codes: dict[int, set[str]] = defaultdict(set)
    for code, campaign_id in index.by_code.items():
        codes[campaign_id].add(code)
    conn = db.session.connection()
    first, last = period.starts_on or date.min, period.ends_on or date.max
    return {
        campaign_id: rollups.distinct_visitors(conn, first, last, mine)
        for campaign_id, mine in codes.items()
    }


# --- email performance ----------------------------------------------------------------------

EMAIL_COLUMNS = (
    "sent",
    "delivered",
    "human_opened",
    "human_opens",
    "machine_opens",
    "human_clicked",
    "human_clicks",
    "machine_clicks",
    "unsubscribes",
    "bounces",
    "mqls",
)
"""The email table's counters, as the CSV names them."""

NO_SEGMENT = "(no segment)"
"""The segment row of messages sent to no segment: sequences entered otherwise, tests."""

SEGMENT_ENTRY = "joined segment %"
"""The cause of an enrolment made by joining the sequence's entry segment (LIKE pattern).

`automation.sequence_runner.enrol_joined` writes it; threshold actions, not-ready
leads and manual enrolments write other causes.
"""


@dataclass
class EmailRow:
    """One group of messages: a template variant, a sequence step's template variant, a segment."""

    template: str
    variant: str
    sequence: str = ""
    step: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    segment: str = ""


@dataclass
class EmailReport:
    """Email performance per template and variant, per sequence step, and per segment."""

    period: Period
    by_template: list[EmailRow]
    by_step: list[EmailRow]
    by_segment: list[EmailRow] = field(default_factory=list)


def _message_segments() -> Any:
    """Each message's segment id: its broadcast's target segment, or for a sequence message
    the sequence's entry segment when the contact entered by joining it; else NULL."""
    segment_id = case(
        (Message.broadcast_id.is_not(None), Broadcast.segment_id),
        (Enrolment.cause.like(SEGMENT_ENTRY), Sequence.entry_segment_id),
        else_=None,
    )
    # A subquery, so the groups below use a plain column (PostgreSQL will not match a
    # CASE with bound parameters in SELECT to the one in GROUP BY).
    return (
        select(Message.id.label("message_id"), segment_id.label("segment_id"))
        .outerjoin(Broadcast, Broadcast.id == Message.broadcast_id)
        .outerjoin(Enrolment, Enrolment.id == Message.enrolment_id)
        .outerjoin(Sequence, Sequence.id == Enrolment.sequence_id)
        .subquery()
    )


def email_report(period: Period) -> EmailReport:
    """Sent (tried), delivered, human/machine opens and clicks, unsubscribes, bounces, MQLs."""
    tried = func.coalesce(Message.sent_at, Message.bounced_at)
    counters = (
        func.count(Message.id),
        func.count(Message.bounced_at),
        func.count(Message.opened_at),
        func.coalesce(func.sum(Message.opens), 0),
        func.coalesce(func.sum(Message.machine_opens), 0),
        func.count(Message.clicked_at),
        func.coalesce(func.sum(Message.clicks), 0),
        func.coalesce(func.sum(Message.machine_clicks), 0),
        func.count(Message.unsubscribed_at),
    )
    template_key = (Message.template_id, EmailTemplate.name, Message.variant)
    step_key = (Enrolment.sequence_id, Sequence.name, Message.step, *template_key)
    base = (
        select()
        .select_from(Message)
        .join(EmailTemplate, EmailTemplate.id == Message.template_id)
        .where(tried.is_not(None), period.where(tried))
    )
    by_template = base.add_columns(*template_key, *counters).group_by(*template_key)
    by_step = (
        base.add_columns(*step_key, *counters)
        .join(Enrolment, Enrolment.id == Message.enrolment_id)
        .join(Sequence, Sequence.id == Enrolment.sequence_id)
        .group_by(*step_key)
    )
    segments = _message_segments()
    segment_key = (segments.c.segment_id, Segment.name)
    by_segment = (
        base.add_columns(*segment_key, *counters)
        .join(segments, segments.c.message_id == Message.id)
        .outerjoin(Segment, Segment.id == segments.c.segment_id)
        .group_by(*segment_key)
    )
    mqls = _mqls_after_clicks(period)

    widths = {"template": len(template_key), "step": len(step_key), "segment": len(segment_key)}

    def row_of(values: Any, group: str) -> EmailRow:
        """A row from a query's values: the group's key columns, then the counters."""
        width = widths[group]
        key, numbers = values[:width], [int(n) for n in values[width:]]
        sent, bounced, opened, opens, m_opens, clicked, clicks, m_clicks, unsub = numbers
        counts = dict(
            zip(
                EMAIL_COLUMNS,
                (
                    sent,
                    sent - bounced,
                    opened,
                    opens,
                    m_opens,
                    clicked,
                    clicks,
                    m_clicks,
                    unsub,
                    bounced,
                ),
                strict=False,
            )
        )
        if group == "segment":
            segment_id, segment = key
            counts["mqls"] = len(mqls["segment"].get((segment_id,), ()))
            return EmailRow("", "", counts=counts, segment=segment or NO_SEGMENT)
        if group == "template":
            template_id, template, variant = key
            counts["mqls"] = len(mqls["template"].get((template_id, variant), ()))
            return EmailRow(template, variant, counts=counts)
        sequence_id, sequence, step, template_id, template, variant = key
        counts["mqls"] = len(mqls["step"].get((sequence_id, step, template_id, variant), ()))
        return EmailRow(template, variant, sequence, step, counts)

    templates = [row_of(r, "template") for r in db.session.execute(by_template)]
    steps = [row_of(r, "step") for r in db.session.execute(by_step)]
    per_segment = [row_of(r, "segment") for r in db.session.execute(by_segment)]
    templates.sort(key=lambda r: (r.template, r.variant))
    steps.sort(key=lambda r: (r.sequence, r.step or 0, r.template, r.variant))
    # Named segments alphabetically, then the messages sent to none.
    per_segment.sort(key=lambda r: (r.segment == NO_SEGMENT, r.segment.casefold()))
    return EmailReport(period, templates, steps, per_segment)


def _mqls_after_clicks(period: Period) -> dict[str, dict[tuple[Any, ...], set[int]]]:
    """Contacts who became MQL within `MQL_AFTER_CLICK` of a human click, per message group."""
    tried = func.coalesce(Message.sent_at, Message.bounced_at)
    segments = _message_segments()
    query = (
        select(
            Message.template_id,
            Message.variant,
            Enrolment.sequence_id,
            Message.step,
            segments.c.segment_id,
            Message.contact_id,
            Message.clicked_at,
            StageChange.created_at,
        )
        .join(
            StageChange,
            and_(
                StageChange.contact_id == Message.contact_id,
                StageChange.to_stage == "mql",
                StageChange.created_at >= Message.clicked_at,
            ),
        )
        .outerjoin(Enrolment, Enrolment.id == Message.enrolment_id)
        .join(segments, segments.c.message_id == Message.id)
        .where(Message.clicked_at.is_not(None), tried.is_not(None), period.where(tried))
    )
    found: dict[str, dict[tuple[Any, ...], set[int]]] = {"template": {}, "step": {}, "segment": {}}
    for (
        template_id,
        variant,
        sequence_id,
        step,
        segment_id,
        contact_id,
        clicked,
        became,
    ) in db.session.execute(query):
        if as_utc(became) - as_utc(clicked) > MQL_AFTER_CLICK:
            continue
        found["template"].setdefault((template_id, variant), set()).add(contact_id)
        found["segment"].setdefault((segment_id,), set()).add(contact_id)
        if sequence_id is not None:
            found["step"].setdefault((sequence_id, step, template_id, variant), set()).add(
                contact_id
            )
    return found


# --- score calibration ----------------------------------------------------------------------

CALIBRATION_COLUMNS = ("band", "contacts", "mqls", "opportunities", "opportunity_rate")
"""The calibration table's columns, as the CSV names them."""


@dataclass
class BandRow:
    """Contacts whose current total score falls in one band, and how many went further."""

    low: int
    width: int
    contacts: int = 0
    mqls: int = 0
    opportunities: int = 0
    thresholds: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """ "10-19"."""
        return band_label(self.low, self.width)

    @property
    def opportunity_rate(self) -> Fraction | None:
        """Share of the band's contacts that became an opportunity."""
        return ratio(self.opportunities, self.contacts)


def calibration_report(period: Period, width: int = 10) -> list[BandRow]:
    """Conversion to opportunity by band of the contact's current total score.

    Contacts created in the period; a contact counts as converted when it ever
    changed to stage opportunity, has an opportunity, or stands at opportunity or
    customer now. Thresholds on the total score are shown in their band.
    """
    reached = or_(
        Contact.stage.in_(REACHED_OPPORTUNITY),
        select(StageChange.id)
        .where(StageChange.contact_id == Contact.id, StageChange.to_stage == "opportunity")
        .exists(),
        select(Opportunity.id).where(Opportunity.contact_id == Contact.id).exists(),
    )
    was_mql = (
        select(StageChange.id)
        .where(StageChange.contact_id == Contact.id, StageChange.to_stage == "mql")
        .exists()
    )
    converted = case((reached, 1), else_=0)
    mql = case((or_(was_mql, reached), 1), else_=0)
    query = (
        select(Contact.score, func.count(), func.sum(mql), func.sum(converted))
        .where(period.where(Contact.created_at))
        .group_by(Contact.score)
    )
    bands: dict[int, BandRow] = {}
    for score, contacts, mqls, opportunities in db.session.execute(query):
        low = band_of(int(score or 0), width)
        row = bands.setdefault(low, BandRow(low, width))
        row.contacts += int(contacts)
        row.mqls += int(mqls or 0)
        row.opportunities += int(opportunities or 0)
    thresholds = select(Threshold.name, Threshold.minimum).where(
        Threshold.score == "total", Threshold.enabled.is_(True)
    )
    for name, minimum in db.session.execute(thresholds):
        low = band_of(minimum, width)
        bands.setdefault(low, BandRow(low, width)).thresholds.append(f"{name} ({minimum})")
    if bands:
        # Every band between the lowest and highest, so gaps show as empty rows.
        for low in range(min(bands), max(bands) + width, width):
            bands.setdefault(low, BandRow(low, width))
    return [bands[low] for low in sorted(bands)]


def calibration_cells(row: BandRow) -> list[Any]:
    """One band's values in `CALIBRATION_COLUMNS` order."""
    return [row.label, row.contacts, row.mqls, row.opportunities, row.opportunity_rate]
