"""Benchmark ingestion: one StreamIngestor draining a pre-filled stream, against plain INSERTs.

    .venv/bin/python bench/ingest.py [--events 50000] [--rounds 3] [--budget 35]
                                     [--profile] [--statements] [--databases sqlite,pg]

For SQLite (a temp file) and PostgreSQL (a throwaway database on 127.0.0.1:5432,
skipped when it does not answer): fill a private Redis stream with N stamped events,
time one StreamIngestor (batch 1000) draining it with `run()`, the loop an ingestion
job runs, and check the events table holds N rows; then, on a fresh schema in the same
kind of database, time the rows ingestion stored inserted again with plain multi-row
INSERTs (no Redis, no upserts, 1000 rows per transaction; their visitors and contacts
copied first, untimed). Each database gets `--rounds` such pairs, every one on fresh
schemas, and its figures are their medians: on a shared machine one pair can be off by
half. Everything it starts or creates is removed at the end.
The last line is machine-readable `key=value` figures.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

BATCH = 1000
TARGET_EPS = 5000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per database")
    parser.add_argument(
        "--budget",
        type=float,
        default=35.0,
        help="most seconds one drain or baseline may take before it is cut short",
    )
    parser.add_argument("--databases", default="sqlite,pg", help="comma-separated: sqlite,pg")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="ingest + plain insert pairs per database; the figures are their medians",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the ingest loop under cProfile and print where the time goes",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="time every SQL statement of the ingest loop and print the costliest kinds",
    )
    parser.add_argument(
        "--collect-eps",
        type=float,
        default=None,
        help="events/s bench/collect.py measured, to compare against",
    )
    return parser.parse_args()


def fill_stream(client: Any, stream: str, entries: list[bytes]) -> float:
    from tracker.stream import FIELD

    started = time.perf_counter()
    for start in range(0, len(entries), BATCH):
        pipe = client.pipeline(transaction=False)
        for entry in entries[start : start + BATCH]:
            pipe.xadd(stream, {FIELD: entry})
        pipe.execute()
    return time.perf_counter() - started


def count_events() -> int:
    from sqlalchemy import func, select

    from tracker.db import db
    from tracker.models import Event

    try:
        return db.session.scalar(select(func.count()).select_from(Event))
    finally:
        db.session.remove()


class StatementTimes:
    """Wall time per kind of SQL statement (its first words), while attached to an engine."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        @event.listens_for(engine, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            conn.info["bench_started"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            took = time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())
            kind = " ".join(statement.split())[:90]
            entry = self.totals.setdefault(kind, [0, 0.0])
            entry[0] += 1
            entry[1] += took

    def report(self) -> None:
        total = sum(t for _, t in self.totals.values())
        print(f"  --- SQL statements: {total:.2f}s in all, costliest kinds first ---")
        for kind, (count, took) in sorted(self.totals.items(), key=lambda i: -i[1][1])[:15]:
            print(f"    {took:7.2f}s {count:6d}x  {kind}")


def time_ingest(
    app: Any, n: int, budget: float, profile: bool, statements: bool = False
) -> dict[str, Any]:
    """Drain the stream with one StreamIngestor; return figures."""
    from automation.ingest import StreamIngestor
    from tracker.db import db
    from tracker.redis_conn import get_redis

    client = get_redis(app)
    stream = app.config["EVENT_STREAM"]
    timer = StatementTimes() if statements else None
    with app.app_context():
        if timer:
            timer.attach(db.engine)
        ingestor = StreamIngestor(
            client, stream, app.config["INGEST_GROUP"], consumer="bench", batch=BATCH
        )
        ingestor.ensure_group()
        profiler = cProfile.Profile() if profile else None
        totals = {"read": 0, "batches": 0}
        cut = False
        started = time.perf_counter()
        last_print = [started]

        def on_batch(result: Any) -> None:
            totals["read"] += result.read
            totals["batches"] += 1
            now = time.perf_counter()
            if now - last_print[0] >= 5:
                rate = totals["read"] / (now - started)
                print(f"    … {totals['read']:,} read and stored, {rate:,.0f} events/s")
                last_print[0] = now

        if profiler:
            profiler.enable()
        # The loop an ingestion job runs (a reader thread one batch ahead of the storing),
        # until the stream is drained or the budget is spent.
        total = ingestor.run(budget, on_batch=on_batch, should_stop=lambda: totals["read"] >= n)
        read, stored, dead, batches = total.read, total.stored, total.dead, totals["batches"]
        cut = read < n
        elapsed = time.perf_counter() - started
        if profiler:
            profiler.disable()
        if timer:
            timer.report()
        in_table = count_events()
    left = client.xlen(stream)
    return {
        "seconds": elapsed,
        "read": read,
        "stored": stored,
        "dead": dead,
        "batches": batches,
        "in_table": in_table,
        "left_in_stream": left,
        "cut": cut,
        "eps": in_table / elapsed if elapsed else 0.0,
        "profiler": profiler,
    }


