"""Benchmark segments: full rebuilds and the incremental path over generated histories.

    .venv/bin/python bench/segments.py [--quick] [--databases sqlite,pg]
        [--sqlite-contacts 100000] [--sqlite-events 1000000]
        [--pg-contacts 1000000] [--pg-events 10000000] [--repeats 20] [--batch 100]

For SQLite (a temp file) and PostgreSQL (a throwaway database on 127.0.0.1:5432,
skipped when it does not answer): build the schema with the migrations, generate
contacts (traits, stages, scores, tags), their visitors (first touch with utm and
referrer for a share, ~3% of anonymous ones bots) and their events (mostly pageviews
over a small list of paths, some searches, downloads, custom events and email opens
and clicks, spread over the last 120 days, ~3% bots) inside the database with
INSERT … SELECT, then analyze. Generation is timed but is not one of the figures.

Five representative segments (SEGMENTS below; one refers to another) are stored and
rebuilt in full with `automation.segments.refresh(conn, now)` in one transaction,
from empty membership and then again (steady state: nothing changed in between),
with the time each segment took. Then the incremental path, on a fresh connection as
an ingestion worker has: `--repeats` times (after one warm-up), touch `--batch` random
contacts (a /pricing pageview each, as ingestion would store it) and time
`refresh(conn, now, touched=ids)`; p50/p95 are reported. With `--explain` (or when
the PostgreSQL rebuild misses its 60 s target) the slowest segment is rebuilt again
from empty with each statement the product sends run under EXPLAIN (ANALYZE, BUFFERS)
first, all rolled back. Statements running longer than `--timeout` seconds are
cancelled, and the rebuild reported as cut in that segment (the others are then
rebuilt without it, so they still get figures).

Everything it creates is removed at the end. The last line is machine-readable
`key=value` figures: `sqlite_rebuild_s=… pg_rebuild_s=… incremental_ms=…` (the p95
of PostgreSQL's incremental refresh, or SQLite's when PostgreSQL is skipped), then
per-database keys.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

PG_TARGET_S = 60.0
INCREMENTAL_TARGET_MS = 50.0
DAYS = 120
HOST = "closedloop.example"
ANON_PER_CONTACT = 0.5  # anonymous visitors per contact
CONTACT_EVENT_SHARE = 0.75  # the rest are anonymous visitors' events
ACTIVE_EVERY = 7  # every 7th contact is "active": 60% of contact events go to them

SEGMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("Pricing fans", {"visited": {"path": "/pricing*", "at_least": 2, "within_days": 30}}),
    (
        "Enterprise searchers",
        {
            "all": [
                {"searched": {"contains": "enterprise", "within_days": 30}},
                {"field": {"name": "company_size", "gte": 200}},
            ]
        },
    ),
    (
        "Paid search or HN",
        {
            "any": [
                {"utm": {"source": "google", "medium": "cpc", "touch": "first"}},
                {"referrer_domain": {"is": "news.ycombinator.com"}},
            ]
        },
    ),
    (
        "Email openers in play",
        {
            "all": [
                {"email": {"action": "opened", "within_days": 14}},
                {"not": {"stage": {"in": ["customer", "disqualified"]}}},
            ]
        },
    ),
    (
        "Hot pricing fans",
        {
            "all": [
                {"in_segment": "Pricing fans"},
                {"tag": "hot"},
                {"score": {"kind": "total", "gte": 40}},
            ]
        },
    ),
)

PATHS = (
    "/",
    "/pricing",
    "/pricing/enterprise",
    "/features",
    "/features/segments",
    "/docs/getting-started",
    "/docs/api",
    "/docs/segments",
    "/blog/closing-the-loop",
    "/blog/lead-scoring-101",
    "/blog/nurture-that-works",
    "/customers",
    "/about",
    "/changelog",
)
SEARCHES = (
    "enterprise",
    "enterprise sso",
    "Enterprise pricing",
    "sso",
    "api rate limits",
    "segments",
    "webhooks",
    "gdpr",
    "pricing",
    "integrations",
)
CUSTOM_NAMES = ("video_play", "video_play", "demo_request", "trial_start", "signup")
FILES = ("whitepaper.pdf", "pricing-sheet.pdf", "case-study-acme.pdf")
DOMAINS = ("example.com", "acme.io", "globex.com", "initech.net", "mail.test", "umbrella.org")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton")
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell")
COUNTRIES = ("US", "US", "GB", "DE", "FR", "NL", "IN", "BR", "CA", "AU")
COMPANY_SIZES = (1, 5, 12, 40, 80, 150, 250, 500, 1200, 5000)
JOB_TITLES = ("Founder", "CTO", "VP Marketing", "Marketing Manager", "Engineer", "Analyst")
# Cumulative shares of the lifecycle stages.
STAGE_SHARES = (
    (0.15, "subscriber"),
    (0.60, "lead"),
    (0.72, "mql"),
    (0.78, "sql"),
    (0.82, "opportunity"),
    (0.90, "customer"),
    (0.96, "nurture"),
    (1.01, "disqualified"),
)
TAG_SHARES = (("hot", 0.08), ("newsletter", 0.25), ("vip", 0.02))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sqlite-contacts", type=int, default=100_000)
    parser.add_argument("--sqlite-events", type=int, default=1_000_000)
    parser.add_argument("--pg-contacts", type=int, default=1_000_000)
    parser.add_argument("--pg-events", type=int, default=10_000_000)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes to try things out: 10K/100K, 50K/500K"
    )
    parser.add_argument("--databases", default="sqlite,pg", help="comma-separated: sqlite,pg")
    parser.add_argument("--repeats", type=int, default=20, help="incremental refreshes timed")
    parser.add_argument("--batch", type=int, default=100, help="contacts touched per refresh")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds one statement may run before it is cancelled (reported as cut)",
    )
    parser.add_argument(
        "--incremental-budget",
        type=float,
        default=120.0,
        help="seconds the timed incremental refreshes may take in all before fewer are run",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="EXPLAIN (ANALYZE, BUFFERS) the slowest segment on PostgreSQL even if on target",
    )
    parser.add_argument(
        "--explain-timeout",
        type=float,
        default=120.0,
        help="seconds an EXPLAIN ANALYZE may run; past that, the plan without ANALYZE",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.sqlite_contacts, args.sqlite_events = 10_000, 100_000
        args.pg_contacts, args.pg_events = 50_000, 500_000
    return args


# ---------------------------------------------------------------- SQL text helpers


@dataclass(frozen=True)
class Dialect:
    """The few places the generation SQL differs between SQLite and PostgreSQL."""

    name: str

    @property
    def pg(self) -> bool:
        return self.name == "postgresql"

    def floor(self, expr: str) -> str:
        # Every argument here is >= 0, so SQLite's truncating cast is a floor.
        return f"floor({expr})::bigint" if self.pg else f"CAST({expr} AS INTEGER)"

    def random(self) -> str:
        return "random()" if self.pg else "(abs(random() % 1000000) / 1000000.0)"

    def json_object(self, *pairs: str) -> str:
        return f"{'jsonb_build_object' if self.pg else 'json_object'}({', '.join(pairs)})"

    def empty_json(self) -> str:
        return "'{}'::jsonb" if self.pg else "'{}'"

    def uuid(self) -> str:
        return "gen_random_uuid()" if self.pg else "lower(hex(randomblob(16)))"

    def ago(self, fraction: str, plus_seconds: int = 0) -> str:
        """`now` minus `fraction` of DAYS (plus some seconds), as the column stores it."""
        if self.pg:
            extra = f" + interval '{plus_seconds} seconds'" if plus_seconds else ""
            return f"(CAST(:now AS timestamptz) - ({fraction}) * interval '{DAYS} days'{extra})"
        # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
        seconds = f"(:now_epoch - ({fraction}) * {DAYS * 86400} + {plus_seconds})"
        return f"(strftime('%Y-%m-%d %H:%M:%f', {seconds}, 'unixepoch') || '000')"

    def boolean(self, expr: str) -> str:
        return f"({expr})" if self.pg else f"CAST(({expr}) AS INTEGER)"

    def source(self, columns: int) -> tuple[str, str]:
        """A WITH prefix and a FROM item giving rows g in :lo..:hi with random r1..rN.

        SQLite's recursive CTE keeps each row's values in its queue, so r1..rN stay
        put however often the outer query names them (a plain subquery would be
        flattened and random() called again at every mention).
        """
        rs = ", ".join(f"{self.random()} AS r{i}" for i in range(1, columns + 1))
        if self.pg:
            rows = "generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint))"
            return "", f"(SELECT g, {rs} FROM {rows} AS g) AS s"
        names = ", ".join(f"r{i}" for i in range(1, columns + 1))
        values = ", ".join(self.random() for _ in range(columns))
        prefix = (
            f"WITH RECURSIVE s(g, {names}) AS (SELECT :lo, {values} "
            f"UNION ALL SELECT g + 1, {values} FROM s WHERE g < :hi) "
        )
        return prefix, "s"


def literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def pick(d: Dialect, values: Sequence[Any], r: str) -> str:
    """One of `values`, chosen by the random number `r` in [0, 1)."""
    whens = " ".join(f"WHEN {i} THEN {literal(v)}" for i, v in enumerate(values))
    return f"(CASE {d.floor(f'{r} * {len(values)}')} {whens} END)"


def contacts_sql(d: Dialect) -> str:
    prefix, source = d.source(12)
    stage = " ".join(f"WHEN r10 < {share} THEN '{name}'" for share, name in STAGE_SHARES)
    traits = d.json_object(
        "'country'",
        pick(d, COUNTRIES, "r7"),
        "'company_size'",
        pick(d, COMPANY_SIZES, "r8"),
        "'job_title'",
        pick(d, JOB_TITLES, "r9"),
    )
    engagement = d.floor("60 * r11 * r11")
    fit = d.floor("40 * r12")
    created = d.ago("0.2 + 0.8 * r1")
    return f"""
        INSERT INTO contacts (id, email, first_name, last_name, company, traits, stage,
                              score, engagement_score, fit_score, created_at, updated_at)
        {prefix}
        SELECT g, 'contact' || g || '@' || {pick(d, DOMAINS, "r1")},
               {pick(d, FIRST_NAMES, "r2")}, {pick(d, LAST_NAMES, "r3")},
               CASE WHEN r4 < 0.7 THEN {pick(d, COMPANIES, "r5")} END,
               CASE WHEN r6 < 0.6 THEN {traits} ELSE {d.empty_json()} END,
               CASE {stage} END,
               {engagement} + {fit}, {engagement}, {fit}, {created}, {created}
        FROM {source}
    """


def visitors_sql(d: Dialect) -> str:
    """Visitor g <= :contacts belongs to contact g; the rest are anonymous."""
    prefix, source = d.source(6)
    utm = (
        "CASE WHEN r4 < 0.10 THEN {0} WHEN r4 < 0.18 THEN {1} "
        "WHEN r4 < 0.25 THEN {2} WHEN r4 < 0.28 THEN {3} END"
    )
    campaigns = (
        ("google", "cpc", "brand"),
        ("newsletter", "email", "nov-launch"),
        ("linkedin", "social", "webinar"),
        ("bing", "cpc", "brand"),
    )
    source_, medium, campaign = (utm.format(*(f"'{c[i]}'" for c in campaigns)) for i in range(3))
    query = utm.format(
        *(f"'?utm_source={s}&utm_medium={m}&utm_campaign={c}'" for s, m, c in campaigns)
    )
    referrer = (
        "CASE WHEN r4 < 0.10 OR r5 < 0.25 THEN 'https://www.google.com/' "
        "WHEN r5 < 0.29 THEN 'https://news.ycombinator.com/' "
        "WHEN r5 < 0.34 THEN 'https://t.co/abc' "
        "WHEN r5 < 0.40 THEN 'https://www.linkedin.com/feed/' END"
    )
    bot = "g > :contacts AND r6 < 0.06"
    first_seen = d.ago("r1")
    return f"""
        INSERT INTO visitors (id, site_id, key, contact_id, first_seen, last_seen, landing_url,
                              referrer, utm_source, utm_medium, utm_campaign, user_agent, is_bot)
        {prefix}
        SELECT g, :site, 'v' || g, CASE WHEN g <= :contacts THEN g END,
               {first_seen}, {d.ago("r1 * r2")},
               'https://{HOST}' || {pick(d, PATHS, "r3")} || coalesce({query}, ''),
               {referrer}, {source_}, {medium}, {campaign},
               CASE WHEN {bot} THEN {pick(d, common.BOT_UAS, "r2")}
                    ELSE {pick(d, common.BROWSER_UAS, "r2")} END,
               {d.boolean(bot)}
        FROM {source}
    """


def events_sql(d: Dialect, contacts: int, total: int) -> str:
    """Events :lo..:hi of `total`; 75% a contact's (60% of those an active contact's), the
    rest anonymous visitors'. Email events carry no visitor; anonymous ones become
    pageviews. Event g happened (total - g) / total of DAYS ago (jittered): ids follow
    time as they do when ingestion appends them."""
    prefix, source = d.source(9)
    uniform = f"1 + {d.floor(f'r8 * {contacts}')}"
    active = f"{ACTIVE_EVERY} * (1 + {d.floor(f'r8 * {max(1, contacts // ACTIVE_EVERY)}')})"
    anon = f"{contacts} + 1 + {d.floor(f'r8 * {max(1, int(contacts * ANON_PER_CONTACT))}')}"
    kind = (
        "CASE WHEN r9 < 0.80 THEN 'pageview' WHEN r9 < 0.84 THEN 'search' "
        "WHEN r9 < 0.87 THEN 'download' WHEN r9 < 0.93 THEN 'custom' "
        "WHEN r9 < 0.98 THEN 'email_open' ELSE 'email_click' END"
    )
    middle = f"""
        SELECT g, r2, r3, r4, r5, r6, {anon} AS anon,
               CASE WHEN r1 < {CONTACT_EVENT_SHARE}
                    THEN CASE WHEN r7 < 0.4 THEN {uniform} ELSE {active} END END AS cid,
               {kind} AS kind
        FROM {source}
    """
    inner = f"""
        SELECT m.*, CASE WHEN cid IS NULL AND kind LIKE 'email%' THEN 'pageview'
                         ELSE kind END AS typ
        FROM ({middle}) AS m
    """
    email = "typ LIKE 'email%'"
    pageview = "typ = 'pageview'"
    referrer = (
        f"CASE WHEN {pageview} THEN CASE WHEN r5 < 0.10 THEN 'https://www.google.com/' "
        "WHEN r5 < 0.125 THEN 'https://news.ycombinator.com/item?id=' || (g % 100000) "
        "WHEN r5 < 0.15 THEN 'https://t.co/abc' "
        "WHEN r5 < 0.18 THEN 'https://www.linkedin.com/feed/' END END"
    )

    def utm(google: str, newsletter: str) -> str:
        return (
            f"CASE WHEN {pageview} AND r5 < 0.04 THEN '{google}' "
            f"WHEN {pageview} AND r5 >= 0.18 AND r5 < 0.21 THEN '{newsletter}' END"
        )

    template = d.json_object("'template_id'", "1 + " + d.floor("r5 * 12"))
    plan = d.json_object("'plan'", "'team'")
    props = f"CASE WHEN {email} THEN {template} WHEN typ = 'custom' THEN {plan} END"
    bot = "r4 < 0.03"
    age = f"({total} - g + r3) / {total}.0"
    path = f"CASE WHEN {email} THEN NULL ELSE {pick(d, PATHS, 'r2')} END"
    visitor = f"CASE WHEN {email} THEN NULL WHEN cid IS NULL THEN anon ELSE cid END"
    return f"""
        INSERT INTO events (uuid, site_id, visitor_id, contact_id, type, name, url, path, title,
                            referrer, target, query, props, utm_source, utm_medium,
                            utm_campaign, ip, user_agent, is_bot, bot_reason, occurred_at,
                            ingested_at)
        {prefix}
        SELECT {d.uuid()}, :site, {visitor}, cid, typ,
               CASE WHEN typ = 'custom' THEN {pick(d, CUSTOM_NAMES, "r5")} END,
               'https://{HOST}' || {path}, {path},
               CASE WHEN {pageview} THEN 'Closed Loop' END,
               {referrer},
               CASE WHEN typ = 'download' THEN '/files/' || {pick(d, FILES, "r5")} END,
               CASE WHEN typ = 'search' THEN {pick(d, SEARCHES, "r5")} END,
               {props}, {utm("google", "newsletter")}, {utm("cpc", "email")},
               {utm("brand", "nov-launch")},
               '203.0.' || (coalesce(cid, anon) % 256) || '.' || (coalesce(cid, anon) % 253 + 1),
               CASE WHEN {bot} THEN {pick(d, common.BOT_UAS, "r6")}
                    ELSE {pick(d, common.BROWSER_UAS, "r6")} END,
               {d.boolean(bot)}, CASE WHEN {bot} THEN 'user_agent' END,
               {d.ago(age)}, {d.ago(age, 2)}
        FROM ({inner}) AS e
    """


def tags_sql(d: Dialect, tag: str, share: float) -> str:
    return (
        f"INSERT INTO contact_tags (contact_id, tag, created_at) "
        f"SELECT id, '{tag}', {d.ago('0.5')} FROM contacts WHERE {d.random()} < {share}"
    )


# ---------------------------------------------------------------- generation


@dataclass
class Sizes:
    contacts: int
    events: int

    @property
    def visitors(self) -> int:
        return self.contacts + max(1, int(self.contacts * ANON_PER_CONTACT))


def _stamp(now: datetime, site: int, **more: Any) -> dict[str, Any]:
    return {"now": now, "now_epoch": now.timestamp(), "site": site, **more}


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size - 1, total)) for lo in range(1, total + 1, size)]


def generate_sqlite(path: Path, sizes: Sizes, site: int, now: datetime) -> None:
    """All rows in a few big transactions on one plain sqlite3 connection, foreign key
    checks and fsyncs off, the events indexes dropped during the load and rebuilt."""
    d = Dialect("sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -400000")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' "
            "AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        base = _stamp(now, site, contacts=sizes.contacts)
        steps: list[tuple[str, str, int, int]] = [
            ("contacts", contacts_sql(d), sizes.contacts, 200_000),
            ("visitors", visitors_sql(d), sizes.visitors, 200_000),
            ("events", events_sql(d, sizes.contacts, sizes.events), sizes.events, 250_000),
        ]
        for label, sql, total, chunk in steps:
            started = time.perf_counter()
            for lo, hi in _chunks(total, chunk):
                conn.execute("BEGIN")
                conn.execute(sql, {**base, "lo": lo, "hi": hi})
                conn.execute("COMMIT")
            print(f"    {label}: {total:,} rows in {time.perf_counter() - started:.1f}s")
        started = time.perf_counter()
        conn.execute("BEGIN")
        for tag, share in TAG_SHARES:
            conn.execute(tags_sql(d, tag, share), base)
        conn.execute("COMMIT")
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"    tags, events indexes rebuilt, ANALYZE: {time.perf_counter() - started:.1f}s")
    finally:
        conn.close()


def generate_pg(engine: Any, sizes: Sizes, site: int, now: datetime) -> None:
    """INSERT … SELECT from generate_series, foreign key triggers off for the session
    (session_replication_role), the events indexes dropped during the load and rebuilt,
    the events split over two connections (two cores), then VACUUM ANALYZE."""
    from sqlalchemy import text

    d = Dialect("postgresql")
    base = _stamp(now, site, contacts=sizes.contacts)

    def setup(conn: Any, seed: float) -> None:
        conn.exec_driver_sql("SET session_replication_role = replica")
        conn.exec_driver_sql("SET maintenance_work_mem = '1GB'")
        conn.execute(text("SELECT setseed(:s)"), {"s": seed})

    with engine.begin() as conn:
        setup(conn, 0.1)
        recreate = _pg_drop_indexes(conn, "events")
        for label, sql, total in (
            ("contacts", contacts_sql(d), sizes.contacts),
            ("visitors", visitors_sql(d), sizes.visitors),
        ):
            started = time.perf_counter()
            conn.execute(text(sql), {**base, "lo": 1, "hi": total})
            print(f"    {label}: {total:,} rows in {time.perf_counter() - started:.1f}s")
        for table in ("contacts", "visitors"):
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        for tag, share in TAG_SHARES:
            conn.execute(text(tags_sql(d, tag, share)), base)

    started = time.perf_counter()
    sql = text(events_sql(d, sizes.contacts, sizes.events))
    halves = _chunks(sizes.events, math.ceil(sizes.events / 2))
    errors: list[BaseException] = []

    def load(part: int, lo: int, hi: int) -> None:
        try:
            with engine.begin() as conn:
                setup(conn, 0.2 + part / 10)
                conn.execute(sql, {**base, "lo": lo, "hi": hi})
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=load, args=(i, lo, hi)) for i, (lo, hi) in enumerate(halves)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    print(
        f"    events: {sizes.events:,} rows in {time.perf_counter() - started:.1f}s "
        f"(two connections)"
    )
    started = time.perf_counter()
    with engine.begin() as conn:
        setup(conn, 0.5)
        for statement in recreate:
            conn.exec_driver_sql(statement)
    print(f"    events indexes and unique constraint rebuilt: {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("VACUUM ANALYZE")
    print(f"    VACUUM ANALYZE: {time.perf_counter() - started:.1f}s")


def _pg_drop_indexes(conn: Any, table: str) -> list[str]:
    """Drop a table's indexes and unique constraints but its primary key; return the
    statements that recreate them exactly."""
    from sqlalchemy import text

    rows = conn.execute(
        text(
            "SELECT i.relname, pg_get_indexdef(i.oid), c.conname, pg_get_constraintdef(c.oid) "
            "FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
            "LEFT JOIN pg_constraint c ON c.conindid = i.oid AND c.conrelid = x.indrelid "
            "WHERE x.indrelid = CAST(:t AS regclass) AND NOT x.indisprimary"
        ),
        {"t": table},
    ).all()
    recreate = []
    for name, indexdef, conname, condef in rows:
        if conname:
            conn.exec_driver_sql(f'ALTER TABLE {table} DROP CONSTRAINT "{conname}"')
            recreate.append(f'ALTER TABLE {table} ADD CONSTRAINT "{conname}" {condef}')
        else:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
            recreate.append(indexdef)
    return recreate


def describe_data(engine: Any, now: datetime) -> None:
    from datetime import timedelta

    from sqlalchemy import text

    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(contact_id), "
                "sum(CASE WHEN is_bot THEN 1 ELSE 0 END), "
                "sum(CASE WHEN type = 'pageview' THEN 1 ELSE 0 END), "
                "sum(CASE WHEN occurred_at >= :since THEN 1 ELSE 0 END) FROM events"
            ),
            {"since": now - timedelta(days=30)},
        ).one()
        tags = conn.execute(text("SELECT count(*) FROM contact_tags")).scalar()
        utm = conn.execute(
            text("SELECT count(*) FROM visitors WHERE utm_source IS NOT NULL")
        ).scalar()
    total, linked, bots, pageviews, recent = row
    print(
        f"  data: {total:,} events ({linked / total:.0%} a contact's, {bots / total:.1%} bots, "
        f"{pageviews / total:.0%} pageviews, {recent / total:.0%} in the last 30 days), "
        f"{tags:,} tags, {utm:,} visitors with a first-touch utm"
    )


# ---------------------------------------------------------------- the measured parts


def store_segments(engine: Any, now: datetime) -> dict[int, str]:
    from sqlalchemy import insert

    from automation.segment_rules import check_tree
    from tracker.automation_models import Segment

    table = Segment.__table__
    names = {}
    with engine.begin() as conn:
        for name, rules in SEGMENTS:
            check_tree(rules)
            segment_id = conn.execute(
                insert(table).values(name=name, rules=rules, updated_at=now).returning(table.c.id)
            ).scalar_one()
            names[segment_id] = name
    return names


class Deadline:
    """Cancel any statement running longer than `seconds` on this connection."""

    def __init__(self, conn: Any, seconds: float) -> None:
        self.conn, self.seconds = conn, seconds
        self.pg = conn.dialect.name == "postgresql"

    def __enter__(self) -> Deadline:
        if self.pg:
            self.conn.exec_driver_sql(f"SET statement_timeout = {int(self.seconds * 1000)}")
            self.conn.commit()  # a session setting; leaves no transaction open
        else:
            raw = self.conn.connection.driver_connection
            stop = time.monotonic() + self.seconds
            raw.set_progress_handler(lambda: int(time.monotonic() > stop), 100_000)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pg:
            if self.conn.in_transaction():
                self.conn.rollback()
            self.conn.exec_driver_sql("SET statement_timeout = 0")
            self.conn.commit()
        else:
            self.conn.connection.driver_connection.set_progress_handler(None, 0)


def _cancelled(error: BaseException) -> bool:
    text = str(error).lower()
    return "statement timeout" in text or "canceling statement" in text or "interrupted" in text


@dataclass
class Rebuild:
    seconds: float
    per_segment: list[tuple[str, float, int, int]] = field(default_factory=list)
    cut: str | None = None  # the segment whose statement the timeout cancelled


def full_rebuild(engine: Any, timeout: float, skip: str | None = None) -> Rebuild:
    """`refresh(conn, now)` for every segment (but `skip`) in one transaction, committed.

    If a statement runs past `timeout`, the transaction is rolled back and the result
    names the segment it was cancelled in, with the time to the cut as its figure."""
    from automation.segments import SegmentDef, load_segments, refresh
    from tracker.models import utcnow

    marks: list[tuple[SegmentDef, float]] = []

    def progress(segment: SegmentDef, position: int, total: int) -> None:
        marks.append((segment, time.perf_counter()))

    with engine.connect() as conn, Deadline(conn, timeout):
        started = time.perf_counter()
        try:
            with conn.begin():
                order = [s for s in load_segments(conn) if s.name != skip]
                moved = refresh(conn, utcnow(), segments=order, progress=progress)
        except Exception as e:
            if not _cancelled(e):
                raise
            result = Rebuild(time.perf_counter() - started, cut=order[len(marks)].name)
            marks.append((order[len(marks)], time.perf_counter()))
            previous = started
            for segment, at in marks:
                result.per_segment.append((segment.name, at - previous, -1, -1))
                previous = at
            return result
        result = Rebuild(time.perf_counter() - started)
    previous = started
    for segment, at in marks:
        joined, left = len(moved.joined[segment.id]), len(moved.left[segment.id])
        result.per_segment.append((segment.name, at - previous, joined, left))
        previous = at
    return result


def member_counts(engine: Any) -> dict[int, int]:
    from sqlalchemy import func, select

    from tracker.automation_models import SegmentMember

    table = SegmentMember.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.segment_id, func.count()).group_by(table.c.segment_id)
        ).all()
    return dict(rows)


def print_rebuild(label: str, result: Rebuild, counts: dict[str, int] | None) -> None:
    state = f"CUT in {result.cut!r} by the statement timeout" if result.cut else "committed"
    print(f"  {label}: {result.seconds:.2f}s, {state}")
    for name, seconds, joined, left in result.per_segment:
        if name == result.cut:
            moves = "cancelled, rolled back"
        else:
            moves = f"+{joined:,} -{left:,}" if joined >= 0 else "rolled back"
        members = (
            f", {counts.get(name, 0):,} members" if counts is not None and name in counts else ""
        )
        print(f"    {name:<24} {seconds:8.2f}s  {moves}{members}")


def touch(engine: Any, ids: Sequence[int], site: int) -> None:
    """A /pricing pageview for each contact, as ingestion stores it."""
    from sqlalchemy import insert

    from tracker.models import Event, utcnow

    now = utcnow()
    rows = [
        {
            "uuid": uuid.uuid4(),
            "site_id": site,
            "visitor_id": cid,
            "contact_id": cid,
            "type": "pageview",
            "url": f"https://{HOST}/pricing",
            "path": "/pricing",
            "title": "Pricing",
            "is_bot": False,
            "occurred_at": now,
            "ingested_at": now,
        }
        for cid in ids
    ]
    with engine.begin() as conn:
        conn.execute(insert(Event.__table__), rows)


@dataclass
class Incremental:
    samples_ms: list[float]
    moved: int
    note: str = ""

    def percentile(self, p: float) -> float:
        if not self.samples_ms:
            return float("nan")
        if len(self.samples_ms) == 1:
            return self.samples_ms[0]
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[int(p) - 1]


def incremental(engine: Any, args: argparse.Namespace, contacts: int, site: int) -> Incremental:
    """Touch `batch` random contacts, then time `refresh(…, touched=ids)`; one warm-up."""
    from automation.segments import refresh
    from tracker.models import utcnow

    rng = random.Random(args.seed)
    samples: list[float] = []
    moved = 0
    spent = 0.0
    note = ""
    with engine.connect() as conn, Deadline(conn, args.timeout):
        for i in range(args.repeats + 1):
            ids = rng.sample(range(1, contacts + 1), min(args.batch, contacts))
            touch(engine, ids, site)
            started = time.perf_counter()
            try:
                with conn.begin():
                    result = refresh(conn, utcnow(), touched=ids)
            except Exception as e:
                if not _cancelled(e):
                    raise
                return Incremental(samples, moved, f"cut: one refresh ran past {args.timeout}s")
            elapsed = time.perf_counter() - started
            if i == 0:
                continue  # warm-up: SQLAlchemy's statement cache, the database's plans
            samples.append(elapsed * 1000)
            moved += len(result.contacts)
            spent += elapsed
            if spent > args.incremental_budget and i < args.repeats:
                note = f"stopped after {i} of {args.repeats}: over the {args.incremental_budget}s"
                break
    return Incremental(samples, moved, note)


# ---------------------------------------------------------------- EXPLAIN


def explain(engine: Any, segment_name: str, timeout: float) -> None:
    """Rebuild one segment from empty membership with `refresh(conn, now, only=[id])` in a
    transaction that is rolled back, and run every INSERT and DELETE it sends under
    EXPLAIN (ANALYZE, BUFFERS) first (in a savepoint, rolled back), so the plans shown are
    those of the product's own statements. A plan still running after `timeout` is
    cancelled and shown without ANALYZE."""
    from sqlalchemy import delete, event, select

    from automation.segments import members, refresh
    from tracker.automation_models import Segment
    from tracker.models import utcnow

    table = Segment.__table__
    plans: list[tuple[str, str, list[str]]] = []
    took: list[float] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()
        if not statement.lstrip().upper().startswith(("INSERT", "DELETE")) or rest[-1]:
            return
        cursor.execute("SAVEPOINT bench_explain")
        started = time.perf_counter()
        try:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", params)
            how = "ANALYZE, BUFFERS"
        except Exception as e:
            if not _cancelled(e):
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT bench_explain")
            cursor.execute(f"EXPLAIN {statement}", params)
            how = f"no ANALYZE: cancelled after {time.perf_counter() - started:.0f}s"
        lines = [row[0] for row in cursor.fetchall()]
        cursor.execute("ROLLBACK TO SAVEPOINT bench_explain")
        plans.append((" ".join(statement.split())[:90], how, lines))
        conn.info["bench_started"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "DELETE")) and not rest[-1]:
            took.append(time.perf_counter() - conn.info["bench_started"])

    with engine.connect() as conn, Deadline(conn, timeout), conn.begin() as tx:
        ids = dict(conn.execute(select(table.c.name, table.c.id)).all())
        conn.execute(delete(members).where(members.c.segment_id == ids[segment_name]))
        event.listen(conn, "before_cursor_execute", before)
        event.listen(conn, "after_cursor_execute", after)
        try:
            refresh(conn, utcnow(), only=[ids[segment_name]])
        except Exception as e:
            if not _cancelled(e):
                raise
            print(f"  (the refresh itself was cancelled after {timeout:.0f}s)")
        finally:
            event.remove(conn, "before_cursor_execute", before)
            event.remove(conn, "after_cursor_execute", after)
        tx.rollback()
    print(f"  --- {segment_name!r} rebuilt from empty membership, statement by statement:")
    for i, (statement, how, lines) in enumerate(plans):
        real = f"ran in {took[i]:.2f}s" if i < len(took) else "cancelled"
        print(f"  --- {statement} …  [{real} after its EXPLAIN ({how})]")
        for line in lines:
            print(f"    {line}")


# ---------------------------------------------------------------- one database


def bench_database(
    label: str,
    url: str,
    sizes: Sizes,
    generate: Callable[[Any, int, datetime], None],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from tracker.db import db
    from tracker.models import utcnow

    print(f"\n== {label}: {sizes.contacts:,} contacts, {sizes.events:,} events")
    app = common.make_app(url, "redis://127.0.0.1:1/0")
    common.migrate(app)
    site, _ = common.create_site(app, [HOST])
    now = utcnow()
    with app.app_context():
        engine = db.engine
        started = time.perf_counter()
        print("  generating (not part of the figures) …")
        generate(engine, site, now)
        generated = time.perf_counter() - started
        print(f"  generated in {generated:.1f}s")
        describe_data(engine, now)
        names = store_segments(engine, now)

        first = full_rebuild(engine, args.timeout)
        by_name = {}
        if not first.cut:
            counts = member_counts(engine)
            by_name = {name: counts.get(sid, 0) for sid, name in names.items()}
        print_rebuild("full rebuild from empty membership", first, by_name)
        rest = None
        if first.cut:
            # The others still deserve figures: the same rebuild without the cut segment.
            rest = full_rebuild(engine, args.timeout, skip=first.cut)
            counts = member_counts(engine)
            by_name = {name: counts.get(sid, 0) for sid, name in names.items()}
            print_rebuild(f"full rebuild from empty without {first.cut!r}", rest, by_name)
        second = full_rebuild(engine, args.timeout, skip=first.cut)
        print_rebuild(
            "full rebuild again (steady state)" + (f" without {first.cut!r}" if first.cut else ""),
            second,
            None,
        )

        # A fresh connection, as an ingestion worker has: none of the rebuilds' session state.
        engine.dispose()
        inc = incremental(engine, args, sizes.contacts, site)
        p50, p95 = inc.percentile(50), inc.percentile(95)
        target = "met" if p95 < INCREMENTAL_TARGET_MS else "MISSED"
        print(
            f"  incremental: {len(inc.samples_ms)} refreshes of {args.batch} touched contacts, "
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(inc.samples_ms, default=math.nan):.1f}"
            f" ms, {inc.moved:,} joins/leaves  [target p95 < {INCREMENTAL_TARGET_MS:.0f} ms: "
            f"{target}]" + (f"  ({inc.note})" if inc.note else "")
        )
        is_pg = engine.dialect.name == "postgresql"
        if is_pg:
            met = "met" if first.seconds < PG_TARGET_S and not first.cut else "MISSED"
            print(f"  PostgreSQL full rebuild < {PG_TARGET_S:.0f}s: {met}")
            if args.explain or met != "met":
                slowest = first.cut or max(first.per_segment, key=lambda row: row[1])[0]
                explain(engine, slowest, min(args.timeout, args.explain_timeout))
        engine.dispose()
    return {
        "generate_s": generated,
        "rebuild_s": first.seconds,
        "steady_s": second.seconds,
        "cut": first.cut or second.cut,
        "without_cut_s": rest.seconds if rest else None,
        "incremental_p50_ms": p50,
        "incremental_ms": p95,
    }


def _figure(key: str, value: float) -> str:
    if key.endswith("_cut"):
        return str(value)
    return f"{value:.2f}" if key.endswith("_s") else f"{value:.1f}"


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    args = parse_args()
    wanted = {d.strip() for d in args.databases.split(",") if d.strip()}
    results: dict[str, dict[str, Any]] = {}
    print(
        f"segments benchmark: {len(SEGMENTS)} segments, {common.cpu_count()} CPUs; "
        f"incremental: {args.repeats} x {args.batch} touched contacts"
    )
    with common.Cleanup() as cleanup:
        tmp = cleanup.tempdir("cl-bench-segments-")
        if "sqlite" in wanted:
            path = tmp / "segments.db"
            sizes = Sizes(args.sqlite_contacts, args.sqlite_events)
            results["sqlite"] = bench_database(
                "SQLite (temp file)",
                f"sqlite:///{path}",
                sizes,
                lambda engine, site, now: generate_sqlite(path, sizes, site, now),
                args,
            )
        if "pg" in wanted:
            if common.pg_answers():
                name = f"bench_segments_{os.getpid()}"
                cleanup.add(f"PostgreSQL database {name}", lambda: common.pg_drop(name))
                sizes_pg = Sizes(args.pg_contacts, args.pg_events)
                results["pg"] = bench_database(
                    f"PostgreSQL (database {name})",
                    common.pg_create(name),
                    sizes_pg,
                    lambda engine, site, now: generate_pg(engine, sizes_pg, site, now),
                    args,
                )
            else:
                print("\n== PostgreSQL does not answer at 127.0.0.1:5432 as postgres; skipped")

    if not results:
        print("no database measured")
        return 1
    nan = float("nan")
    headline = results.get("pg") or results.get("sqlite") or {}
    figures = {
        "sqlite_rebuild_s": results.get("sqlite", {}).get("rebuild_s", nan),
        "pg_rebuild_s": results.get("pg", {}).get("rebuild_s", nan),
        "incremental_ms": headline.get("incremental_ms", nan),
    }
    for db_name, values in results.items():
        figures[f"{db_name}_steady_s"] = values["steady_s"]
        figures[f"{db_name}_incremental_p50_ms"] = values["incremental_p50_ms"]
        figures[f"{db_name}_incremental_ms"] = values["incremental_ms"]
        figures[f"{db_name}_generate_s"] = values["generate_s"]
        if values["cut"]:
            figures[f"{db_name}_rebuild_cut"] = 1
        if values["without_cut_s"] is not None:
            figures[f"{db_name}_rebuild_without_cut_s"] = values["without_cut_s"]
    for db_name, values in results.items():
        if values["cut"]:
            print(
                f"note: {db_name}'s rebuild was cut by the statement timeout in "
                f"{values['cut']!r}; {db_name}_rebuild_s is the time to the cut"
            )
    print(
        " ".join(f"{k}={v:.2f}" if k.endswith("_s") else f"{k}={v:.1f}" for k, v in figures.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
