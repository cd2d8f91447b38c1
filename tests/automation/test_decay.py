"""Decay: points expire after a window, or scores fade by a percentage every N days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from automation.decay import DecayError, make_policy, percent_drop, percent_due
from automation.decay_runner import run_decay
from tests.automation.test_scoring_pipeline import contact
from tests.conftest import event, ingest_all, post_events
from tracker.automation_models import PointsEntry, ThresholdState
from tracker.db import db
from tracker.models import utcnow

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
RULES = """\
rules:
  - name: Any page
    event: pageview
    points: 10
thresholds:
  - name: Hot
    score: engagement
    at_least: 30
    refire: true
    actions: [{{add_tag: hot}}]
decay:
  - name: {name}
    {policy}
"""


def test_policies_are_checked():
    assert make_policy(1, "w", expire_after_days=90).window_days == 90
    assert make_policy(1, "p", drop_percent=10, every_days=30).percent == 10
    for kwargs in (
        {},
        {"drop_percent": 10},
        {"expire_after_days": 0},
        {"expire_after_days": 30, "drop_percent": 5, "every_days": 7},
        {"drop_percent": 101, "every_days": 1},
    ):
        with pytest.raises(DecayError):
            make_policy(1, "x", **kwargs)


def test_percent_drop_and_due():
    assert percent_drop(100, 10) == -10
    assert percent_drop(5, 10) == -1  # half a point rounds up
    assert percent_drop(0, 50) == 0 and percent_drop(-20, 50) == 0
    policy = make_policy(1, "p", drop_percent=10, every_days=30, last_run_at=NOW)
    assert not percent_due(policy, NOW + timedelta(days=29))
    assert percent_due(policy, NOW + timedelta(days=30))


def load(app, tmp_path, name, policy):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(name=name, policy=policy))
    result = app.test_cli_runner().invoke(args=["automation", "load", str(path)])
    assert result.exit_code == 0, result.output


def score_four_pages(app, client, site):
    post_events(
        client,
        site.key,
        [event("identify", email="ada@example.com")]
        + [event(url=f"https://example.com/p{n}") for n in range(4)],
    )
    ingest_all(app)
    assert contact(app).engagement_score == 40


def test_points_older_than_the_window_expire_once(app, client, site, tmp_path):
    load(app, tmp_path, "Quarter", "expire_after_days: 90")
    score_four_pages(app, client, site)
    with app.app_context():
        ids = db.session.scalars(select(PointsEntry.id).order_by(PointsEntry.id)).all()
        db.session.execute(
            update(PointsEntry)
            .where(PointsEntry.id.in_(ids[:3]))
            .values(created_at=utcnow() - timedelta(days=91))
        )
        db.session.commit()
        for _ in range(2):  # the second run finds nothing left to expire
            with db.engine.begin() as conn:
                run_decay(conn, utcnow())
    assert contact(app).engagement_score == 10
    with app.app_context():
        expired = db.session.scalars(
            select(PointsEntry).where(PointsEntry.reason == "expired")
        ).all()
        assert [e.delta for e in expired] == [-30]
        # Below the line again: a later crossing may fire again (refire).
        assert db.session.scalar(select(ThresholdState.above)) is False


def test_scores_fade_by_a_percentage_when_due(app, client, site, tmp_path):
    load(app, tmp_path, "Monthly fade", "drop_percent: 25\n    every_days: 30")
    score_four_pages(app, client, site)
    with app.app_context():
        with db.engine.begin() as conn:
            run_decay(conn, utcnow())
        assert contact(app).engagement_score == 30
        with db.engine.begin() as conn:
            run_decay(conn, utcnow() + timedelta(days=1))  # not due yet
        assert contact(app).engagement_score == 30
        with db.engine.begin() as conn:
            run_decay(conn, utcnow() + timedelta(days=31))
        assert contact(app).engagement_score == 22  # 30 - 7.5 rounded up
        reasons = db.session.scalars(select(PointsEntry.reason).where(PointsEntry.delta < 0)).all()
        assert reasons == ["decay", "decay"]
