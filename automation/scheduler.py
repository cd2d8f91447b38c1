"""The scheduler process: it only enqueues, and only one instance ticks at a time."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import redis
from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

from automation.broadcasts import enqueue_due_decisions
from automation.jobs import INGEST_QUEUE
from automation.outgoing import enqueue_due_messages
from automation.sequence_runner import ENROLMENT_BATCH, enqueue_due_enrolments
from tracker.redis_conn import get_redis

log = logging.getLogger(__name__)

LOCK_KEY = "cl:scheduler:leader"
# Extend the lock only while we still hold it: compare-and-expire in one step.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class LeaderLock:
    """A Redis lease: whoever holds it ticks; it lapses if its holder dies."""

    def __init__(self, client: redis.Redis, ttl_ms: int, key: str = LOCK_KEY) -> None:
        self.redis = client
        self.ttl_ms = ttl_ms
        self.key = key
        self.token = uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)

    def acquire_or_renew(self) -> bool:
        """Return True when this instance holds the lease for the next `ttl_ms`."""
        if self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
            return True
        return bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        """Give the lease up at once (on a clean shutdown)."""
        if self.redis.get(self.key) == self.token.encode():
            self.redis.delete(self.key)


def ending_soon(
    started: list[datetime | None], now: datetime, job_seconds: float, lead_seconds: float
) -> int:
    """How many jobs started at these times are within `lead_seconds` of their end."""
    cutoff = now - timedelta(seconds=max(job_seconds - lead_seconds, 0))
    return sum(
        1
        for begun in started
        if begun is not None and (begun if begun.tzinfo else begun.replace(tzinfo=UTC)) < cutoff
    )


def ensure_ingestion(
    client: redis.Redis, concurrency: int, job_seconds: float, lead_seconds: float = 0.0
) -> int:
    """Enqueue ingestion jobs until `concurrency` are queued or running; return how many.

    A running job within `lead_seconds` of its end no longer counts, so its
    successor is already queued when it stops and the stream is never left unread.
    """
    queue = Queue(INGEST_QUEUE, connection=client)
    started = StartedJobRegistry(queue=queue)
    started.cleanup()  # jobs of workers that died no longer count as running
    ending = 0
    if lead_seconds:
        jobs = Job.fetch_many(started.get_job_ids(), connection=client)
        ending = ending_soon(
            [j.started_at for j in jobs if j], datetime.now(UTC), job_seconds, lead_seconds
        )
    active = started.count - ending + queue.count
    added = 0
    while active + added < concurrency:
        queue.enqueue(
            "automation.jobs.ingest",
            job_timeout=int(job_seconds) + 120,
            result_ttl=60,
            failure_ttl=86400,
        )
        added += 1
    return added


MAINTENANCE_QUEUE = "maintenance"
"""Queue of the long periodic jobs, so a full rebuild never holds up mail or actions."""

PERIODIC: tuple[tuple[str, int, str], ...] = (
    ("automation.jobs.sweep_action_runs", 60, "default"),
    ("automation.jobs.repair_identities", 60, "default"),
    ("automation.jobs.apply_decay", 3600, MAINTENANCE_QUEUE),
    ("automation.jobs.rebuild_segments", 900, MAINTENANCE_QUEUE),
    ("automation.jobs.settle_rollups", 60, MAINTENANCE_QUEUE),
    ("automation.jobs.refresh_attribution", 60, MAINTENANCE_QUEUE),
    ("automation.jobs.apply_retention", 86400, MAINTENANCE_QUEUE),
)
"""Jobs enqueued every so many seconds: (dotted name, interval, queue)."""


def enqueue_periodic(
    client: redis.Redis, periodic: tuple[tuple[str, int, str], ...] = PERIODIC
) -> int:
    """Enqueue each periodic job whose interval has passed; return how many.

    The interval is a Redis key with that lifetime, so a restarted or newly
    elected scheduler keeps the rhythm instead of starting over.
    """
    count = 0
    for name, seconds, queue in periodic:
        if client.set(f"cl:periodic:{name}", "1", nx=True, ex=seconds):
            Queue(queue, connection=client).enqueue(
                name, job_timeout=max(seconds * 5, 300), result_ttl=600
            )
            count += 1
    return count


def tick(app: Flask, lock: LeaderLock) -> None:
    """One scheduler beat: if this instance leads, enqueue what is due."""
    client = get_redis(app)
    try:
        if not lock.acquire_or_renew():
            return
        ensure_ingestion(
            client,
            app.config["INGEST_CONCURRENCY"],
            app.config["INGEST_JOB_SECONDS"],
            lead_seconds=2 * app.config["SCHEDULER_TICK_SECONDS"],
        )
        enqueue_periodic(client)
        with app.app_context():
            enqueue_due_decisions(client)
            enqueue_due_messages(client, datetime.now(UTC), app.config["MAIL_BATCH"])
            enqueue_due_enrolments(client, datetime.now(UTC), ENROLMENT_BATCH)
    except redis.RedisError as e:
        log.warning("scheduler tick skipped, Redis unavailable: %s", e)


def run(app: Flask) -> None:
    """Run the scheduler in the foreground until interrupted."""
    tick_seconds = app.config["SCHEDULER_TICK_SECONDS"]
    lock = LeaderLock(get_redis(app), ttl_ms=int(tick_seconds * 5000))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per tick is noise
    scheduler = BlockingScheduler()
    scheduler.add_job(
        tick,
        "interval",
        seconds=tick_seconds,
        args=[app, lock],
        max_instances=1,
        coalesce=True,
        id="tick",
    )
    log.info("scheduler started, ticking every %ss", tick_seconds)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        lock.release()
