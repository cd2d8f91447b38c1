"""The dashboard: the funnel, campaign ROI, email performance and follow-up health at a glance.

Counts come from the daily rollups (`automation.rollups`), never from raw events;
medians between stages from stage_changes. Sales see the funnel and their own
follow-up health; marketers and admins see everything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from flask import Response, current_app, render_template, request
from sqlalchemy import func, select

from tracker.admin import bp
from tracker.auth import current_user, roles
from tracker.automation_models import StageChange
from tracker.db import db
from tracker.models import Contact, utcnow
from tracker.sales_models import Campaign, CampaignCost, Opportunity

PERIODS = {7: "Last 7 days", 30: "Last 30 days", 90: "Last 90 days", 365: "Last 365 days"}
"""The periods the page offers, in days up to and including today (UTC)."""

DEFAULT_DAYS = 30
TOP_CAMPAIGNS = 5
"""Campaigns the ROI summary lists, by revenue."""


def funnel_counts(first: date, last: date) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Step counts for first..last, and the daily visitors and leads for the chart."""
    from automation import rollups

    conn = db.session.connection()
    counters = rollups.daily(conn, first, last)
    counts: dict[str, int] = defaultdict(int)
    per_day: dict[str, dict[date, int]] = {"visitors": {}, "leads": {}}
    for (day, metric, key), value in counters.items():
        if metric == rollups.LEADS:
            counts["lead"] += value
            per_day["leads"][day] = value
        elif metric == rollups.STAGE:
            counts[key] += value
        elif metric == rollups.VISITORS:
            per_day["visitors"][day] = value
        elif metric in (rollups.EMAILS_SENT, rollups.EMAIL_OPENS, rollups.EMAIL_CLICKS):
            counts[metric] += value
    counts["visitors"] = rollups.distinct_visitors(conn, first, last)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    series = {name: [values.get(day, 0) for day in days] for name, values in per_day.items()}
    return dict(counts), series


