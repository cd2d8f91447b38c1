"""Daily rollups for the dashboard: per UTC day, counts the pages read instead of raw rows.

Two kinds of metric, kept two ways:

- Event metrics (pageviews, human email opens and clicks, distinct visitors, per
  UTM campaign distinct visitors) are added by ingestion from the events that were
  NEW in a batch (`add_facts`), so a re-delivered batch adds nothing. Distinct
  visitors stay exact: a (campaign, day, visitor) row is inserted once, and only a
  row that was really inserted counts.
- Row metrics (leads created, stage changes per target stage, leads per first-touch
  UTM campaign, mail sent) come from tables many paths write (ingestion, imports,
  sales actions, thresholds); `settle` recounts them for whole days. The scheduler
  settles yesterday and today every minute.

`rebuild` recomputes both kinds for a date range from the raw tables. Days whose raw
events the retention setting deleted lose their event metrics if rebuilt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    String,
    and_,
    case,
    cast,
    delete,
    distinct,
    func,
    literal,
    select,
)

from automation.bulk import dialect_insert, insert_rows
from automation.funnel import STAGES, in_days, stage_waits
from tracker.automation_models import StageChange
from tracker.email_models import Message
from tracker.models import Contact, Event, Visitor, as_utc
from tracker.sales_models import RollupDay, RollupVisitor

PAGEVIEWS = "pageviews"
VISITORS = "visitors"
CAMPAIGN_VISITORS = "campaign_visitors"
EMAIL_OPENS = "email_opens"
EMAIL_CLICKS = "email_clicks"
LEADS = "leads"
CAMPAIGN_LEADS = "campaign_leads"
STAGE = "stage"
EMAILS_SENT = "emails_sent"

EVENT_COUNTS = {"pageview": PAGEVIEWS, "email_open": EMAIL_OPENS, "email_click": EMAIL_CLICKS}
"""Event type → the metric counting its human events."""

VISITORS_WINDOW = "visitors_window"
"""Distinct visitors of the N days ending on the row's day (key: N), for the dashboard."""

WINDOWS = (7, 30, 90, 365)
"""The periods the dashboard offers, whose distinct visitors `settle` keeps ready."""

STAGE_WAITS = {stage: f"wait:{stage}" for stage in STAGES[1:]}
"""Stage -> metric counting contacts that first reached it that day, per whole hours
waited since the stage before (key: the hours)."""

EVENT_METRICS = (*EVENT_COUNTS.values(), VISITORS, CAMPAIGN_VISITORS)
ROW_METRICS = (LEADS, CAMPAIGN_LEADS, STAGE, EMAILS_SENT, VISITORS_WINDOW, *STAGE_WAITS.values())

REBUILD_CHUNK = 50_000
"""Event ids per statement in a rebuild: small enough for a progress bar to move."""

Key = tuple[date, str, str]


@dataclass(frozen=True)
class EventFacts:
    """What a rollup needs of one event."""

    occurred_at: datetime
    type: str
    is_bot: bool
    visitor_id: int | None
    utm_campaign: str | None
    contact_id: int | None = None


def campaign_code(value: str | None) -> str:
    """A UTM campaign as rollups key it: trimmed, lower case ('' for none)."""
    return (value or "").strip().lower()[:200]


def tally(events: Iterable[EventFacts]) -> tuple[Counter[Key], set[tuple[str, date, int]]]:
    """Counts of human events per (day, metric, key), and the (campaign, day, visitor) seen.

    Pure. Bots count nowhere; campaign '' means "any".
    """
    counts: Counter[Key] = Counter()
    seen: set[tuple[str, date, int]] = set()
    for event in events:
        if event.is_bot:
            continue
        day = as_utc(event.occurred_at).astimezone(UTC).date()
        metric = EVENT_COUNTS.get(event.type)
        if metric:
            counts[(day, metric, "")] += 1
        if event.visitor_id is not None:
            seen.add(("", day, event.visitor_id))
            code = campaign_code(event.utm_campaign)
            if code:
                seen.add((code, day, event.visitor_id))
    return counts, seen


