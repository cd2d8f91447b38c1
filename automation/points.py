"""Score a stored batch in its own transaction: points, scores, thresholds, inline actions.

The I/O around the pure engines in `scoring` and `thresholds`: load rules and
past awards, write the points log, move each touched contact's scores with one
UPDATE, record threshold crossings and the action runs they start. Actions that
only change the database run here, atomically with the points that caused them;
the others (mail, webhooks, enrolment) are left queued for RQ jobs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from automation import actions
from automation.bulk import insert_rows, update_rows
from automation.scoring import ENGAGEMENT, FIT, Rule, ScoredEvent, Usage, award_points, fit_score
from automation.scoring import make_rule as make_scoring_rule
from automation.thresholds import Standing, State, ThresholdSpec, evaluate, make_threshold
from tracker.automation_models import (
    PointsEntry,
    ScoringRule,
    SegmentMember,
    Threshold,
    ThresholdState,
)
from tracker.models import Contact, Event, as_utc, utcnow

CHUNK = 1000
"""Ids per IN (...) list."""


@dataclass(frozen=True)
class Rulebook:
    """The enabled scoring rules and thresholds, as the engines take them."""

    rules: tuple[Rule, ...] = ()
    thresholds: tuple[ThresholdSpec, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.rules and not self.thresholds


@dataclass
class ScoringResult:
    """What scoring one batch did, and the contact rows it read (locked until commit)."""

    awards: int = 0
    contacts: int = 0
    firings: int = 0
    queued_runs: list[int] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    changed: set[int] = field(default_factory=set)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)


def load_rulebook(conn: Connection) -> Rulebook:
    """Read the enabled rules and thresholds."""
    rules = tuple(
        make_scoring_rule(
            r.id,
            r.name,
            r.kind,
            r.points,
            event_type=r.event_type,
            site_id=r.site_id,
            conditions=r.conditions,
            max_times=r.max_times,
            once_per_seconds=r.once_per_seconds,
            first_time_only=r.first_time_only,
        )
        for r in conn.execute(select(ScoringRule.__table__).where(ScoringRule.enabled))
    )
    thresholds = tuple(
        make_threshold(
            t.id,
            t.name,
            t.score,
            t.minimum,
            segment_id=t.segment_id,
            stage=t.stage,
            refire=t.refire,
            actions=t.actions or (),
        )
        for t in conn.execute(
            select(Threshold.__table__).where(Threshold.enabled).order_by(Threshold.id)
        )
    )
    return Rulebook(rules, thresholds)


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), CHUNK):
        yield ordered[start : start + CHUNK]


def _events(conn: Connection, event_ids: Iterable[int]) -> list[ScoredEvent]:
    e = Event.__table__
    found = []
    for chunk in _chunks(event_ids):
        query = select(
            e.c.id,
            e.c.contact_id,
            e.c.type,
            e.c.site_id,
            e.c.occurred_at,
            e.c.path,
            e.c.target,
            e.c.query,
            e.c.name,
            e.c.props,
            e.c.is_bot,
        ).where(e.c.id.in_(chunk), e.c.contact_id.is_not(None))
        found.extend(
            ScoredEvent(
                r.id,
                r.contact_id,
                r.type,
                r.site_id,
                as_utc(r.occurred_at),
                r.path,
                r.target,
                r.query,
                r.name,
                r.props,
                r.is_bot,
            )
            for r in conn.execute(query)
        )
    return found


def _usage(
    conn: Connection, contacts: list[int], rules: list[Rule]
) -> dict[tuple[int, int], Usage]:
    capped = [r.id for r in rules if r.capped]
    if not capped:
        return {}
    log = PointsEntry.__table__
    usage = {}
    for chunk in _chunks(contacts):
        query = (
            select(log.c.contact_id, log.c.rule_id, func.count(), func.max(log.c.created_at))
            .where(log.c.contact_id.in_(chunk), log.c.rule_id.in_(capped), log.c.delta != 0)
            .group_by(log.c.contact_id, log.c.rule_id)
        )
        for contact_id, rule_id, times, last in conn.execute(query):
            usage[(contact_id, rule_id)] = Usage(times, as_utc(last) if last else None)
    return usage


def lock_contacts(conn: Connection, contact_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Read the touched contacts, locked until commit so concurrent batches queue up."""
    c = Contact.__table__
    found = {}
    for chunk in _chunks(contact_ids):
        query = (
            select(
                c.c.id,
                c.c.email,
                c.c.first_name,
                c.c.last_name,
                c.c.company,
                c.c.traits,
                c.c.stage,
                c.c.owner_id,
                c.c.engagement_score,
                c.c.fit_score,
            )
            .where(c.c.id.in_(chunk))
            .order_by(c.c.id)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        found.update({row["id"]: dict(row) for row in conn.execute(query).mappings()})
    return found


def _attributes(contact: dict[str, Any]) -> dict[str, Any]:
    """What fit rules can look at: custom attributes, then the contact's own fields."""
    return {
        **(contact["traits"] or {}),
        **{k: contact[k] for k in ("email", "first_name", "last_name", "company")},
    }


def score_batch(
    conn: Connection,
    event_ids: Iterable[int],
    refit: Iterable[int] = (),
    rulebook: Rulebook | None = None,
) -> ScoringResult:
    """Score these stored events and refresh the fit of `refit` contacts.

    Thresholds are not evaluated here: segments move first (`run_thresholds`).
    """
    rulebook = rulebook or load_rulebook(conn)
    result = ScoringResult()
    now = utcnow()
    events = _events(conn, event_ids)
    touched = {e.contact_id for e in events} | set(refit)
    result.touched = touched
    if not touched or not rulebook.rules:
        return result
    contacts = result.rows = lock_contacts(conn, touched)
    awards = award_points(
        rulebook.rules, events, _usage(conn, sorted(touched), list(rulebook.rules))
    )
    entries = [
        {
            "contact_id": a.contact_id,
            "rule_id": a.rule_id,
            "event_id": a.event_id,
            "kind": ENGAGEMENT,
            "delta": a.delta,
            "reason": "rule",
            "expired": False,
            "created_at": a.at,
        }
        for a in awards
    ]
    fit_rules = [r for r in rulebook.rules if r.kind == FIT]
    for contact_id in sorted(set(refit) & contacts.keys()):
        fit = fit_score(fit_rules, _attributes(contacts[contact_id]))
        if fit != contacts[contact_id]["fit_score"]:
            entries.append(
                {
                    "contact_id": contact_id,
                    "rule_id": None,
                    "event_id": None,
                    "kind": FIT,
                    "delta": fit - contacts[contact_id]["fit_score"],
                    "reason": "fit",
                    "expired": False,
                    "created_at": now,
                }
            )
    apply_entries(conn, rulebook, contacts, entries, now, result)
    return result


def apply_entries(
    conn: Connection,
    rulebook: Rulebook,
    contacts: dict[int, dict[str, Any]],
    entries: list[dict[str, Any]],
    now: datetime,
    result: ScoringResult,
) -> None:
    """Write points entries and move the scores by what was really written.

    An award already in the log (same rule and event) is skipped by the insert
    and so moves no score: a re-scored event never counts twice.
    """
    written = insert_rows(
        conn,
        PointsEntry.__table__,
        entries,
        conflict=("rule_id", "event_id"),
        returning=("contact_id", "kind", "delta"),
    )
    engagement: dict[int, int] = defaultdict(int)
    fits: dict[int, int] = defaultdict(int)
    result.awards += sum(1 for _, kind, _ in written if kind == ENGAGEMENT)
    for contact_id, kind, delta in written:
        (engagement if kind == ENGAGEMENT else fits)[contact_id] += delta
    changed = []
    for contact_id in sorted(engagement.keys() | fits.keys()):
        contact = contacts[contact_id]
        contact["engagement_score"] += engagement.get(contact_id, 0)
        contact["fit_score"] += fits.get(contact_id, 0)
        changed.append(
            {
                "id": contact_id,
                "engagement_score": contact["engagement_score"],
                "fit_score": contact["fit_score"],
                "score": contact["engagement_score"] + contact["fit_score"],
                "updated_at": now,
            }
        )
    update_rows(conn, Contact.__table__, changed, key="id")
    result.contacts = len(changed)
    result.changed.update(c["id"] for c in changed)


def _segments(conn: Connection, contact_ids: list[int]) -> dict[int, set[int]]:
    members = SegmentMember.__table__
    found: dict[int, set[int]] = defaultdict(set)
    for chunk in _chunks(contact_ids):
        query = select(members.c.contact_id, members.c.segment_id).where(
            members.c.contact_id.in_(chunk)
        )
        for contact_id, segment_id in conn.execute(query):
            found[contact_id].add(segment_id)
    return found


def run_thresholds(
    conn: Connection,
    rulebook: Rulebook,
    contact_ids: Iterable[int],
    now: datetime,
    result: ScoringResult,
) -> set[int]:
    """Evaluate the thresholds for these contacts; start the actions of each crossing.

    Returns the contacts something fired for (their stage or tags may have moved).
    """
    contact_ids = sorted(set(contact_ids))
    if not rulebook.thresholds or not contact_ids:
        return set()
    missing = [cid for cid in contact_ids if cid not in result.rows]
    if missing:
        result.rows.update(lock_contacts(conn, missing))
    contacts = result.rows
    contact_ids = [cid for cid in contact_ids if cid in contacts]
    segments = (
        _segments(conn, contact_ids) if any(t.segment_id for t in rulebook.thresholds) else {}
    )
    standings = [
        Standing(
            cid,
            contacts[cid]["engagement_score"],
            contacts[cid]["fit_score"],
            contacts[cid]["stage"],
            frozenset(segments.get(cid, ())),
        )
        for cid in contact_ids
    ]
    states_table = ThresholdState.__table__
    states: dict[tuple[int, int], State] = {}
    for chunk in _chunks(contact_ids):
        query = select(states_table).where(states_table.c.contact_id.in_(chunk))
        for row in conn.execute(query):
            states[(row.threshold_id, row.contact_id)] = State(row.above, row.fired)
    firings, changed = evaluate(rulebook.thresholds, standings, states)
    if changed:
        fired_now = {(f.threshold.id, f.contact_id) for f in firings}
        insert_rows(
            conn,
            states_table,
            [
                {
                    "threshold_id": t,
                    "contact_id": c,
                    "above": s.above,
                    "fired": s.fired,
                    "last_fired_at": now if (t, c) in fired_now else None,
                }
                for (t, c), s in sorted(changed.items())
            ],
            conflict=("threshold_id", "contact_id"),
            update={"above": "new", "fired": "new", "last_fired_at": "max"},
        )
    result.firings += len(firings)
    for firing in firings:
        result.queued_runs.extend(actions.start(conn, firing, contacts[firing.contact_id], now))
    return {firing.contact_id for firing in firings}
