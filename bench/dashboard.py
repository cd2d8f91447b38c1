"""Benchmark the dashboard and the campaign ROI page at 100K contacts and 1M events.

    .venv/bin/python bench/dashboard.py [--database sqlite|postgresql]
        [--contacts 100000] [--events 1000000] [--requests 15] [--profile]

Builds the schema with the migrations in a temp SQLite file (or a throwaway
PostgreSQL database on 127.0.0.1:5432), generates contacts, visitors and events
over 120 days with bench/segments.py's INSERT … SELECT generators, then in Python
stage changes that follow each contact's stage (MQL, SQL, opportunity, customer,
days apart), an opportunity per contact that got that far (won for customers),
three campaigns matching the generated UTM codes, with costs. The rollups are
rebuilt (`automation.rollups.rebuild`, timed), the stored attribution credit of
every contact is computed (`automation.attribution_store.refresh`, timed: what
the job does after a campaign change), and a marketer logs in through the
login form of the Flask test client. Then GET /admin/dashboard (last 30 days) and
GET /admin/reports/roi (linear, no period limit: the page as it first opens) are
each requested twice to warm up and `--requests` times measured.

The last line is `dashboard_ms=… roi_ms=…`: the medians of the warm requests.
Target: under 300 ms each. Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import segments as generated

TARGET_MS = 300.0
LATER = {"mql": 1, "sql": 2, "opportunity": 3, "customer": 4}
"""How far along the lifecycle each generated stage is (nurture and the rest: not at all)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=15, help="measured requests per page")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, request each page once more under cProfile and print the top",
    )
    return parser.parse_args()


def sales_history(engine: Any, now: datetime, seed: int) -> tuple[int, int]:
    """Stage changes and opportunities that match the generated contacts' stages."""
    from sqlalchemy import insert, select

    from tracker.automation_models import StageChange
    from tracker.models import Contact, as_utc
    from tracker.sales_models import Opportunity

    rng = random.Random(seed)
    changes: list[dict[str, Any]] = []
    deals: list[dict[str, Any]] = []
    latest = now - timedelta(minutes=5)
    with engine.connect() as conn:
        contacts = conn.execute(
            select(Contact.id, Contact.created_at, Contact.stage).where(Contact.stage.in_(LATER))
        ).all()
    for contact_id, created_at, stage in contacts:
        at = as_utc(created_at)
        previous = "lead"
        for name in ("mql", "sql", "opportunity", "customer")[: LATER[stage]]:
            at = min(at + timedelta(days=rng.uniform(0.2, 12)), latest)
            changes.append(
                {
                    "contact_id": contact_id,
                    "from_stage": previous,
                    "to_stage": name,
                    "cause": "bench",
                    "created_at": at,
                }
            )
            previous = name
            if name == "opportunity":
                opened = at
        if LATER[stage] >= 3:
            won = stage == "customer"
            deals.append(
                {
                    "contact_id": contact_id,
                    "campaign_source": "auto",
                    "name": f"Deal {contact_id}",
                    "amount": Decimal(rng.randrange(500, 50_000, 100)),
                    "stage": "won" if won else rng.choice(("open", "open", "lost")),
                    "closed_at": at if won else None,
                    "created_at": opened,
                    "updated_at": at,
                }
            )
    with engine.begin() as conn:
        for start in range(0, len(changes), 20_000):
            conn.execute(insert(StageChange.__table__), changes[start : start + 20_000])
        for start in range(0, len(deals), 20_000):
            conn.execute(insert(Opportunity.__table__), deals[start : start + 20_000])
    return len(changes), len(deals)


def campaigns(engine: Any, now: datetime) -> None:
    from sqlalchemy import insert

    from tracker.sales_models import Campaign, CampaignCost

    start = (now - timedelta(days=120)).date()
    with engine.begin() as conn:
        for name, channel, code, cost in (
            ("Brand search", "paid_search", "brand", None),
            ("November launch", "email", "nov-launch", Decimal(12_000)),
            ("Webinar", "social", "webinar", Decimal(4_000)),
        ):
            campaign_id = conn.execute(
                insert(Campaign.__table__)
                .values(
                    name=name,
                    channel=channel,
                    utm_campaigns=[code],
                    template_ids=[],
                    sequence_ids=[],
                    starts_on=start,
                    ends_on=now.date(),
                    cost=cost,
                    created_at=now,
                    updated_at=now,
                )
                .returning(Campaign.__table__.c.id)
            ).scalar_one()
            if cost is None:
                for month in range(4):
                    first = start + timedelta(days=30 * month)
                    conn.execute(
                        insert(CampaignCost.__table__).values(
                            campaign_id=campaign_id,
                            starts_on=first,
                            ends_on=first + timedelta(days=29),
                            amount=Decimal(3_000),
                        )
                    )