def _add_counts(conn: Connection, counts: Mapping[Key, int], zeros: bool = False) -> None:
    """Add to the day counters in one statement, in key order (concurrent batches lock alike);
    a zero is only written with `zeros` (where "none" is an answer worth keeping)."""
    rows = [
        {"day": day, "metric": metric, "key": key, "value": value}
        for (day, metric, key), value in sorted(counts.items())
        if value or zeros
    ]
    # One statement however many rows (a rebuild's stage waits run to tens of thousands).
    insert_rows(
        conn, RollupDay.__table__, rows, conflict=("day", "metric", "key"), update={"value": "add"}
    )


def facts_of(rows: Iterable[Mapping[str, Any]]) -> list[EventFacts]:
    """What the rollups need of event rows as they were written."""
    return [
        EventFacts(
            row["occurred_at"],
            row["type"],
            bool(row.get("is_bot")),
            row.get("visitor_id"),
            row.get("utm_campaign"),
            row.get("contact_id"),
        )
        for row in rows
    ]


def add_facts(conn: Connection, facts: list[EventFacts]) -> list[EventFacts]:
    """Add newly stored events to the rollups, in the caller's transaction; return them.

    Give it only events that were new in this transaction (`StoredBatch.new_events`):
    that is what makes a re-delivered batch count nothing.
    """
    if not facts:
        return []
    counts, seen = tally(facts)
    fresh = insert_rows(
        conn,
        RollupVisitor.__table__,
        [{"campaign": c, "day": d, "visitor_id": v} for c, d, v in sorted(seen)],
        conflict=("campaign", "day", "visitor_id"),
        returning=("campaign", "day"),
    )
    for campaign, day in fresh:
        # SQLite's driver hands the day back as text.
        day = day if isinstance(day, date) else date.fromisoformat(str(day))
        counts[(day, CAMPAIGN_VISITORS if campaign else VISITORS, campaign)] += 1
    _add_counts(conn, counts)
    return facts


# --- settling and rebuilding from the tables -------------------------------------------------


def bounds(first: date, last: date) -> tuple[datetime, datetime]:
    """The instants from the start of `first` to the end of `last` (exclusive), in UTC."""
    return datetime.combine(first, time(), UTC), datetime.combine(last + timedelta(1), time(), UTC)


def day_of(conn: Connection, column: Any) -> Any:
    """SQL: the UTC day of a timestamp column."""
    if conn.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)  # SQLite keeps UTC text; date() of it is the ISO day


def _during(column: Any, first: date, last: date) -> Any:
    start, end = bounds(first, last)
    return and_(column >= start, column < end)


def _upsert_select(conn: Connection, query: Any, add: bool = False) -> None:
    """INSERT (day, metric, key, value) FROM a grouped query; a counter already there is
    replaced, or with `add` added to (a rebuild meets a day again in the next chunk)."""
    table = RollupDay.__table__
    stmt = dialect_insert(conn, table).from_select(["day", "metric", "key", "value"], query)
    value = table.c.value + stmt.excluded.value if add else stmt.excluded.value
    stmt = stmt.on_conflict_do_update(
        index_elements=["day", "metric", "key"], set_={"value": value}
    )
    conn.execute(stmt)