def _in_days(column: Any) -> Any:
    """SQL: a timestamp as days since the Unix epoch (no datetime parsed per row in Python)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", column) / 86400
    return func.julianday(column) - 2440587.5


def journeys(start: datetime, end: datetime) -> dict[int, dict[str, float]]:
    """First time at each stage (in days) of the contacts that changed stage in [start, end)."""
    from automation.funnel import STAGES

    later = STAGES[1:]
    movers = db.session.scalars(
        select(StageChange.contact_id)
        .where(
            StageChange.to_stage.in_(later),
            StageChange.created_at >= start,
            StageChange.created_at < end,
        )
        .distinct()
    ).all()
    ids = sorted(movers)
    found: dict[int, dict[str, float]] = defaultdict(dict)
    # In chunks of ids: each an index lookup, where one IN (subquery) can scan them all.
    for chunk in (ids[i : i + 1000] for i in range(0, len(ids), 1000)):
        first_times = (
            select(
                StageChange.contact_id,
                StageChange.to_stage,
                _in_days(func.min(StageChange.created_at)),
            )
            .where(StageChange.contact_id.in_(chunk), StageChange.to_stage.in_(later))
            .group_by(StageChange.contact_id, StageChange.to_stage)
        )
        for contact_id, stage, days in db.session.execute(first_times):
            found[contact_id][stage] = float(days)
        created = select(Contact.id, _in_days(Contact.created_at)).where(Contact.id.in_(chunk))
        for contact_id, days in db.session.execute(created):
            found[contact_id]["lead"] = float(days)
    return found


@dataclass
class CampaignLine:
    """One campaign's line in the dashboard's ROI summary."""

    campaign_id: int
    name: str
    visitors: int = 0
    leads: int = 0
    opportunities: int = 0
    revenue: Decimal = Decimal(0)
    cost: Fraction = Fraction(0)

    @property
    def roi(self) -> Fraction | None:
        """(revenue - cost) / cost; None without a cost."""
        from automation.report_tables import roi

        return roi(Fraction(self.revenue), self.cost)


def roi_summary(first: date, last: date) -> list[CampaignLine]:
    """The campaigns that brought the most revenue in the period, from rollups and deals.

    Cheaper than the ROI report's attribution at millions of events: visitors from
    the rollups, leads by the campaign of their first visit, deals and revenue by
    each deal's own campaign (set automatically when it was opened, or by hand).
    """
    from automation import rollups
    from automation.report_tables import CostPeriod, campaign_cost

    conn = db.session.connection()
    start, end = rollups.bounds(first, last)
    campaigns = db.session.scalars(select(Campaign).order_by(Campaign.name, Campaign.id)).all()
    periods: dict[int, list[CostPeriod]] = defaultdict(list)
    for cost in db.session.scalars(select(CampaignCost)):
        periods[cost.campaign_id].append(CostPeriod(cost.starts_on, cost.ends_on, cost.amount))
    counters = rollups.daily(conn, first, last)
    leads: dict[str, int] = defaultdict(int)
    for (_, metric, key), value in counters.items():
        if metric == rollups.CAMPAIGN_LEADS:
            leads[key] += value
    deals = dict(
        db.session.execute(
            select(Opportunity.campaign_id, func.count())
            .where(Opportunity.created_at >= start, Opportunity.created_at < end)
            .group_by(Opportunity.campaign_id)
        ).all()
    )
    revenue = dict(
        db.session.execute(
            select(Opportunity.campaign_id, func.sum(Opportunity.amount))
            .where(
                Opportunity.stage == "won",
                Opportunity.closed_at >= start,
                Opportunity.closed_at < end,
            )
            .group_by(Opportunity.campaign_id)
        ).all()
    )
    lines = []
    for campaign in campaigns:
        codes = sorted({rollups.campaign_code(c) for c in campaign.utm_campaigns or ()} - {""})
        line = CampaignLine(campaign.id, campaign.name)
        line.visitors = rollups.distinct_visitors(conn, first, last, codes) if codes else 0
        line.leads = sum(leads.get(code, 0) for code in codes)
        line.opportunities = int(deals.get(campaign.id, 0))
        line.revenue = Decimal(revenue.get(campaign.id) or 0)
        line.cost = campaign_cost(
            campaign.cost, campaign.starts_on, campaign.ends_on, periods[campaign.id], first, last
        )
        lines.append(line)
    lines.sort(key=lambda line: (-line.revenue, -line.leads, line.name.casefold()))
    return lines[:TOP_CAMPAIGNS]


def follow_up(owner_id: int | None) -> Any:
    """Follow-up health over the last WINDOW_DAYS: everyone's, or one owner's."""
    from automation.follow_up import WINDOW_DAYS, follow_up_health
    from tracker.admin.sales import health_pairs

    now = utcnow()
    pairs = health_pairs(now - timedelta(days=WINDOW_DAYS))
    mine = [(m, a) for _, owner, m, a in pairs if owner_id is None or owner == owner_id]
    return follow_up_health(mine, now, current_app.config["FOLLOW_UP_HOURS"])


def _days_arg() -> tuple[int, str | None]:
    text = request.args.get("days", "").strip()[:10]
    if not text:
        return DEFAULT_DAYS, None
    if text.isdigit() and int(text) in PERIODS:
        return int(text), None
    choices = ", ".join(str(days) for days in PERIODS)
    return DEFAULT_DAYS, f"{text!r} is not a period the dashboard offers: choose {choices} days."


@bp.get("/dashboard")
@roles("marketer", "sales")
def dashboard() -> Response:
    """The funnel with rates and median days, campaign ROI, email and follow-up at a glance."""
    from automation.funnel import funnel, in_days, stage_medians
    from automation.report_tables import human, percent
    from automation.rollups import bounds
    from tracker.svg_charts import bar_chart, column_chart

    days, error = _days_arg()
    if error:
        page = render_template(
            "admin/dashboard/page.html", error=error, days=days, periods=PERIODS, data=None
        )
        return Response(page, 400)
    user = current_user()
    last = utcnow().date()
    first = last - timedelta(days=days - 1)
    counts, series = funnel_counts(first, last)
    start, end = bounds(first, last)
    medians = stage_medians(journeys(start, end), in_days(start), in_days(end))
    steps = funnel(counts, medians)
    labels = [(first + timedelta(days=n)).isoformat() for n in range(days)]
    sees_all = user.role in ("admin", "marketer")
    data = {
        "first": first,
        "last": last,
        "steps": steps,
        "funnel_chart": bar_chart([(s.label, s.count) for s in steps], "Funnel"),
        "visitors_chart": column_chart(
            list(zip(labels, series["visitors"], strict=True)), "Visitors per day"
        ),
        "leads_chart": column_chart(
            list(zip(labels, series["leads"], strict=True)), "Leads per day"
        ),
        "email": {
            key: counts.get(key, 0) for key in ("emails_sent", "email_opens", "email_clicks")
        },
        "roi": roi_summary(first, last) if sees_all else None,
        "health": follow_up(None if sees_all else user.id),
        "own_health": not sees_all,
    }
    page = render_template(
        "admin/dashboard/page.html",
        error=None,
        days=days,
        periods=PERIODS,
        data=data,
        fmt=human,
        pct=percent,
        hours=current_app.config["FOLLOW_UP_HOURS"],
    )
    return Response(page)