def log_in(app: Any) -> Any:
    from tracker.auth import hash_password
    from tracker.db import db
    from tracker.models import User

    with app.app_context():
        db.session.add(
            User(
                email="marketer@example.com",
                name="Marketer",
                role="marketer",
                password_hash=hash_password("bench password 1"),
            )
        )
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    response = client.post(
        "/admin/login",
        data={"email": "marketer@example.com", "password": "bench password 1", "csrf_token": token},
    )
    assert response.status_code == 302, response.status_code
    return client


def profile(client: Any, path: str) -> None:
    """Where one warm request of `path` spends its time (cumulative, top 30)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    client.get(path)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    print(f"  profile of {path}:\n{out.getvalue()}")


def timed(client: Any, path: str, requests: int) -> list[float]:
    samples = []
    for i in range(requests + 2):
        started = time.perf_counter()
        response = client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (path, response.status_code)
        if i >= 2:  # two warm-ups: statement caches, the database's pages
            samples.append(elapsed)
    return samples


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    args = parse_args()
    sizes = generated.Sizes(args.contacts, args.events)
    print(
        f"dashboard benchmark: {args.database}, {sizes.contacts:,} contacts, "
        f"{sizes.events:,} events, {common.cpu_count()} CPUs"
    )
    with common.Cleanup() as cleanup:
        tmp = cleanup.tempdir("cl-bench-dashboard-")
        if args.database == "postgresql":
            if not common.pg_answers():
                print("PostgreSQL does not answer at 127.0.0.1:5432 as postgres")
                return 1
            name = f"bench_dashboard_{os.getpid()}"
            cleanup.add(f"PostgreSQL database {name}", lambda: common.pg_drop(name))
            url = common.pg_create(name)
        else:
            path = tmp / "dashboard.db"
            url = f"sqlite:///{path}"
        app = common.make_app(url, "redis://127.0.0.1:1/0")
        common.migrate(app)
        site, _ = common.create_site(app, [generated.HOST])

        from automation import attribution_store
        from automation.rollups import event_days, rebuild
        from tracker.db import db
        from tracker.models import utcnow

        now = utcnow()
        with app.app_context():
            engine = db.engine
            started = time.perf_counter()
            print("  generating (not part of the figures) …")
            if args.database == "postgresql":
                generated.generate_pg(engine, sizes, site, now)
            else:
                generated.generate_sqlite(path, sizes, site, now)
            changes, deals = sales_history(engine, now, args.seed)
            campaigns(engine, now)
            print(
                f"  generated in {time.perf_counter() - started:.1f}s "
                f"({changes:,} stage changes, {deals:,} opportunities)"
            )
            started = time.perf_counter()
            with engine.begin() as conn:
                first, last = event_days(conn)
                rebuild(conn, first, max(last, now.date()))
                conn.exec_driver_sql("ANALYZE")
            rollup_s = time.perf_counter() - started
            print(f"  rollups rebuilt for {first}..{last}: {rollup_s:.1f}s")
            started = time.perf_counter()
            marked = attribution_store.refresh(engine, seconds=86_400)
            attribution_s = time.perf_counter() - started
            with engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
            print(
                f"  attribution credit of {marked:,} contacts computed in {attribution_s:.1f}s "
                f"({marked / attribution_s:,.0f} contacts/s; what the every-minute job does "
                "after a campaign change)"
            )
            engine.dispose()
        client = log_in(app)
        dashboard = timed(client, "/admin/dashboard", args.requests)
        roi = timed(client, "/admin/reports/roi", args.requests)
        dashboard_ms, roi_ms = statistics.median(dashboard), statistics.median(roi)
        for label, samples, value in (("dashboard", dashboard, dashboard_ms), ("roi", roi, roi_ms)):
            verdict = "met" if value < TARGET_MS else "MISSED"
            print(
                f"  {label}: median {value:.1f} ms, min {min(samples):.1f}, "
                f"max {max(samples):.1f} over {len(samples)} warm requests "
                f"[target < {TARGET_MS:.0f} ms: {verdict}]"
            )
        if args.profile:
            for path in ("/admin/dashboard", "/admin/reports/roi"):
                profile(client, path)
        with app.app_context():
            db.engine.dispose()
    print(f"dashboard_ms={dashboard_ms:.1f} roi_ms={roi_ms:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