def settle(conn: Connection, first: date, last: date) -> None:
    """Recount the row metrics of the days first..last: leads, stage changes, sent mail, the
    hours contacts waited between stages, and the distinct visitors of each of the
    dashboard's periods ending on `last`."""
    rollups = RollupDay.__table__
    conn.execute(
        delete(rollups).where(
            rollups.c.day >= first, rollups.c.day <= last, rollups.c.metric.in_(ROW_METRICS)
        )
    )
    contacts, changes, messages = Contact.__table__, StageChange.__table__, Message.__table__
    day = day_of(conn, contacts.c.created_at)
    _upsert_select(
        conn,
        select(day, literal(LEADS), literal(""), func.count())
        .where(_during(contacts.c.created_at, first, last))
        .group_by(day),
    )
    visitors = Visitor.__table__
    code = func.lower(func.trim(visitors.c.utm_campaign))
    _upsert_select(
        conn,
        select(
            day,
            literal(CAMPAIGN_LEADS),
            cast(code, String(200)),
            func.count(distinct(contacts.c.id)),
        )
        .join(visitors, visitors.c.contact_id == contacts.c.id)
        .where(
            _during(contacts.c.created_at, first, last),
            visitors.c.utm_campaign.is_not(None),
            func.trim(visitors.c.utm_campaign) != "",
        )
        .group_by(day, code),
    )
    changed = day_of(conn, changes.c.created_at)
    _upsert_select(
        conn,
        select(
            changed, literal(STAGE), changes.c.to_stage, func.count(distinct(changes.c.contact_id))
        )
        .where(_during(changes.c.created_at, first, last))
        .group_by(changed, changes.c.to_stage),
    )
    sent = day_of(conn, messages.c.sent_at)
    _upsert_select(
        conn,
        select(sent, literal(EMAILS_SENT), literal(""), func.count())
        .where(_during(messages.c.sent_at, first, last))
        .group_by(sent),
    )
    start, end = bounds(first, last)
    waits = stage_waits(stage_journeys(conn, start, end), in_days(start), in_days(end))
    counts: Counter[Key] = Counter(
        {(day, STAGE_WAITS[stage], str(hours)): n for (day, stage, hours), n in waits.items()}
    )
    _add_counts(conn, counts)
    windows = {
        (last, VISITORS_WINDOW, str(days)): distinct_visitors(
            conn, last - timedelta(days=days - 1), last
        )
        for days in WINDOWS
    }
    _add_counts(conn, windows, zeros=True)


def _in_days(conn: Connection, column: Any) -> Any:
    """SQL: a timestamp as days since the Unix epoch (no datetime parsed per row in Python)."""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", column) / 86400
    return func.julianday(column) - 2440587.5


def stage_journeys(conn: Connection, start: datetime, end: datetime) -> dict[int, dict[str, float]]:
    """First time at each stage (days since the epoch) of the contacts that changed stage in
    [start, end); "lead" is when the contact was created."""
    changes, contacts = StageChange.__table__, Contact.__table__
    later = STAGES[1:]
    movers = conn.scalars(
        select(changes.c.contact_id)
        .where(
            changes.c.to_stage.in_(later),
            changes.c.created_at >= start,
            changes.c.created_at < end,
        )
        .distinct()
    ).all()
    ids = sorted(movers)
    found: dict[int, dict[str, float]] = {}
    # In chunks of ids: each an index lookup, where one IN (subquery) can scan them all.
    for chunk in (ids[i : i + 1000] for i in range(0, len(ids), 1000)):
        first_times = (
            select(
                changes.c.contact_id,
                changes.c.to_stage,
                _in_days(conn, func.min(changes.c.created_at)),
            )
            .where(changes.c.contact_id.in_(chunk), changes.c.to_stage.in_(later))
            .group_by(changes.c.contact_id, changes.c.to_stage)
        )
        for contact_id, stage, days in conn.execute(first_times):
            found.setdefault(contact_id, {})[stage] = float(days)
        created = select(contacts.c.id, _in_days(conn, contacts.c.created_at)).where(
            contacts.c.id.in_(chunk)
        )
        for contact_id, days in conn.execute(created):
            found.setdefault(contact_id, {})["lead"] = float(days)
    return found


