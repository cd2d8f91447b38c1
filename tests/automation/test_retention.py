"""Retention: old raw events go once the rollups hold their days; points stay, detached."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from sqlalchemy import select

from automation.retention import cutoff, purge_expired_events
from tracker.automation_models import PointsEntry
from tracker.db import db
from tracker.models import Contact, Event
from tracker.sales_models import RollupDay

NOW = datetime(2025, 7, 31, 12, 0, tzinfo=UTC)


def test_cutoff_goes_back_calendar_months_and_clamps_to_the_month_end():
    assert cutoff(NOW, 1) == datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    assert cutoff(NOW, 5) == datetime(2025, 2, 28, 12, 0, tzinfo=UTC)
    assert cutoff(NOW, 19) == datetime(2023, 12, 31, 12, 0, tzinfo=UTC)


def add_event(contact_id: int | None, when: datetime, utm: str | None = None) -> int:
    event = Event(
        uuid=uuid.uuid4(),
        contact_id=contact_id,
        type="pageview",
        path="/",
        utm_campaign=utm,
        occurred_at=when,
    )
    db.session.add(event)
    db.session.flush()
    return event.id


def build(app, now: datetime = NOW) -> dict[str, int]:
    """Events 200 days ago (rolled up), 199 days ago (not rolled up) and yesterday."""
    old = (now - timedelta(days=200)).replace(hour=0, minute=0, second=0, microsecond=0)
    with app.app_context():
        contact = Contact(email="a@x.io")
        db.session.add(contact)
        db.session.flush()
        ids = {
            "old": add_event(contact.id, old + timedelta(hours=9)),
            "old_anonymous": add_event(None, old + timedelta(hours=10)),
            "old_touch": add_event(contact.id, old + timedelta(hours=11), "spring"),
            "not_rolled_up": add_event(contact.id, old + timedelta(days=1, hours=9)),
            "recent": add_event(contact.id, now - timedelta(days=1)),
        }
        for key in ("old", "recent"):
            db.session.add(
                PointsEntry(
                    contact_id=contact.id, event_id=ids[key], kind="engagement", delta=5,
                    reason="rule", created_at=old,
                )
            )  # fmt: skip
        for day in (old.date(), (now - timedelta(days=1)).date()):
            db.session.add(RollupDay(day=day, metric="pageviews", key="", value=2))
        db.session.commit()
        return ids


def remaining(app) -> tuple[set[int], list[int | None]]:
    with app.app_context():
        events = set(db.session.scalars(select(Event.id)))
        points = db.session.scalars(select(PointsEntry.event_id).order_by(PointsEntry.id)).all()
        return events, points


def test_old_events_of_rolled_up_days_go_and_their_points_stay_detached(app):
    ids = build(app)
    with app.app_context():
        dry = purge_expired_events(db.engine, 3, NOW, dry_run=True)
    assert dry.deleted == 2 and remaining(app)[0] == set(ids.values())
    with app.app_context():
        result = purge_expired_events(db.engine, 3, NOW, chunk=1)
    assert (result.deleted, result.points_detached) == (2, 1)
    assert result.uncovered_days == {(NOW - timedelta(days=199)).date()}
    events, points = remaining(app)
    assert events == {ids["old_touch"], ids["not_rolled_up"], ids["recent"]}
    assert points == [None, ids["recent"]]
    with app.app_context():
        assert db.session.scalar(select(Contact.email)) == "a@x.io"


def test_zero_months_keeps_everything(app):
    ids = build(app)
    with app.app_context():
        assert purge_expired_events(db.engine, 0, NOW).deleted == 0
    assert remaining(app)[0] == set(ids.values())


def test_the_command_counts_then_deletes_and_the_job_follows_the_setting(app):
    from tests.conftest import make_app
    from tracker.models import utcnow

    ids = build(app, utcnow())
    runner = CliRunner()
    with app.app_context():
        refused = runner.invoke(app.cli, ["events", "purge"])
        assert refused.exit_code == 1 and "RETENTION_MONTHS is 0" in refused.output
        dry = runner.invoke(app.cli, ["events", "purge", "--months", "3", "--dry-run"])
        assert dry.exit_code == 0, dry.output
    assert "events from before" in dry.output and "would be deleted" in dry.output
    assert remaining(app)[0] == set(ids.values())
    configured = make_app(app.config["DATABASE_URL"], app.config["REDIS_URL"], RETENTION_MONTHS=3)
    with configured.app_context():
        from automation.jobs import apply_retention

        done = apply_retention()
    assert done == {"events": 2, "points_detached": 1}
    assert ids["old"] not in remaining(app)[0]
