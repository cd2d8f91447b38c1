"""Apply the decay policies: expire old points, or fade scores by a percentage."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from automation.decay import EXPIRE, DecayPolicy, expiry_cutoff, percent_drop, percent_due
from automation.decay import make_policy as make_decay_policy
from automation.points import (
    Rulebook,
    ScoringResult,
    apply_entries,
    load_rulebook,
    lock_contacts,
    run_thresholds,
)
from automation.scoring import ENGAGEMENT
from tracker.automation_models import DecayPolicy as DecayRow
from tracker.automation_models import PointsEntry
from tracker.models import Contact, Event, Visitor, as_utc

EXPIRE_BATCH = 5000
"""Points entries expired per statement round."""


def load_policies(conn: Connection) -> list[DecayPolicy]:
    """The enabled decay policies."""
    return [
        make_decay_policy(
            p.id,
            p.name,
            site_id=p.site_id,
            expire_after_days=p.window_days,
            drop_percent=p.percent,
            every_days=p.every_days,
            last_run_at=as_utc(p.last_run_at) if p.last_run_at else None,
        )
        for p in conn.execute(select(DecayRow.__table__).where(DecayRow.enabled))
    ]


def _entry(contact_id: int, delta: int, reason: str, now: datetime) -> dict[str, Any]:
    return {
        "contact_id": contact_id,
        "rule_id": None,
        "event_id": None,
        "kind": ENGAGEMENT,
        "delta": delta,
        "reason": reason,
        "expired": False,
        "created_at": now,
    }


def _expire(conn: Connection, policy: DecayPolicy, now: datetime) -> list[dict[str, Any]]:
    log = PointsEntry.__table__
    query = (
        select(log.c.id, log.c.contact_id, log.c.delta)
        .where(
            log.c.kind == ENGAGEMENT,
            log.c.reason == "rule",
            log.c.expired.is_(False),
            log.c.delta != 0,
            log.c.created_at < expiry_cutoff(policy, now),
        )
        .limit(EXPIRE_BATCH)
    )
    if policy.site_id is not None:
        events = Event.__table__
        query = query.where(
            log.c.event_id.in_(select(events.c.id).where(events.c.site_id == policy.site_id))
        )
    totals: dict[int, int] = defaultdict(int)
    while rows := conn.execute(query).all():
        for _, contact_id, delta in rows:
            totals[contact_id] -= delta
        conn.execute(update(log).where(log.c.id.in_([r[0] for r in rows])).values(expired=True))
        if len(rows) < EXPIRE_BATCH:
            break
    return [_entry(cid, delta, "expired", now) for cid, delta in sorted(totals.items()) if delta]


def _fade(conn: Connection, policy: DecayPolicy, now: datetime) -> list[dict[str, Any]]:
    contacts = Contact.__table__
    query = select(contacts.c.id, contacts.c.engagement_score).where(
        contacts.c.engagement_score > 0
    )
    if policy.site_id is not None:
        visitors = Visitor.__table__
        query = query.where(
            contacts.c.id.in_(
                select(visitors.c.contact_id).where(visitors.c.site_id == policy.site_id)
            )
        )
    entries = [
        _entry(cid, percent_drop(score, policy.percent or 0), "decay", now)
        for cid, score in conn.execute(query)
    ]
    conn.execute(
        update(DecayRow.__table__)
        .where(DecayRow.__table__.c.id == policy.id)
        .values(last_run_at=now)
    )
    return [e for e in entries if e["delta"]]


def run_decay(conn: Connection, now: datetime, rulebook: Rulebook | None = None) -> ScoringResult:
    """Apply every due policy in the caller's transaction; thresholds see the new scores."""
    result = ScoringResult()
    entries: list[dict[str, Any]] = []
    for policy in load_policies(conn):
        if policy.mode == EXPIRE:
            entries += _expire(conn, policy, now)
        elif percent_due(policy, now):
            entries += _fade(conn, policy, now)
    if entries:
        rulebook = rulebook or load_rulebook(conn)
        result.rows = lock_contacts(conn, {e["contact_id"] for e in entries})
        apply_entries(conn, rulebook, result.rows, entries, now, result)
        run_thresholds(conn, rulebook, result.changed, now, result)
    return result
