"""The dashboard: the funnel, campaign ROI, email performance and follow-up health at a glance.

Counts, the distinct visitors of each offered period and the hours waited between
stages come from the daily rollups (`automation.rollups`), campaign ROI from the
stored attribution credit; never from raw events. Sales see the funnel and their own
follow-up health; marketers and admins see everything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from flask import Response, abort, current_app, render_template, request

from tracker.admin import bp
from tracker.admin.csv_export import csv_response, wants_csv
from tracker.auth import current_user, roles
from tracker.db import db
from tracker.models import utcnow

Key = tuple[date, str, str]
"""A daily counter's key: (day, metric, key), as `automation.rollups.daily` gives it."""

PERIODS = {7: "Last 7 days", 30: "Last 30 days", 90: "Last 90 days", 365: "Last 365 days"}
"""The periods the page offers, in days up to and including today (UTC)."""

DEFAULT_DAYS = 30
TOP_CAMPAIGNS = 5
"""Campaigns the ROI summary lists, by revenue."""


def funnel_counts(
    counters: Mapping[Key, int], first: date, last: date
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Step counts for first..last, and the daily visitors and leads for the chart, from
    that period's daily counters."""
    from automation import rollups

    conn = db.session.connection()
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
    # The scheduler keeps each offered period's distinct visitors ready (up to a minute
    # behind); counted here only when it has not yet.
    window = (last, rollups.VISITORS_WINDOW, str((last - first).days + 1))
    counts["visitors"] = (
        counters[window] if window in counters else rollups.distinct_visitors(conn, first, last)
    )
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    series = {name: [values.get(day, 0) for day in days] for name, values in per_day.items()}
    return dict(counts), series


def stage_medians(counters: Mapping[Key, int]) -> dict[str, float | None]:
    """Median days from each stage to the next, of contacts that reached it in the period
    of the daily counters given, from the hours waited they count."""
    from automation import rollups
    from automation.funnel import histogram_median

    waits: dict[str, dict[int, int]] = {stage: defaultdict(int) for stage in rollups.STAGE_WAITS}
    metrics = {metric: stage for stage, metric in rollups.STAGE_WAITS.items()}
    for (_, metric, key), value in counters.items():
        if metric in metrics:
            waits[metrics[metric]][int(key)] += value
    medians = {stage: histogram_median(hours) for stage, hours in waits.items()}
    return {stage: None if hours is None else hours / 24 for stage, hours in medians.items()}


def roi_summary(first: date, last: date) -> list[Any]:
    """The campaigns that brought the most revenue in the period: the ROI report's rows
    (linear attribution, read from the stored credits), the top few."""
    from automation.reports import Period, roi_report

    rows = [row for row in roi_report("linear", Period(first, last)).rows if row.campaign_id]
    rows.sort(key=lambda row: (-row.revenue, -row.leads, row.name.casefold()))
    return rows[:TOP_CAMPAIGNS]


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


TABLES = {
    "funnel": ("step", "label", "count", "rate_from_previous", "median_days_from_previous"),
    "roi": None,  # the ROI report's columns
    "email": ("emails_sent", "human_opens", "human_clicks"),
    "health": None,  # the follow-up health page's columns
}
"""The dashboard's tables a CSV holds (`?format=csv&table=`), with their columns."""

MARKETING_TABLES = ("roi", "email")
"""Tables only marketers and admins see."""


def _csv_rows(table: str, counters: Mapping[Key, int], first: date, last: date) -> list[Any]:
    """The rows of one dashboard table for the period, raw."""
    from automation.funnel import funnel
    from tracker.admin.sales import health_cells, health_pairs, health_per_owner

    user = current_user()
    if table in ("funnel", "email"):
        counts, _ = funnel_counts(counters, first, last)
        if table == "email":
            return [[counts.get(k, 0) for k in ("emails_sent", "email_opens", "email_clicks")]]
        steps = funnel(counts, stage_medians(counters))
        return [[s.key, s.label, s.count, s.rate, s.median_days] for s in steps]
    if table == "roi":
        from automation.reports import roi_cells

        return [roi_cells(row) for row in roi_summary(first, last)]
    # Follow-up health: everyone's and per owner for marketing; a salesperson's own.
    if user.role == "sales":
        return [health_cells(user.name, follow_up(user.id))]
    from automation.follow_up import WINDOW_DAYS

    now = utcnow()
    pairs = health_pairs(now - timedelta(days=WINDOW_DAYS))
    owners = health_per_owner(pairs, now, current_app.config["FOLLOW_UP_HOURS"])
    return [health_cells("(all)", follow_up(None))] + [health_cells(n, h) for n, h in owners]


def _csv(first: date, last: date) -> Response:
    """One of the dashboard's tables as a download (`table=`), for the period."""
    from automation import rollups
    from automation.reports import ROI_COLUMNS
    from tracker.admin.sales import HEALTH_COLUMNS

    table = request.args.get("table", "")
    if table not in TABLES:
        abort(400, f"choose the table to download: table={' or table='.join(TABLES)}")
    if table in MARKETING_TABLES and current_user().role == "sales":
        abort(403)
    header = TABLES[table] or (ROI_COLUMNS if table == "roi" else HEALTH_COLUMNS)
    counters = rollups.daily(db.session.connection(), first, last) if table != "roi" else {}
    rows = _csv_rows(table, counters, first, last)
    return csv_response(f"dashboard_{table}_{first}_{last}", header, rows)


@bp.get("/dashboard")
@roles("marketer", "sales")
def dashboard() -> Response:
    """The funnel with rates and median days, campaign ROI, email and follow-up at a glance.

    `?format=csv&table=funnel` (or roi, email, health): that table for the period.
    """
    from automation import rollups
    from automation.funnel import funnel
    from automation.report_tables import human, percent
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
    if wants_csv():
        return _csv(first, last)
    counters = rollups.daily(db.session.connection(), first, last)
    counts, series = funnel_counts(counters, first, last)
    steps = funnel(counts, stage_medians(counters))
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