def rebuild(
    conn: Connection,
    first: date,
    last: date,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Recompute every metric of the days first..last from the raw tables.

    `progress(done, total)` is told how far through the range's events it is.
    """
    rollups, seen, events = RollupDay.__table__, RollupVisitor.__table__, Event.__table__
    conn.execute(
        delete(rollups).where(
            rollups.c.day >= first, rollups.c.day <= last, rollups.c.metric.in_(EVENT_METRICS)
        )
    )
    conn.execute(delete(seen).where(seen.c.day >= first, seen.c.day <= last))
    during = _during(events.c.occurred_at, first, last)
    low, high = conn.execute(
        select(func.min(events.c.id), func.max(events.c.id)).where(during)
    ).one()
    day = day_of(conn, events.c.occurred_at)
    code = func.lower(func.trim(events.c.utm_campaign))
    metric = case(*((events.c.type == t, m) for t, m in EVENT_COUNTS.items()))
    total = 0 if low is None else high - low + 1
    for start in range(low or 0, (high or -1) + 1, REBUILD_CHUNK):
        chunk = and_(
            events.c.id >= start,
            events.c.id < start + REBUILD_CHUNK,
            during,
            events.c.is_bot.is_(False),
        )
        visits = events.c.visitor_id.is_not(None)
        for campaign, extra in (
            (literal(""), visits),
            (
                cast(code, String(200)),
                and_(
                    visits,
                    events.c.utm_campaign.is_not(None),
                    func.trim(events.c.utm_campaign) != "",
                ),
            ),
        ):
            query = select(campaign, day, events.c.visitor_id).where(chunk, extra).distinct()
            stmt = dialect_insert(conn, seen).from_select(["campaign", "day", "visitor_id"], query)
            conn.execute(stmt.on_conflict_do_nothing())
        _upsert_select(
            conn,
            select(day, metric, literal(""), func.count())
            .where(chunk, events.c.type.in_(EVENT_COUNTS))
            .group_by(day, metric),
            add=True,
        )
        if progress:
            progress(min(start + REBUILD_CHUNK, high + 1) - low, total)
    kind = case((seen.c.campaign == "", VISITORS), else_=CAMPAIGN_VISITORS)
    _upsert_select(
        conn,
        select(seen.c.day, kind, seen.c.campaign, func.count())
        .where(seen.c.day >= first, seen.c.day <= last)
        .group_by(seen.c.day, seen.c.campaign),
    )
    settle(conn, first, last)


def event_days(conn: Connection) -> tuple[date, date] | None:
    """The first and last UTC day holding events, or None without events."""
    events = Event.__table__
    low, high = conn.execute(
        select(func.min(events.c.occurred_at), func.max(events.c.occurred_at))
    ).one()
    if low is None:
        return None
    return as_utc(_instant(low)).date(), as_utc(_instant(high)).date()


def _instant(value: Any) -> datetime:
    # An aggregate over a DateTime column comes back as text from SQLite.
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


# --- reading ----------------------------------------------------------------------------------


def daily(conn: Connection, first: date, last: date) -> dict[Key, int]:
    """Every counter of the days first..last, keyed (day, metric, key)."""
    rollups = RollupDay.__table__
    query = select(rollups.c.day, rollups.c.metric, rollups.c.key, rollups.c.value).where(
        rollups.c.day >= first, rollups.c.day <= last
    )
    found: dict[Key, int] = {}
    for day, metric, key, value in conn.execute(query):
        found[(day if isinstance(day, date) else date.fromisoformat(day), metric, key)] = int(value)
    return found


def distinct_visitors(
    conn: Connection, first: date, last: date, campaigns: str | Iterable[str] = ""
) -> int:
    """Distinct human visitors seen in first..last: any ('') or with one of the codes given."""
    seen = RollupVisitor.__table__
    codes = [campaigns] if isinstance(campaigns, str) else sorted(campaigns)
    return int(
        conn.execute(
            select(func.count(distinct(seen.c.visitor_id))).where(
                seen.c.campaign.in_(codes), seen.c.day >= first, seen.c.day <= last
            )
        ).scalar_one()
    )


def campaign_visitors(
    conn: Connection, first: date, last: date, codes: Iterable[str]
) -> dict[str, int]:
    """Distinct human visitors per campaign code (lower case) in first..last."""
    seen = RollupVisitor.__table__
    wanted = sorted({campaign_code(code) for code in codes} - {""})
    if not wanted:
        return {}
    query = (
        select(seen.c.campaign, func.count(distinct(seen.c.visitor_id)))
        .where(seen.c.campaign.in_(wanted), seen.c.day >= first, seen.c.day <= last)
        .group_by(seen.c.campaign)
    )
    return {code: int(count) for code, count in conn.execute(query)}
