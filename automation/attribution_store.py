"""Stored attribution: every contact's credits kept current and summed per day.

The campaign ROI report sums `attribution_days` (a few rows a day) instead of
attributing raw touches on every request. What keeps the sums true:

- Database triggers (migration 0005) mark a contact in `attribution_dirty` when a
  contact, a stage change to MQL or opportunity, or an opportunity is written,
  whoever writes it. Ingestion marks the contacts whose new events are campaign
  touches, and those it identified (`mark_touched`).
- `refresh` (a periodic job) claims marked contacts a chunk at a time, recomputes
  the credits of all their conversions under every model from their whole touch
  history, replaces their rows in `attribution_credits`, and adds the difference
  to `attribution_days` — one transaction per chunk. Differences add, so two
  workers refreshing at once never lose a sum.
- Campaign definitions (codes, templates, sequences) are fingerprinted; when the
  fingerprint changes, every contact is marked.
- An erased contact's credits stay with no contact (`forget`), except those of its
  opportunities: the deals themselves stay, without a contact, and the report
  credits such deals directly (`contactless_deals`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Connection,
    Engine,
    and_,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    true,
    update,
)

from automation.attribution import (
    CampaignIndex,
    CampaignKeys,
    Conversion,
    Touch,
    campaign_touches,
    contact_credits,
)
from automation.bulk import dialect_insert, insert_rows
from tracker.automation_models import StageChange
from tracker.email_models import Enrolment, Message
from tracker.models import Contact, Event, Visitor, as_utc, utcnow
from tracker.sales_models import (
    AttributionCredit,
    AttributionDay,
    AttributionDirty,
    AttributionState,
    Campaign,
    Opportunity,
)

NO_CAMPAIGN = 0
"""The campaign id stored for credit no campaign earned."""

REFRESH_CHUNK = 500
"""Contacts recomputed per transaction: short enough that a writer marking one waits little."""

REFRESH_SECONDS = 45.0
"""How long one refresh job keeps claiming chunks before leaving the rest to the next run."""

DEAL_METRICS = ("opportunities", "revenue")
"""Metrics that belong to an opportunity row rather than to its contact."""

STAGE_METRICS = {"mql": "mqls", "opportunity": "converted"}
"""Stage changes that are conversions, and the metric each counts as."""

credits = AttributionCredit.__table__
days = AttributionDay.__table__
dirty = AttributionDirty.__table__
state = AttributionState.__table__


def _ids_in(conn: Connection, column: Any, ids: list[int]) -> Any:
    """SQL: `column` is one of `ids` (one array parameter on PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam("ids", ids, type_=ARRAY(BigInteger)))
    return column.in_(ids)


# --- campaigns -------------------------------------------------------------------------------


def campaign_keys(conn: Connection) -> list[CampaignKeys]:
    """Every campaign's codes, templates and sequences."""
    table = Campaign.__table__
    rows = conn.execute(
        select(table.c.id, table.c.utm_campaigns, table.c.template_ids, table.c.sequence_ids)
    )
    return [
        CampaignKeys.of(id_, codes or (), templates or (), sequences or ())
        for id_, codes, templates, sequences in rows
    ]


def fingerprint(keys: Iterable[CampaignKeys]) -> str:
    """A digest of what decides attribution: which keys belong to which campaign."""
    plain = sorted(
        (k.id, sorted(k.utm_campaigns), sorted(k.template_ids), sorted(k.sequence_ids))
        for k in keys
    )
    return hashlib.sha256(json.dumps(plain).encode()).hexdigest()


def stored_fingerprint(conn: Connection) -> str | None:
    """The fingerprint the stored credits follow; None before the first refresh."""
    return conn.execute(select(state.c.fingerprint).where(state.c.id == 1)).scalar()


def _follow_campaigns(conn: Connection, keys: list[CampaignKeys]) -> bool:
    """Mark every contact when the campaign definitions changed; True when they did."""
    current = fingerprint(keys)
    if stored_fingerprint(conn) == current:
        return False
    mark_all(conn)
    _orphans_to_nobody(conn, [k.id for k in keys])
    values = {"fingerprint": current, "updated_at": utcnow()}
    stmt = dialect_insert(conn, state).values(id=1, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))
    return True


def _orphans_to_nobody(conn: Connection, campaign_ids: list[int]) -> None:
    """Erased contacts' credit for campaigns deleted since goes to "no campaign": nothing
    recomputes it, and a later campaign must not inherit it with a reused id."""
    gone = and_(
        credits.c.contact_id.is_(None),
        credits.c.campaign_id != NO_CAMPAIGN,
        credits.c.campaign_id.not_in(campaign_ids),
    )
    moved = _sums_of(conn, gone)
    if not moved:
        return
    change: dict[DayKey, Decimal] = defaultdict(Decimal)
    for (day, model, metric, campaign_id), value in moved.items():
        change[(day, model, metric, campaign_id)] -= value
        change[(day, model, metric, NO_CAMPAIGN)] += value
    conn.execute(update(credits).where(gone).values(campaign_id=NO_CAMPAIGN))
    _add_to_days(conn, change)


