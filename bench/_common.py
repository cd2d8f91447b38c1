"""Shared setup for the benchmarks in bench/: temp dirs, a private Redis, throwaway
databases, realistic snippet events, and cleanup that runs however the script ends.

Run by hand only; nothing here is imported by the product or the tests.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")

BROWSER_UAS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
)
BOT_UAS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/130.0 Safari/537.36",
)
PAGES = (
    "/",
    "/pricing",
    "/features",
    "/blog/closing-the-loop",
    "/blog/lead-scoring-101",
    "/docs/getting-started",
    "/about",
    "/contact",
    "/customers",
    "/changelog",
)
TITLES = {"/": "Closed Loop — marketing that closes the loop", "/pricing": "Pricing · Closed Loop"}
REFERRERS = (
    "https://www.google.com/",
    "https://news.ycombinator.com/",
    "https://t.co/abc",
    "https://www.linkedin.com/feed/",
    "",
    "",
    "",
)
CAMPAIGN_QUERIES = (
    "?utm_source=newsletter&utm_medium=email&utm_campaign=nov-launch",
    "?utm_source=google&utm_medium=cpc&utm_campaign=brand&gclid=Cj0KCQiA",
    "?utm_source=linkedin&utm_medium=social&utm_campaign=webinar",
)


# ---------------------------------------------------------------- cleanup


class Cleanup:
    """A stack of undo actions run in reverse order, also on Ctrl-C or SIGTERM."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Cleanup:
        signal.signal(signal.SIGTERM, _raise_exit)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def add(self, what: str, action: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                action()
            except Exception as e:
                print(f"  cleanup of {what} failed: {e!r}", file=sys.stderr)

        self._stack.callback(run)

    def tempdir(self, prefix: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self.add(f"temp dir {path}", lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def process(self, what: str, process: subprocess.Popen) -> subprocess.Popen:
        self.add(what, lambda: stop_process(process))
        return process


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate one process we started (by its own handle) and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def start_redis(cleanup: Cleanup, tmp: Path) -> str:
    """A private redis-server on a free port; returns its URL."""
    from tracker.redis_conn import free_port, start_private_server

    url = f"redis://127.0.0.1:{free_port()}/0"
    process = start_private_server(url, tmp / "redis")
    cleanup.process("redis-server", process)
    return url


# ---------------------------------------------------------------- databases


def pg_answers() -> bool:
    try:
        import psycopg

        with psycopg.connect(**PG_ADMIN, connect_timeout=2):
            return True
    except Exception:
        return False


def pg_create(name: str) -> str:
    """(Re)create a throwaway PostgreSQL database; return its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_app(database_url: str, redis_url: str, **overrides: Any) -> Any:
    from tracker import create_app

    config = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "bench",
        "INGEST_BLOCK_MS": 50,
    }
    config.update(overrides)
    return create_app(config)


def migrate(app: Any) -> None:
    """Build the schema the only supported way: the migrations (their INFO log muted)."""
    import io

    from flask_migrate import upgrade

    with app.app_context(), contextlib.redirect_stderr(io.StringIO()):
        upgrade()


def create_site(app: Any, domains: list[str]) -> tuple[int, str]:
    from tracker.db import db
    from tracker.sites import create_site as create

    with app.app_context():
        site = create("Bench", domains)
        db.session.commit()
        result = site.id, site.key
        db.session.remove()
    return result


# ---------------------------------------------------------------- events


def visitor_key(rng: random.Random) -> str:
    return "v" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=21))


def snippet_event(
    kind: str, rng: random.Random, page: str, base: str, ts_ms: int, first: bool = False
) -> dict[str, Any]:
    """One event as the snippet sends it (before the server stamps it)."""
    url = base + page
    if first and rng.random() < 0.12:
        url += rng.choice(CAMPAIGN_QUERIES)
    event: dict[str, Any] = {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "type": kind,
        "ts": ts_ms,
        "url": url,
        "title": TITLES.get(page, page.strip("/").replace("/", " · ").title() + " · Closed Loop"),
    }
    if kind == "pageview":
        if ref := rng.choice(REFERRERS) if first else base + rng.choice(PAGES):
            event["referrer"] = ref
    elif kind == "engage":
        event["seconds"] = rng.randint(1, 600)
    elif kind in {"outbound", "download"}:
        event["target"] = (
            "https://github.com/closedloop/closedloop"
            if kind == "outbound"
            else base + "/files/whitepaper.pdf"
        )
    elif kind == "custom":
        event["name"] = rng.choice(("signup_click", "video_play", "demo_request"))
        event["props"] = {"plan": rng.choice(("free", "pro", "team")), "step": rng.randint(1, 4)}
    elif kind == "search":
        event["query"] = rng.choice(("pricing", "lead scoring", "api"))
    elif kind == "identify":
        n = rng.getrandbits(40)
        event["email"] = f"Person.{n}@Example.com"
        event["traits"] = {"first_name": "Ada", "company": "Example Ltd", "plan": "trial"}
    return event


def pick_kind(rng: random.Random) -> str:
    """Mostly pageviews; some engage/custom/outbound; ~1% identify."""
    r = rng.random()
    if r < 0.66:
        return "pageview"
    if r < 0.84:
        return "engage"
    if r < 0.91:
        return "custom"
    if r < 0.96:
        return "outbound"
    if r < 0.975:
        return "download"
    if r < 0.99:
        return "search"
    return "identify"


def stamped_events(n: int, site_id: int, seed: int = 1, per_visitor: float = 8.0) -> list[bytes]:
    """`n` stream entries built as `tracker/collect.py` does: `parse_event`, then `_stamp`'s
    fields (site, visitor, at, ip, ua), then `tracker.stream.encode`.

    About n/per_visitor visitors, each sending a session's worth of events; sessions
    interleave, and timestamps advance through the last hour.
    """
    from tracker.payload import parse_event
    from tracker.stream import encode

    rng = random.Random(seed)
    base = "http://127.0.0.1"
    visitors = [
        (
            visitor_key(rng),
            rng.choice(BOT_UAS) if rng.random() < 0.03 else rng.choice(BROWSER_UAS),
            f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        )
        for _ in range(max(1, int(n / per_visitor)))
    ]
    seen: set[str] = set()
    now = time.time() - 3600
    step = 3600 / max(n, 1)
    out: list[bytes] = []
    for i in range(n):
        key, ua, ip = rng.choice(visitors)
        first = key not in seen
        seen.add(key)
        kind = "pageview" if first else pick_kind(rng)
        at = now + i * step
        raw = snippet_event(kind, rng, rng.choice(PAGES), base, int(at * 1000), first)
        event = parse_event(raw)
        event.update(site=site_id, visitor=key, at=at, ip=ip, ua=ua)
        out.append(encode(event))
    return out


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gunicorn_command(
    chdir: Path, host: str, port: int, workers: int, threads: int, log: Path, app: str
) -> list[str]:
    """The gunicorn command line the benchmarks run the tracker with (gthread, keep-alive)."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(chdir),
        "-b",
        f"{host}:{port}",
        "-w",
        str(workers),
        "-k",
        "gthread",
        "--threads",
        str(threads),
        "--keep-alive",
        "30",
        "--no-control-socket",
        "--log-level",
        "warning",
        "--error-logfile",
        str(log),
        app,
    ]
