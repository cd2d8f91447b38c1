"""Daily rollups: increments from ingestion equal a full rebuild, re-delivery counts nothing,
bots count nowhere, and the row metrics settle from their tables."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from flask import Flask
from sqlalchemy import select

from automation.ingest import store_rows
from automation.rollups import (
    ROW_METRICS,
    EventFacts,
    daily,
    distinct_visitors,
    rebuild,
    settle,
    tally,
)
from automation.rows import event_row
from tests.conftest import BROWSER_UA
from tracker.automation_models import StageChange
from tracker.db import db
from tracker.models import Contact, Event, Site
from tracker.sales_models import RollupDay, RollupVisitor

BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def stamped(
    site: Site,
    visitor: str,
    when: datetime,
    kind: str = "pageview",
    ua: str = BROWSER_UA,
    **more: Any,
) -> dict[str, Any]:
    """A stored-stream entry as collection stamps it."""
    entry = {
        "id": str(uuid.uuid4()),
        "type": kind,
        "url": "https://example.com/pricing",
        "site": site.id,
        "visitor": visitor,
        "at": when.timestamp(),
        "ip": "203.0.113.0",
        "ua": ua,
    }
    entry.update(more)
    return event_row(entry)


def batches(site: Site) -> list[list[dict[str, Any]]]:
    """Three batches over 2-4 March: visitors a, b (campaign Spring), a bot, one identify."""
    spring = "https://example.com/?utm_source=g&utm_medium=cpc&utm_campaign=Spring"
    return [
        [
            stamped(site, "a", at(2, 9)),
            stamped(site, "a", at(2, 10)),
            stamped(site, "b", at(2, 11), url=spring),
            stamped(site, "bot", at(2, 12), ua=BOT_UA, url=spring),
        ],
        [
            stamped(site, "a", at(2, 23)),
            stamped(site, "b", at(3, 8), url=spring),
            stamped(site, "b", at(3, 9), kind="engage", seconds=30),
        ],
        [
            stamped(site, "a", at(4, 1)),
            stamped(site, "c", at(4, 2), kind="identify", email="c@example.com"),
        ],
    ]


def snapshot() -> tuple[dict[Any, int], set[tuple[Any, ...]]]:
    """The event metrics ingestion adds to (what `settle` recounts is left out)."""
    counters = {
        (r.day, r.metric, r.key): r.value
        for r in db.session.scalars(select(RollupDay))
        if r.metric not in ROW_METRICS
    }
    seen = {(r.campaign, r.day, r.visitor_id) for r in db.session.scalars(select(RollupVisitor))}
    return counters, seen


def test_ingestion_counts_human_events_per_day(app: Flask, site: Site) -> None:
    with app.app_context():
        for rows in batches(site):
            store_rows(rows)
        with db.engine.connect() as conn:
            counters = daily(conn, date(2026, 3, 1), date(2026, 3, 31))
            assert distinct_visitors(conn, date(2026, 3, 2), date(2026, 3, 4)) == 3
            assert distinct_visitors(conn, date(2026, 3, 2), date(2026, 3, 3)) == 2
            assert distinct_visitors(conn, date(2026, 3, 2), date(2026, 3, 4), "spring") == 1
    mar = date(2026, 3, 2)
    # Day 2: a's three pageviews (one in batch two), b's; the bot's counts nowhere.
    assert counters[(mar, "pageviews", "")] == 4
    assert counters[(mar, "visitors", "")] == 2
    assert counters[(mar, "campaign_visitors", "spring")] == 1
    assert counters[(date(2026, 3, 3), "pageviews", "")] == 1  # the engage is no pageview
    assert counters[(date(2026, 3, 3), "visitors", "")] == 1
    assert counters[(date(2026, 3, 4), "visitors", "")] == 2


def test_redelivered_batch_counts_nothing(app: Flask, site: Site) -> None:
    with app.app_context():
        first, *_ = batches(site)
        assert store_rows(first) == 4
        once = snapshot()
        assert store_rows([dict(row) for row in first]) == 0
        assert snapshot() == once
        assert once[0][(date(2026, 3, 2), "pageviews", "")] == 3


def test_increments_equal_a_full_rebuild(app: Flask, site: Site) -> None:
    with app.app_context():
        for rows in batches(site):
            store_rows(rows)
        incremental = snapshot()
        assert incremental[0]
        with db.engine.begin() as conn:
            rebuild(conn, date(2026, 3, 1), date(2026, 3, 31))
        db.session.remove()
        assert snapshot() == incremental
        # From nothing: the rollups wiped, then rebuilt.
        with db.engine.begin() as conn:
            conn.execute(RollupDay.__table__.delete())
            conn.execute(RollupVisitor.__table__.delete())
            steps: list[tuple[int, int]] = []
            rebuild(conn, date(2026, 3, 1), date(2026, 3, 31), lambda d, t: steps.append((d, t)))
        db.session.remove()
        assert snapshot() == incremental
        assert steps and steps[-1][0] == steps[-1][1]
        # The dashboard's periods ending on the last day rebuilt: 3 visitors in March.
        windows = {
            r.key: r.value
            for r in db.session.scalars(
                select(RollupDay).where(RollupDay.metric == "visitors_window")
            )
            if r.day == date(2026, 3, 31)
        }
        assert windows == {"7": 0, "30": 3, "90": 3, "365": 3}


def test_rebuild_counts_email_events_of_humans(app: Flask, site: Site) -> None:
    """Email opens and clicks (no visitor) by humans, per day; machine ones nowhere."""
    with app.app_context():
        contact = Contact(email="r@example.com", created_at=at(1), updated_at=at(1))
        db.session.add(contact)
        db.session.flush()
        for kind, day, bot in (
            ("email_open", 5, False),
            ("email_open", 5, True),
            ("email_open", 6, False),
            ("email_click", 6, False),
            ("email_click", 6, True),
        ):
            db.session.add(
                Event(
                    uuid=uuid.uuid4(),
                    contact_id=contact.id,
                    type=kind,
                    is_bot=bot,
                    occurred_at=at(day),
                )
            )
        db.session.commit()
        with db.engine.begin() as conn:
            rebuild(conn, date(2026, 3, 1), date(2026, 3, 31))
            counters = daily(conn, date(2026, 3, 1), date(2026, 3, 31))
    assert counters[(date(2026, 3, 5), "email_opens", "")] == 1
    assert counters[(date(2026, 3, 6), "email_opens", "")] == 1
    assert counters[(date(2026, 3, 6), "email_clicks", "")] == 1
    assert counters[(date(2026, 3, 1), "leads", "")] == 1
    assert not any(metric == "visitors" for _, metric, _ in counters)


def test_tally_is_pure_and_skips_bots() -> None:
    facts = [
        EventFacts(at(2, 23), "pageview", False, 1, " Spring "),
        EventFacts(at(2, 23), "pageview", True, 2, "spring"),
        EventFacts(at(3, 0), "email_click", False, None, None),
    ]
    counts, seen = tally(facts)
    assert counts == {
        (date(2026, 3, 2), "pageviews", ""): 1,
        (date(2026, 3, 3), "email_clicks", ""): 1,
    }
    assert seen == {("", date(2026, 3, 2), 1), ("spring", date(2026, 3, 2), 1)}


def test_settle_counts_leads_stage_changes_and_campaign_leads(app: Flask, site: Site) -> None:
    with app.app_context():
        store_rows(
            [
                stamped(
                    site,
                    "d",
                    at(7, 9),
                    url="https://example.com/?utm_campaign=Webinar",
                ),
                stamped(site, "d", at(7, 10), kind="identify", email="d@example.com"),
            ]
        )
        contact = db.session.scalar(select(Contact).where(Contact.email == "d@example.com"))
        contact.created_at = at(7)
        other = Contact(email="e@example.com", created_at=at(8), updated_at=at(8))
        db.session.add(other)
        db.session.flush()
        for cid, stage, day in ((contact.id, "mql", 8), (other.id, "mql", 8), (other.id, "sql", 9)):
            db.session.add(
                StageChange(contact_id=cid, to_stage=stage, cause="test", created_at=at(day))
            )
        db.session.commit()
        with db.engine.begin() as conn:
            settle(conn, date(2026, 3, 1), date(2026, 3, 31))
            settle(conn, date(2026, 3, 1), date(2026, 3, 31))  # again: replaced, not added
            counters = daily(conn, date(2026, 3, 1), date(2026, 3, 31))
    assert counters[(date(2026, 3, 7), "leads", "")] == 1
    assert counters[(date(2026, 3, 7), "campaign_leads", "webinar")] == 1
    assert counters[(date(2026, 3, 8), "leads", "")] == 1
    assert counters[(date(2026, 3, 8), "stage", "mql")] == 2
    assert counters[(date(2026, 3, 9), "stage", "sql")] == 1