def stored_rows(app: Any) -> dict[str, list[dict[str, Any]]]:
    """The contacts, visitors and events the ingest run stored, in the order it stored them."""
    from sqlalchemy import select

    from tracker.db import db
    from tracker.models import Contact, Event, Visitor

    with app.app_context(), db.engine.connect() as conn:
        return {
            model.__tablename__: [
                dict(row)
                for row in conn.execute(
                    select(model.__table__).order_by(model.__table__.c.id)
                ).mappings()
            ]
            for model in (Contact, Visitor, Event)
        }


def time_plain_insert(
    app: Any, stored: dict[str, list[dict[str, Any]]], budget: float
) -> dict[str, Any]:
    """Insert the events ingestion stored, as they are, with plain multi-row INSERTs:
    1000 rows per transaction, no upserts, no conflict handling. Their contacts and
    visitors are copied first, untimed, so every row refers to what it did."""
    from sqlalchemy import insert

    from tracker.db import db
    from tracker.models import Contact, Event, Visitor

    with app.app_context():
        with db.engine.begin() as conn:
            for model in (Contact, Visitor):
                if stored[model.__tablename__]:
                    conn.execute(insert(model.__table__), stored[model.__tablename__])
        # The database numbers the events again, as it did for ingestion.
        rows = [{k: v for k, v in row.items() if k != "id"} for row in stored["events"]]
        table = Event.__table__
        inserted = 0
        cut = False
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            with db.engine.begin() as conn:
                # executemany of one plain INSERT: SQLAlchemy 2 sends it as cached
                # multi-row VALUES batches ("insertmanyvalues").
                conn.execute(insert(table), rows[start : start + BATCH])
            inserted += len(rows[start : start + BATCH])
            if time.perf_counter() - started > budget:
                cut = True
                break
        elapsed = time.perf_counter() - started
        in_table = count_events()
    return {
        "seconds": elapsed,
        "inserted": inserted,
        "in_table": in_table,
        "cut": cut,
        "eps": inserted / elapsed if elapsed else 0.0,
    }


