"""Benchmark what one RQ job costs: no-op jobs per second through one worker.

    .venv/bin/python bench/jobs.py [--jobs 2000]

Starts a private Redis, enqueues N jobs that do nothing (`builtins.len`), and
times one worker draining them in burst mode: first the in-process worker that
`flask --app wsgi worker` runs (RQ's SimpleWorker), then RQ's forking worker
(`worker --fork`, a child process per job) on a tenth as many jobs. This is the
floor under any job, and why send jobs and sequence steps take a batch of ids.
The last line is `simple_jobs_per_s=… fork_jobs_per_s=… ms_per_job=…`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def drain(worker_class: type, client: object, jobs: int) -> float:
    """Jobs per second one `worker_class` worker gets through."""
    from rq import Queue

    queue = Queue("bench-jobs", connection=client)
    queue.enqueue_many(
        [Queue.prepare_data("builtins.len", args=("ab",), result_ttl=0) for _ in range(jobs)]
    )
    worker = worker_class([queue], connection=client)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    return jobs / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="no-op jobs for the worker")
    args = parser.parse_args()
    from rq import SimpleWorker, Worker

    from tracker.redis_conn import connect_for_jobs

    with common.Cleanup() as cleanup:
        url = common.start_redis(cleanup, cleanup.tempdir("cl-bench-jobs-"))
        client = connect_for_jobs(url)
        simple = drain(SimpleWorker, client, args.jobs)
        print(f"in-process worker: {simple:,.0f} no-op jobs/s ({1000 / simple:.1f} ms a job)")
        forking = drain(Worker, client, max(args.jobs // 10, 20))
        print(f"forking worker:    {forking:,.0f} no-op jobs/s ({1000 / forking:.1f} ms a job)")
    per_job = 1000 / simple
    print(f"simple_jobs_per_s={simple:.0f} fork_jobs_per_s={forking:.0f} ms_per_job={per_job:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