# --- marking ---------------------------------------------------------------------------------


def mark(conn: Connection, contact_ids: Iterable[int]) -> None:
    """Mark contacts whose credits must be recomputed, in the caller's transaction."""
    rows = [{"contact_id": cid} for cid in sorted(set(contact_ids))]
    insert_rows(conn, dirty, rows, conflict=("contact_id",))


def mark_all(conn: Connection) -> None:
    """Mark every contact (campaign definitions changed)."""
    # WHERE true: SQLite cannot otherwise tell ON CONFLICT from a join's ON.
    everyone = select(Contact.__table__.c.id).where(true())
    stmt = dialect_insert(conn, dirty).from_select(["contact_id"], everyone)
    conn.execute(stmt.on_conflict_do_nothing())


def mark_touched(conn: Connection, events: Iterable[Any], identified: Iterable[int]) -> None:
    """Mark the contacts of new events that may be campaign touches (a UTM campaign, an
    email click) and the contacts identity just linked to visitors (their touches moved)."""
    found = set(identified)
    for event in events:
        if event.contact_id is None or event.is_bot:
            continue
        if event.type == "email_click" or (event.utm_campaign or "").strip():
            found.add(event.contact_id)
    if found:
        mark(conn, found)


def pending(conn: Connection) -> int:
    """How many contacts wait for their credits to be recomputed."""
    return int(conn.execute(select(func.count()).select_from(dirty)).scalar_one())


# --- recomputing -----------------------------------------------------------------------------


