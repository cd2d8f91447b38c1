"""The scheduler enqueues ingestion, one scheduler ticks, and a real RQ worker runs the job."""

from __future__ import annotations

from rq import Queue
from sqlalchemy import func, select

from automation.jobs import INGEST_QUEUE
from automation.scheduler import LeaderLock, ensure_ingestion, tick
from automation.worker import run_worker
from tests.conftest import event, post_events
from tracker.db import db
from tracker.models import Event
from tracker.redis_conn import get_redis


def test_only_one_scheduler_holds_the_lease(app):
    redis = get_redis(app)
    first, second = LeaderLock(redis, ttl_ms=10_000), LeaderLock(redis, ttl_ms=10_000)
    assert first.acquire_or_renew()
    assert not second.acquire_or_renew()
    assert first.acquire_or_renew()  # renewing is fine
    first.release()
    assert second.acquire_or_renew()
    assert not first.acquire_or_renew()


def test_a_dead_leaders_lease_lapses(app):
    import time

    redis = get_redis(app)
    dead, alive = LeaderLock(redis, ttl_ms=1000), LeaderLock(redis, ttl_ms=1000)
    assert dead.acquire_or_renew()
    assert not alive.acquire_or_renew()
    time.sleep(1.1)
    assert alive.acquire_or_renew()


def test_ingestion_jobs_are_kept_at_the_configured_concurrency(app):
    redis = get_redis(app)
    assert ensure_ingestion(redis, concurrency=2, job_seconds=5) == 2
    assert ensure_ingestion(redis, concurrency=2, job_seconds=5) == 0
    assert Queue(INGEST_QUEUE, connection=redis).count == 2


def test_a_follower_scheduler_enqueues_nothing(app):
    redis = get_redis(app)
    leader, follower = LeaderLock(redis, ttl_ms=5000), LeaderLock(redis, ttl_ms=5000)
    assert leader.acquire_or_renew()
    tick(app, follower)
    assert Queue(INGEST_QUEUE, connection=redis).count == 0
    tick(app, leader)
    assert Queue(INGEST_QUEUE, connection=redis).count == app.config["INGEST_CONCURRENCY"]


def test_a_real_worker_runs_the_ingestion_job(app, client, site):
    app.config["INGEST_JOB_SECONDS"] = 0.5
    post_events(client, site.key, [event(), event("custom", name="signup")])
    tick(app, LeaderLock(get_redis(app), ttl_ms=5000))
    run_worker(app, [INGEST_QUEUE], burst=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Event)) == 2
    assert get_redis(app).xlen(app.config["EVENT_STREAM"]) == 0


def test_periodic_jobs_are_enqueued_once_per_interval(app):
    from automation.scheduler import enqueue_periodic

    redis = get_redis(app)
    periodic = (("automation.jobs.sweep_action_runs", 60, "default"),)
    assert enqueue_periodic(redis, periodic) == 1
    assert enqueue_periodic(redis, periodic) == 0  # not due again for a minute
    assert Queue("default", connection=redis).count == 1


def test_a_queued_run_whose_job_was_lost_is_enqueued_again(app, site):
    from datetime import timedelta

    from automation.jobs import sweep_action_runs
    from tracker.automation_models import ActionRun, Threshold
    from tracker.models import Contact, utcnow

    with app.app_context():
        contact = Contact(email="ada@example.com", traits={})
        threshold = Threshold(
            name="MQL", score="total", minimum=1, actions=[{"type": "notify_owner"}]
        )
        db.session.add_all([contact, threshold])
        db.session.flush()
        old = utcnow() - timedelta(minutes=10)
        db.session.add_all(
            [
                ActionRun(
                    threshold_id=threshold.id,
                    contact_id=contact.id,
                    firing=1,
                    position=0,
                    type="notify_owner",
                    status="queued",
                    created_at=old,
                ),
                ActionRun(
                    threshold_id=threshold.id,
                    contact_id=contact.id,
                    firing=2,
                    position=0,
                    type="notify_owner",
                    status="queued",
                    created_at=utcnow(),
                ),
            ]
        )
        db.session.commit()
        assert sweep_action_runs() == 1  # the old one; the new one may still be in flight
        assert sweep_action_runs() == 0  # its job is queued now
    assert len(Queue("default", connection=get_redis(app)).job_ids) == 1


def test_a_job_near_its_end_no_longer_counts_so_its_successor_is_queued():
    from datetime import UTC, datetime, timedelta

    from automation.scheduler import ending_soon

    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    started = [
        now - timedelta(seconds=30),
        now - timedelta(seconds=59),
        (now - timedelta(seconds=58.5)).replace(tzinfo=None),
        None,
    ]
    assert ending_soon(started, now, job_seconds=60, lead_seconds=2) == 2
    assert ending_soon(started, now, job_seconds=60, lead_seconds=0) == 0


def test_a_stopping_worker_ends_a_running_ingestion_job_at_its_next_batch(
    app, database_url, redis_url
):
    """One SIGTERM: the job in hand (here, one that would read for two minutes) ends early."""
    import os
    import subprocess
    import sys
    import time

    from rq.job import Job
    from rq.registry import StartedJobRegistry

    redis = get_redis(app)
    queue = Queue(INGEST_QUEUE, connection=redis)
    job = queue.enqueue("automation.jobs.ingest", 120, job_timeout=300)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "test-secret",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "tracker:create_app()", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):  # wait until the job is running
            if job.id in StartedJobRegistry(queue=queue).get_job_ids():
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the worker never started the job")
        worker.terminate()
        assert worker.wait(60) == 0  # well before the job's two minutes
    finally:
        if worker.poll() is None:
            worker.kill()
    assert Job.fetch(job.id, connection=redis).get_status() == "finished"