def print_profile(profiler: cProfile.Profile, label: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("cumulative")
    stats.print_stats(28)
    print(f"  --- cProfile of the {label} ingest loop (cumulative, top 28) ---")
    for line in out.getvalue().splitlines():
        if line.strip() and not line.startswith("   Ordered by"):
            print("  " + line)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(15)
    print(f"  --- cProfile of the {label} ingest loop (own time, top 15) ---")
    for line in out.getvalue().splitlines()[4:]:
        if line.strip():
            print("  " + line)


def bench_database(
    label: str, make_url: Any, redis_url: str, entries: list[bytes], args: argparse.Namespace
) -> dict[str, float]:
    """`--rounds` of ingest then plain insert on one kind of database; return the medians."""
    print(f"\n== {label}")
    rounds = []
    for number in range(1, args.rounds + 1):
        print(f" round {number} of {args.rounds}")
        rounds.append(bench_round(label, make_url, redis_url, entries, args, number))
    ratios = [r["ingest_eps"] / r["plain_insert_eps"] for r in rounds if r["plain_insert_eps"]]
    figures = {
        "ingest_eps": statistics.median(r["ingest_eps"] for r in rounds),
        "plain_insert_eps": statistics.median(r["plain_insert_eps"] for r in rounds),
        "ratio": statistics.median(ratios) if ratios else 0.0,
        "ok": all(r["ok"] for r in rounds),
    }
    if args.rounds > 1:
        print(
            f"  {label}, median of {args.rounds} rounds: ingest "
            f"{common.fmt_rate(figures['ingest_eps'])}/s, plain "
            f"{common.fmt_rate(figures['plain_insert_eps'])}/s, ratio {figures['ratio']:.2f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    return figures


def bench_round(
    label: str,
    make_url: Any,
    redis_url: str,
    entries: list[bytes],
    args: argparse.Namespace,
    number: int,
) -> dict[str, float]:
    """Ingest then plain-insert on one kind of database, each on a fresh schema."""
    from tracker.db import db
    from tracker.redis_conn import get_redis

    n = len(entries)
    url = make_url(f"ingest{number}")
    app = common.make_app(url, redis_url)
    common.migrate(app)
    site_id, _ = common.create_site(app, ["127.0.0.1"])
    if site_id != json.loads(entries[0])["site"]:
        raise SystemExit(f"unexpected site id {site_id}")
    client = get_redis(app)
    client.flushall()
    filled = fill_stream(client, app.config["EVENT_STREAM"], entries)
    print(
        f"  stream filled: {client.xlen(app.config['EVENT_STREAM']):,} entries "
        f"in {filled:.1f}s (pipelines of {BATCH}, not timed below)"
    )
    print(f"  ingesting with one StreamIngestor, batch {BATCH}, run() until the stream is empty …")
    ingest = time_ingest(app, n, args.budget, args.profile, args.statements)
    if ingest["cut"]:  # partial drain: what was read must be in the table, the rest left
        ok = (
            ingest["in_table"] == ingest["read"] - ingest["dead"]
            and ingest["left_in_stream"] == n - ingest["read"]
        )
    else:
        ok = ingest["in_table"] == n and ingest["left_in_stream"] == 0 and not ingest["dead"]
    print(
        f"  ingest: {ingest['in_table']:,} events in {ingest['seconds']:.2f}s = "
        f"{common.fmt_rate(ingest['eps'])} events/s ({ingest['batches']} batches, "
        f"{ingest['dead']} dead-lettered)"
    )
    if ingest["stored"] != ingest["in_table"]:
        print(
            f"  note: run() reported {ingest['stored']:,} stored but the table holds "
            f"{ingest['in_table']:,} (store_batch counts with cursor.rowcount)"
        )
    want = ingest["read"] - ingest["dead"] if ingest["cut"] else n
    print(
        f"  check: events table holds {ingest['in_table']:,} (want {want:,}), stream has "
        f"{ingest['left_in_stream']:,} left -> {'OK' if ok else 'MISMATCH'}"
        + (f"  [cut short after {args.budget:.0f}s budget]" if ingest["cut"] else "")
    )
    if ingest["profiler"]:
        print_profile(ingest["profiler"], label)
    stored = stored_rows(app)
    with app.app_context():
        db.engine.dispose()

    url = make_url(f"plain{number}")
    app = common.make_app(url, redis_url)
    common.migrate(app)
    common.create_site(app, ["127.0.0.1"])
    print(
        f"  plain insert baseline on a fresh schema: the {len(stored['events']):,} events "
        f"ingestion stored (their {len(stored['visitors']):,} visitors and "
        f"{len(stored['contacts']):,} contacts copied first, untimed), INSERT … VALUES "
        f"executemany, {BATCH} rows per transaction, no Redis, no upserts …"
    )
    plain = time_plain_insert(app, stored, args.budget)
    print(
        f"  plain insert: {plain['inserted']:,} rows in {plain['seconds']:.2f}s = "
        f"{common.fmt_rate(plain['eps'])} rows/s (table holds {plain['in_table']:,})"
        + (f"  [cut short after {args.budget:.0f}s budget]" if plain["cut"] else "")
    )
    with app.app_context():
        db.engine.dispose()

    ratio = ingest["eps"] / plain["eps"] if plain["eps"] else 0.0
    verdicts = [
        f"ingest >= {TARGET_EPS:,}/s: {'met' if ingest['eps'] >= TARGET_EPS else 'MISSED'}",
        f">= 0.5 x plain: {'met' if ratio >= 0.5 else 'MISSED'}",
    ]
    if args.collect_eps:
        met = "met" if ingest["eps"] > args.collect_eps else "MISSED"
        verdicts.append(f"> collect {common.fmt_rate(args.collect_eps)}/s: {met}")
    print(f"  {label}: ingest/plain = {ratio:.2f}  [targets: {'; '.join(verdicts)}]")
    return {"ingest_eps": ingest["eps"], "plain_insert_eps": plain["eps"], "ok": ok}


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    args = parse_args()
    wanted = {d.strip() for d in args.databases.split(",") if d.strip()}
    results: dict[str, dict[str, float]] = {}
    print(
        f"ingest benchmark: {args.events:,} events per database, one worker, "
        f"batch {BATCH}, {common.cpu_count()} CPUs (Redis and the database share them "
        "with the ingest process)"
    )
    with common.Cleanup() as cleanup:
        tmp = cleanup.tempdir("cl-bench-ingest-")
        redis_url = common.start_redis(cleanup, tmp)
        started = time.perf_counter()
        # Site ids start at 1 in every fresh schema, so one set of entries serves all.
        entries = common.stamped_events(args.events, site_id=1)
        sizes = sum(map(len, entries)) / len(entries)
        print(
            f"built {len(entries):,} stamped events ({sizes:.0f} bytes each on average) "
            f"via parse_event + _stamp fields + stream.encode in "
            f"{time.perf_counter() - started:.1f}s; mix: ~66% pageview, ~1% identify, "
            f"{len({json.loads(e)['visitor'] for e in entries}):,} visitors, ~3% bots"
        )

        if "sqlite" in wanted:

            def sqlite_url(tag: str) -> str:
                return f"sqlite:///{tmp / f'{tag}.db'}"

            results["sqlite"] = bench_database(
                "SQLite (temp file)", sqlite_url, redis_url, entries, args
            )
        if "pg" in wanted:
            if common.pg_answers():
                name = f"bench_{os.getpid()}"
                cleanup.add(f"PostgreSQL database {name}", lambda: common.pg_drop(name))

                def pg_url(tag: str) -> str:
                    # Recreated for each phase: a fresh schema on the same server.
                    return common.pg_create(name)

                results["pg"] = bench_database(
                    f"PostgreSQL (database {name})", pg_url, redis_url, entries, args
                )
            else:
                print("\n== PostgreSQL does not answer at 127.0.0.1:5432 as postgres; skipped")

    if not results:
        print("no database measured")
        return 1
    worst = min(results, key=lambda k: results[k]["ingest_eps"])
    figures = {
        "ingest_eps": results[worst]["ingest_eps"],
        "plain_insert_eps": results[worst]["plain_insert_eps"],
    }
    for name, values in results.items():
        figures[f"{name}_ingest_eps"] = values["ingest_eps"]
        figures[f"{name}_plain_insert_eps"] = values["plain_insert_eps"]
        figures[f"{name}_ratio"] = values["ratio"]
    all_ok = all(v["ok"] for v in results.values())
    print(f"\nslowest ingest: {worst}; counts {'verified' if all_ok else 'DID NOT MATCH'}")
    print(
        " ".join(
            f"{k}={v:.2f}" if k.endswith("ratio") else f"{k}={v:.0f}" for k, v in figures.items()
        )
    )
    return 0 if all_ok else 2


if __name__ == "__main__":
    sys.exit(main())
