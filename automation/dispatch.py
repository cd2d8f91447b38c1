"""Hand queued action runs to RQ workers."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from rq import Queue, Retry

ACTIONS_QUEUE = "default"
"""Queue the action jobs (owner notifications, webhooks, enrolments) go to."""

RETRY_INTERVALS = [10, 30, 120, 600, 1800]
"""Seconds between the attempts of a failing action job (backoff)."""


def enqueue_action_runs(client: redis.Redis, run_ids: Iterable[int]) -> int:
    """Enqueue one job per action run; a run claimed twice still runs once (see jobs)."""
    queue = Queue(ACTIONS_QUEUE, connection=client)
    count = 0
    for run_id in run_ids:
        queue.enqueue(
            "automation.jobs.run_action",
            run_id,
            job_id=f"action-run-{run_id}",
            retry=Retry(max=len(RETRY_INTERVALS), interval=RETRY_INTERVALS),
            result_ttl=3600,
            failure_ttl=7 * 86400,
        )
        count += 1
    return count
