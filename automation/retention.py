"""Retention: delete raw events older than RETENTION_MONTHS, once the daily rollups hold them.

Events go in chunks, oldest first, each chunk in its own transaction: the points
that referenced them keep their rows (score history stays) with `event_id` set
NULL first. A day is only purged when the rollups have its event metrics
(`automation.rollups`); days they lack are kept and reported, for an operator to
rebuild the rollups. Contacts' campaign touches (events carrying a UTM campaign)
are kept whatever their age: attribution and an opportunity's automatic campaign
read them from the raw table.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy import Engine, and_, not_, select, update

CHUNK = 5000
"""Events deleted per transaction: short locks, steady progress."""


def cutoff(now: datetime, months: int) -> datetime:
    """The instant `months` calendar months before `now` (the 31st becomes the month's last day)."""
    total = now.year * 12 + now.month - 1 - months
    year, month = divmod(total, 12)
    day = min(now.day, calendar.monthrange(year, month + 1)[1])
    return now.replace(year=year, month=month + 1, day=day)


@dataclass
class PurgeResult:
    """What a purge did (or, dry, would do)."""

    cutoff: datetime | None = None
    deleted: int = 0
    points_detached: int = 0
    uncovered_days: set[date] = field(default_factory=set)


def _day(moment: datetime) -> date:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()


def purge_expired_events(
    engine: Engine,
    months: int,
    now: datetime,
    dry_run: bool = False,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> PurgeResult:
    """Delete (or with `dry_run` count) the events older than `months` months; 0 does nothing.

    `progress(n)` is told after each chunk how many events it removed (or would).
    """
    from automation.rollups import EVENT_METRICS
    from tracker.automation_models import PointsEntry
    from tracker.models import Event
    from tracker.sales_models import RollupDay

    result = PurgeResult()
    if months <= 0:
        return result
    result.cutoff = cutoff(now, months)
    events, points, rollups = Event.__table__, PointsEntry.__table__, RollupDay.__table__
    touch = and_(events.c.contact_id.is_not(None), events.c.utm_campaign.is_not(None))
    covered: dict[date, bool] = {}
    last_id = 0
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(events.c.id, events.c.occurred_at, events.c.contact_id)
                .where(events.c.occurred_at < result.cutoff, events.c.id > last_id, not_(touch))
                .order_by(events.c.id)
                .limit(chunk)
            ).all()
            if not rows:
                return result
            last_id = rows[-1].id
            days = {_day(r.occurred_at) for r in rows}
            unknown = sorted(d for d in days if d not in covered)
            if unknown:
                held = set(
                    conn.execute(
                        select(rollups.c.day)
                        .where(rollups.c.day.in_(unknown), rollups.c.metric.in_(EVENT_METRICS))
                        .distinct()
                    ).scalars()
                )
                for d in unknown:
                    # SQLite hands dates back as text.
                    covered[d] = d in held or d.isoformat() in held
            gone = [r for r in rows if covered[_day(r.occurred_at)]]
            result.uncovered_days |= {d for d in days if not covered[d]}
            ids = [r.id for r in gone]
            contacts = sorted({r.contact_id for r in gone if r.contact_id is not None})
            if dry_run:
                result.deleted += len(ids)
            elif ids:
                if contacts:
                    # Only contacts' events earn points: the contact index finds them.
                    result.points_detached += conn.execute(
                        update(points)
                        .where(points.c.contact_id.in_(contacts), points.c.event_id.in_(ids))
                        .values(event_id=None)
                    ).rowcount
                result.deleted += conn.execute(events.delete().where(events.c.id.in_(ids))).rowcount
        if progress:
            progress(len(ids))
