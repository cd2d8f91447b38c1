"""The RQ worker that `flask --app wsgi worker` runs, inside the app context."""

from __future__ import annotations

import logging

from flask import Flask
from rq import Queue, Worker
from rq.job import Job

from tracker.db import db
from tracker.redis_conn import connect_for_jobs


class AppWorker(Worker):
    """An RQ worker whose forked work horses open their own database connections."""

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # Pooled connections must never be shared across fork.
        db.engine.dispose(close=False)
        super().main_work_horse(job, queue)


def run_worker(app: Flask, queues: list[str], burst: bool = False) -> bool:
    """Work `queues` (in priority order) until stopped, or until empty with `burst`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    connection = connect_for_jobs(app.config["REDIS_URL"])
    worker = AppWorker(
        [Queue(name, connection=connection) for name in queues], connection=connection
    )
    with app.app_context():
        return worker.work(burst=burst)