def _claim(conn: Connection, limit: int) -> list[int]:
    """Take up to `limit` marked contacts off the list (rows another worker holds are skipped)."""
    chosen = (
        select(dirty.c.contact_id)
        .order_by(dirty.c.contact_id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = conn.execute(
        delete(dirty)
        .where(dirty.c.contact_id.in_(chosen.scalar_subquery()))
        .returning(dirty.c.contact_id)
    )
    return sorted(claimed.scalars())


def conversions_of(conn: Connection, ids: list[int]) -> list[Conversion]:
    """Every conversion of these contacts: created, became MQL or opportunity, deals opened
    and won (a deal whose campaign someone chose gives it all the credit)."""
    contacts, changes, deals = Contact.__table__, StageChange.__table__, Opportunity.__table__
    found = [
        Conversion(cid, as_utc(at), "leads")
        for cid, at in conn.execute(
            select(contacts.c.id, contacts.c.created_at).where(_ids_in(conn, contacts.c.id, ids))
        )
    ]
    found += [
        Conversion(cid, as_utc(at), STAGE_METRICS[stage])
        for cid, at, stage in conn.execute(
            select(changes.c.contact_id, changes.c.created_at, changes.c.to_stage).where(
                _ids_in(conn, changes.c.contact_id, ids), changes.c.to_stage.in_(STAGE_METRICS)
            )
        )
    ]
    for row in conn.execute(
        select(
            deals.c.contact_id,
            deals.c.created_at,
            deals.c.closed_at,
            deals.c.stage,
            deals.c.amount,
            deals.c.campaign_id,
            deals.c.campaign_source,
        ).where(_ids_in(conn, deals.c.contact_id, ids))
    ):
        chosen = row.campaign_id if row.campaign_source == "manual" else None
        opened = as_utc(row.created_at)
        found.append(Conversion(row.contact_id, opened, "opportunities", campaign_id=chosen))
        if row.stage == "won" and row.closed_at is not None:
            # Revenue counts when won, credited to what brought the deal in.
            won_on = as_utc(row.closed_at).date()
            value = Fraction(row.amount)
            found.append(
                Conversion(row.contact_id, opened, "revenue", value, chosen, counted_on=won_on)
            )
    return found


def touches_of(
    conn: Connection, index: CampaignIndex, ids: list[int]
) -> dict[int, list[tuple[datetime, int]]]:
    """Each contact's campaign touches: first visits and events with a campaign's code,
    human clicks on a campaign's emails."""
    codes = sorted(index.by_code)
    raw: dict[int, list[Touch]] = defaultdict(list)
    if codes:
        visitors, events = Visitor.__table__, Event.__table__
        visits = select(
            visitors.c.contact_id, visitors.c.first_seen, visitors.c.utm_campaign
        ).where(
            _ids_in(conn, visitors.c.contact_id, ids),
            func.lower(visitors.c.utm_campaign).in_(codes),
            visitors.c.is_bot.is_(False),
        )
        tagged = (
            select(events.c.contact_id, events.c.occurred_at, events.c.utm_campaign)
            .where(
                _ids_in(conn, events.c.contact_id, ids),
                func.lower(events.c.utm_campaign).in_(codes),
                events.c.is_bot.is_(False),
            )
            .distinct()
        )
        for query in (visits, tagged):
            for cid, at, code in conn.execute(query):
                raw[cid].append(Touch(as_utc(at), utm_campaign=code))
    if index.by_template or index.by_sequence:
        messages, enrolments = Message.__table__, Enrolment.__table__
        clicks = (
            select(
                messages.c.contact_id,
                messages.c.clicked_at,
                messages.c.template_id,
                enrolments.c.sequence_id,
            )
            .outerjoin(enrolments, enrolments.c.id == messages.c.enrolment_id)
            .where(
                _ids_in(conn, messages.c.contact_id, ids),
                messages.c.clicked_at.is_not(None),
                or_(
                    messages.c.template_id.in_(sorted(index.by_template)),
                    enrolments.c.sequence_id.in_(sorted(index.by_sequence)),
                ),
            )
        )
        for cid, at, template_id, sequence_id in conn.execute(clicks):
            raw[cid].append(Touch(as_utc(at), template_id=template_id, sequence_id=sequence_id))
    return {cid: campaign_touches(found, index) for cid, found in raw.items()}


def _decimal(value: Fraction) -> Decimal:
    """A credit as stored: ten decimals (a third of a lead is 0.3333333333)."""
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("1e-10"))


DayKey = tuple[Any, str, str, int]


def _sums_of(conn: Connection, condition: Any) -> dict[DayKey, Decimal]:
    """What the stored credits matching `condition` add to each day's sums now."""
    query = (
        select(credits.c.day, credits.c.model, credits.c.metric, credits.c.campaign_id)
        .add_columns(func.sum(credits.c.value))
        .where(condition)
        .group_by(credits.c.day, credits.c.model, credits.c.metric, credits.c.campaign_id)
    )
    return {(d, m, k, c): Decimal(str(v)) for d, m, k, c, v in conn.execute(query)}


def _add_to_days(conn: Connection, change: Mapping[DayKey, Decimal]) -> None:
    """Add differences to the day sums, in key order (concurrent refreshes lock alike)."""
    rows = [
        {"day": d, "model": m, "metric": k, "campaign_id": c, "value": v}
        for (d, m, k, c), v in sorted(change.items())
        if v
    ]
    if not rows:
        return
    key = ("day", "model", "metric", "campaign_id")
    insert_rows(conn, days, rows, conflict=key, update={"value": "add"})


def recompute(conn: Connection, ids: list[int], index: CampaignIndex) -> int:
    """Replace these contacts' credits with fresh ones and move the day sums by the
    difference, in the caller's transaction. Returns the credit rows written."""
    if not ids:
        return 0
    before = _sums_of(conn, _ids_in(conn, credits.c.contact_id, ids))
    conn.execute(delete(credits).where(_ids_in(conn, credits.c.contact_id, ids)))
    fresh = contact_credits(conversions_of(conn, ids), touches_of(conn, index, ids))
    rows = [
        {
            "contact_id": cid,
            "day": day,
            "model": model,
            "metric": metric,
            "campaign_id": NO_CAMPAIGN if campaign_id is None else campaign_id,
            "value": _decimal(value),
        }
        for (cid, day, model, metric, campaign_id), value in fresh.items()
        if value
    ]
    insert_rows(conn, credits, rows, conflict=())
    change: dict[DayKey, Decimal] = defaultdict(Decimal)
    for row in rows:
        change[(row["day"], row["model"], row["metric"], row["campaign_id"])] += row["value"]
    for key, value in before.items():
        change[key] -= value
    _add_to_days(conn, change)
    return len(rows)


def _claim_current(conn: Connection, chunk: int, keys: list[CampaignKeys]) -> list[int] | None:
    """Claim marked contacts, unless the campaigns changed since `keys` were read: then
    None, and the caller rolls the claim back.

    Checked after claiming, in the same transaction: on PostgreSQL the share lock makes
    a campaign change that is committing wait for this chunk, or this chunk for it; on
    SQLite the claim holds the write lock. Either way no contact is recomputed with
    old campaigns after everyone was marked for the new ones.
    """
    ids = _claim(conn, chunk)
    query = select(state.c.fingerprint).where(state.c.id == 1)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    if conn.execute(query).scalar() != fingerprint(keys):
        return None
    return ids


def _recompute_chunk(engine: Engine, chunk: int, keys: list[CampaignKeys]) -> int | None:
    """One transaction: claim and recompute up to `chunk` contacts; None when the campaigns
    changed meanwhile (nothing done: the next run starts over with the new ones)."""
    with engine.connect() as conn, conn.begin() as transaction:
        ids = _claim_current(conn, chunk, keys)
        if ids is None:
            transaction.rollback()
            return None
        recompute(conn, ids, CampaignIndex.build(keys))
    return len(ids)


def refresh(engine: Engine, seconds: float = REFRESH_SECONDS, chunk: int = REFRESH_CHUNK) -> int:
    """Recompute marked contacts, a chunk per transaction, for up to `seconds`.

    Returns how many contacts were recomputed; what is left waits for the next run.
    """
    deadline = time.monotonic() + seconds
    done = 0
    with engine.begin() as conn:
        keys = campaign_keys(conn)
        _follow_campaigns(conn, keys)
    while True:
        count = _recompute_chunk(engine, chunk, keys)
        if count is None:
            return done
        done += count
        if count < chunk or time.monotonic() >= deadline:
            return done


def catch_up(engine: Engine, chunk: int | None = None) -> int:
    """Before a report is read: recompute what is marked when it is one chunk or less, so
    a deal just won shows at once; return how many contacts are still waiting.

    A larger backlog (a campaign's definition changed, a big import) is left to the
    periodic job, a chunk per transaction, and the report says it is catching up.
    """
    chunk = chunk or REFRESH_CHUNK
    with engine.begin() as conn:
        keys = campaign_keys(conn)
        _follow_campaigns(conn, keys)
        waiting = pending(conn)
    if not waiting or waiting > chunk:
        return waiting
    _recompute_chunk(engine, chunk, keys)
    with engine.connect() as conn:
        return pending(conn)


def forget(conn: Connection, contact_id: int) -> None:
    """Before a contact is erased: bring its credits up to date, drop those of its deals
    (the deals stay, contactless, and are credited as such), keep the rest anonymous."""
    index = CampaignIndex.build(campaign_keys(conn))
    recompute(conn, [contact_id], index)
    mine = and_(credits.c.contact_id == contact_id, credits.c.metric.in_(DEAL_METRICS))
    deal_sums = _sums_of(conn, mine)
    conn.execute(delete(credits).where(mine))
    _add_to_days(conn, {key: -value for key, value in deal_sums.items()})
    conn.execute(update(credits).where(credits.c.contact_id == contact_id).values(contact_id=None))


def unmark(conn: Connection, contact_id: int) -> None:
    """Take a contact off the list (it was erased: nothing left to recompute)."""
    conn.execute(delete(dirty).where(dirty.c.contact_id == contact_id))


# --- reading ---------------------------------------------------------------------------------


def _exact(value: Any) -> Fraction:
    """A stored sum as the fraction it stands for: ten decimals of thirds and sevenths add
    up to a hair off the exact figure, which the nearest simple fraction restores."""
    found = Fraction(Decimal(str(value)))
    simple = found.limit_denominator(1_000_000)
    return simple if abs(found - simple) <= Fraction(1, 10**8) else found


def totals(
    conn: Connection, model: str, first: date | None, last: date | None
) -> dict[tuple[int | None, str], Fraction]:
    """Credit per (campaign id, metric) of the days first..last (None: open) under
    `model`; what no campaign earned is under None. Includes contactless deals."""
    found: dict[tuple[int | None, str], Fraction] = defaultdict(Fraction)
    conditions = [days.c.model == model]
    if first:
        conditions.append(days.c.day >= first)
    if last:
        conditions.append(days.c.day <= last)
    query = (
        select(days.c.campaign_id, days.c.metric, func.sum(days.c.value))
        .where(*conditions)
        .group_by(days.c.campaign_id, days.c.metric)
    )
    for campaign_id, metric, value in conn.execute(query):
        found[(None if campaign_id == NO_CAMPAIGN else campaign_id, metric)] += _exact(value)
    for key, value in contactless_deals(conn, first, last).items():
        found[key] += value
    return {key: value for key, value in found.items() if value}


def contactless_deals(
    conn: Connection, first: date | None, last: date | None
) -> dict[tuple[int | None, str], Fraction]:
    """Deals without a contact (entered so, or their contact erased): opened and won in the
    period, credited to their campaign whatever the model (no touches are left to weigh)."""
    deals = Opportunity.__table__
    found: dict[tuple[int | None, str], Fraction] = defaultdict(Fraction)
    query = select(
        deals.c.campaign_id, deals.c.created_at, deals.c.closed_at, deals.c.stage, deals.c.amount
    ).where(deals.c.contact_id.is_(None))
    for campaign_id, opened, closed, stage, amount in conn.execute(query):
        if _within(as_utc(opened).date(), first, last):
            found[(campaign_id, "opportunities")] += 1
        if stage == "won" and closed is not None and _within(as_utc(closed).date(), first, last):
            found[(campaign_id, "revenue")] += Fraction(amount)
    return found


def _within(day: date, first: date | None, last: date | None) -> bool:
    return (first is None or day >= first) and (last is None or day <= last)
