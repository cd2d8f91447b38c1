"""The RQ worker that `flask --app wsgi worker` runs, inside the app context.

By default jobs run in the worker process itself instead of a forked child:
a fork per job costs more than most of our jobs (RQ's own bookkeeping already
caps a worker near a hundred jobs a second here), and only a long-lived
process can keep its SMTP and database connections open across jobs.
`--fork` restores RQ's isolation, one child per job.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType

from flask import Flask
from rq import Queue, SimpleWorker, Worker
from rq.job import Job

from tracker.db import db
from tracker.redis_conn import connect_for_jobs

DEFAULT_QUEUES = ("ingest", "default", "mail", "maintenance")
"""Queues a worker takes when none are named, highest priority first."""


class ForkingAppWorker(Worker):
    """An RQ worker whose forked work horses open their own database connections."""

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # Pooled connections must never be shared across fork.
        db.engine.dispose(close=False)
        super().main_work_horse(job, queue)


_stopping = threading.Event()


def stopping() -> bool:
    """True once this worker was asked to stop: long-running jobs end at their next step.

    A forking worker kills its child on the second signal; a job running in the
    worker itself cannot be killed, so jobs that loop (ingestion reads the stream
    for a minute) look here and end early instead, leaving nothing unacknowledged.
    """
    return _stopping.is_set()


class AppWorker(SimpleWorker):
    """An RQ worker that runs each job in its own process, keeping connections warm."""

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        _stopping.set()
        super().request_stop(signum, frame)


def run_worker(app: Flask, queues: list[str], burst: bool = False, fork: bool = False) -> bool:
    """Work `queues` (in priority order) until stopped, or until empty with `burst`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    _stopping.clear()
    connection = connect_for_jobs(app.config["REDIS_URL"])
    worker_class = ForkingAppWorker if fork else AppWorker
    worker = worker_class(
        [Queue(name, connection=connection) for name in queues], connection=connection
    )
    with app.app_context():
        return worker.work(burst=burst)
