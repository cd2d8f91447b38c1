"""Benchmark lead latency: from `POST /e` to the threshold's action having happened.

    .venv/bin/python bench/latency.py [--rate 500] [--seconds 60] [--database sqlite|pg|both]

Sets up, all on 127.0.0.1: a migrated database (a SQLite file in a temp dir, or a
throwaway PostgreSQL database), a private redis-server, a site allowing 127.0.0.1 and
a rules file loaded with `flask automation load` (a `probe` custom event worth 10
points, background rules for /pricing pageviews and downloads, and a threshold at 10
engagement points whose actions are `set_stage: mql` and `add_tag: probe`, both local,
so they happen inside the ingestion transaction). Then starts the tracker under
gunicorn (gthread), one `worker --queues ingest`, one `worker --queues default` and one
`scheduler`, exactly as in production, and waits for the first ingestion job.

A single-threaded load generator (non-blocking keep-alive sockets) sends snippet-like
requests of 1-3 events at `--rate` events/s, paced; `--probes` times a second, inside
that rate, it sends a probe instead: a fresh visitor's one request carrying `identify`
(a unique email) and the custom event `probe`, which takes the new contact across the
threshold. A poller thread asks the database every 20 ms which pending probe contacts
are at stage `mql` (one query per poll); latency = when it first sees one - when the
probe was sent. After a warm-up (not counted) it measures for `--seconds`, then waits
up to `--drain` seconds for outstanding probes (any never seen are reported as lost).
It prints the achieved rate, the latency percentiles, the stream backlog, the
ingestion jobs' hand-overs and the CPU each process used. Everything it starts or
creates is removed at the end. The last line is `p50_ms=… p95_ms=… p99_ms=… rate_eps=…`
for the last database run, then, with `--database both`, the same per database
(`sqlite_p95_ms=…`, `pg_lost=…`). Exit status 2 when a probe was lost, a request failed
or was refused, or a seen probe lacks its tag.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from collect import children, parse_response

HOST = "127.0.0.1"
ORIGIN = "http://127.0.0.1"
APP_SPEC = "tracker:create_app()"
EVENTS_WEIGHTS = ((1, 0.6), (2, 0.25), (3, 0.15))
# What follows a request's first pageview: ~1% of all events end up identifies.
EXTRA_KINDS = (
    ("pageview", 0.42),
    ("engage", 0.30),
    ("download", 0.10),
    ("outbound", 0.08),
    ("custom", 0.07),
    ("identify", 0.03),
)
POLL_SECONDS = 0.02
SAMPLE_SECONDS = 0.1
TARGET_P95_MS = 1000.0
RULES = """\
rules:
  - name: Probe
    event: custom
    when: {name: probe}
    points: 10
  - name: Pricing page
    event: pageview
    when: {path: "/pricing*"}
    points: 5
    max_times: 3
  - name: Whitepaper
    event: download
    points: 8
thresholds:
  - name: Probe MQL
    score: engagement
    at_least: 10
    actions:
      - set_stage: mql
      - add_tag: probe
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="events/s sent, probes included")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load not counted")
    parser.add_argument("--drain", type=float, default=10.0, help="most seconds to wait at end")
    parser.add_argument("--probes", type=float, default=10.0, help="probes per second")
    parser.add_argument(
        "--database", choices=("sqlite", "pg", "both"), default="sqlite", help="run on which"
    )
    parser.add_argument("--visitors", type=int, default=4000, help="background visitor pool")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    return parser.parse_args()


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; NaN when there is nothing."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def pct(seconds: list[float], q: float) -> float:
    """Quantile of durations in seconds, in milliseconds."""
    return quantile(seconds, q) * 1000


# ---------------------------------------------------------------- probes and the poller


@dataclass
class Probe:
    email: str
    sent: float  # perf_counter just before the request was written
    sent_wall: float  # time.time() at the same moment
    measured: bool
    seen: float | None = None
    action_at: float | None = None  # stage_changes.created_at, as a Unix time


class ProbeBook:
    """Probes sent and seen; shared by the load generator and the poller (one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.probes: dict[str, Probe] = {}
        self.pending: set[str] = set()

    def add(self, probe: Probe) -> None:
        with self.lock:
            self.probes[probe.email] = probe
            self.pending.add(probe.email)

    def waiting(self) -> list[str]:
        with self.lock:
            return list(self.pending)

    def saw(self, found: Iterable[tuple[str, Any]], at: float) -> None:
        with self.lock:
            for email, created_at in found:
                if email in self.pending:
                    self.pending.discard(email)
                    probe = self.probes[email]
                    probe.seen = at
                    probe.action_at = _unix(created_at)

    def outstanding(self, measured_only: bool = True) -> int:
        with self.lock:
            return sum(1 for e in self.pending if self.probes[e].measured or not measured_only)


def _unix(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:  # SQLite hands stored times back naive, always UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


PROBE_QUERY = (
    "SELECT c.email, s.created_at FROM contacts c "
    "LEFT JOIN stage_changes s ON s.contact_id = c.id AND s.to_stage = 'mql' "
    "WHERE c.stage = 'mql' AND c.email IN ({})"
)


def probe_query(kind: str, location: str) -> tuple[Callable[[list[str]], list[Any]], Callable]:
    """A function asking which of these emails are at stage mql, on its own connection."""
    if kind == "sqlite":
        conn = sqlite3.connect(location, timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
        mark = "?"
    else:
        import psycopg

        conn = psycopg.connect(location, autocommit=True)
        mark = "%s"

    def ask(emails: list[str]) -> list[Any]:
        sql = PROBE_QUERY.format(", ".join([mark] * len(emails)))
        return list(conn.execute(sql, emails).fetchall())

    return ask, conn.close


@dataclass
class Samples:
    """What the poller thread saw of the stream besides the probes."""

    backlog: list[tuple[float, int]] = field(default_factory=list)  # (perf, XLEN)
    consumers: list[tuple[float, str]] = field(default_factory=list)  # first seen (perf, name)
    gone: list[tuple[float, str]] = field(default_factory=list)  # last job's consumer removed
    polls: int = 0
    poll_seconds: float = 0.0


def poll_loop(
    book: ProbeBook,
    ask: Callable[[list[str]], list[Any]],
    client: Any,
    stream: str,
    group: str,
    samples: Samples,
    stop: threading.Event,
) -> None:
    """Every 20 ms one query over the pending probes; every 200 ms the stream's state."""
    next_sample = 0.0
    known: set[str] = set()
    while not stop.is_set():
        started = time.perf_counter()
        emails = book.waiting()
        if emails:
            found = ask(emails)
            done = time.perf_counter()
            book.saw(found, done)
            samples.polls += 1
            samples.poll_seconds += done - started
        if started >= next_sample:
            next_sample = started + SAMPLE_SECONDS
            with contextlib.suppress(Exception):
                samples.backlog.append((started, client.xlen(stream)))
                names = {
                    (c["name"].decode() if isinstance(c["name"], bytes) else c["name"])
                    for c in client.xinfo_consumers(stream, group)
                }
                samples.consumers.extend((started, n) for n in sorted(names - known))
                samples.gone.extend((started, n) for n in sorted(known - names))
                known = names
        stop.wait(max(0.0, POLL_SECONDS - (time.perf_counter() - started)))


# ---------------------------------------------------------------- load generator


class Connection:
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.out = memoryview(b"")
        self.buf = bytearray()
        self.sent_at = 0.0
        self.events = 0
        self.writing = False
        self.data = b""
        self.retried = False


@dataclass
class LoadStats:
    requests: int = 0
    events: int = 0
    accepted: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    max_lag: float = 0.0
    idle_closed: int = 0
    resent: int = 0


class LoadGenerator:
    """Paced snippet-like `POST /e` traffic with probes mixed in, on keep-alive sockets."""

    def __init__(
        self, port: int, site_key: str, args: argparse.Namespace, book: ProbeBook, seed: int = 3
    ) -> None:
        self.port = port
        self.site_key = site_key
        self.rate = args.rate
        self.probe_every = 1.0 / args.probes if args.probes > 0 else float("inf")
        self.book = book
        self.rng = random.Random(seed)
        self.visitors = [common.visitor_key(self.rng) for _ in range(args.visitors)]
        self.identified: set[int] = set()
        self.selector = selectors.DefaultSelector()
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.max_conns = 64
        self.head = (
            f"POST /e HTTP/1.1\r\nHost: {HOST}:{port}\r\nOrigin: {ORIGIN}\r\n"
            f"Referer: {ORIGIN}/pricing\r\nContent-Type: text/plain;charset=UTF-8\r\n"
            f"User-Agent: {common.BROWSER_UAS[0]}\r\nAccept: */*\r\n"
        )
        self.probe_seq = 0
        self.run_tag = uuid.uuid4().hex[:8]
        self.next_send = self.next_probe = 0.0
        self.window = (float("inf"), float("inf"))
        self.stats = LoadStats()
        self.warm = LoadStats()
        for _ in range(8):
            self._open()

    # -- bodies

    def _event(self, kind: str, page: str, ts: int, first: bool = False) -> dict[str, Any]:
        return common.snippet_event(kind, self.rng, page, ORIGIN, ts, first)

    def background(self) -> tuple[bytes, int]:
        rng = self.rng
        index = rng.randrange(len(self.visitors))
        n = rng.choices([s for s, _ in EVENTS_WEIGHTS], [w for _, w in EVENTS_WEIGHTS])[0]
        ts = int(time.time() * 1000)
        page = "/pricing" if rng.random() < 0.2 else rng.choice(common.PAGES)
        events = [self._event("pageview", page, ts, first=rng.random() < 0.3)]
        kinds = rng.choices([k for k, _ in EXTRA_KINDS], [w for _, w in EXTRA_KINDS], k=n - 1)
        for kind in kinds:
            event = self._event(kind, rng.choice(common.PAGES), ts + 1500)
            if kind == "identify":
                event["email"] = f"person.{index}@example.com"
                self.identified.add(index)
            events.append(event)
        return self._body(self.visitors[index], events), n

    def probe(self) -> tuple[bytes, int, str]:
        self.probe_seq += 1
        email = f"probe.{self.run_tag}.{self.probe_seq}@latency.example.com"
        ts = int(time.time() * 1000)
        identify = self._event("identify", "/contact", ts)
        identify["email"] = email
        custom = self._event("custom", "/contact", ts)
        custom["name"] = "probe"
        return self._body(common.visitor_key(self.rng), [identify, custom]), 2, email

    def _body(self, visitor: str, events: list[dict[str, Any]]) -> bytes:
        body = json.dumps(
            {"site": self.site_key, "visitor": visitor, "dnt": False, "events": events},
            separators=(",", ":"),
        ).encode()
        return (self.head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    # -- sockets

    def _open(self) -> Connection:
        conn = Connection(self.port)
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        self.idle.append(conn)
        return conn

    def _drop(self, conn: Connection) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        self.busy.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in [*self.idle, *self.busy]:
            self._drop(conn)
        self.selector.close()

    def _stats_for(self, at: float) -> LoadStats:
        start, end = self.window
        return self.stats if start <= at < end else self.warm

    def _send(self, conn: Connection, data: bytes, n: int) -> None:
        self.idle.remove(conn)
        self.busy.add(conn)
        conn.out, conn.events, conn.data = memoryview(data), n, data
        conn.sent_at = time.perf_counter()
        conn.retried = False
        stats = self._stats_for(conn.sent_at)
        stats.requests += 1
        stats.events += n
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._fail(conn)
            return
        conn.out = conn.out[sent:]
        if bool(conn.out) != conn.writing:
            conn.writing = bool(conn.out)
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self.selector.modify(conn.sock, mask, conn)

    def _fail(self, conn: Connection) -> None:
        """A connection broke: an error if a request was in flight; else the server closed
        an idle keep-alive connection, which is normal (a new one is opened when needed)."""
        busy = conn in self.busy
        self._drop(conn)
        if not busy:
            self.stats.idle_closed += 1
        elif not conn.buf and not conn.retried:
            # The server closed a kept-alive connection as the request went out: send it
            # again on a new one, as browsers do (event ids make a duplicate harmless).
            self.stats.resent += 1
            fresh = self._open()
            self.idle.remove(fresh)
            self.busy.add(fresh)
            fresh.out, fresh.events, fresh.data = memoryview(conn.data), conn.events, conn.data
            fresh.sent_at, fresh.retried = conn.sent_at, True
            self._flush(fresh)
        else:
            self._stats_for(conn.sent_at).errors += 1

    def _poll(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            conn: Connection = key.data
            if mask & selectors.EVENT_WRITE and conn.out:
                self._flush(conn)
            if not mask & selectors.EVENT_READ:
                continue
            try:
                chunk = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                self._fail(conn)
                continue
            if not chunk:
                self._fail(conn)
                continue
            conn.buf += chunk
            parsed = parse_response(conn.buf)
            if parsed is None:
                continue
            status, used, close = parsed
            del conn.buf[:used]
            stats = self._stats_for(conn.sent_at)
            stats.latencies.append(time.perf_counter() - conn.sent_at)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if status == 204:
                stats.accepted += conn.events
            if close:
                self._drop(conn)
            else:
                self.busy.discard(conn)
                self.idle.append(conn)

    def _connection(self) -> Connection | None:
        if not self.idle and len(self.busy) < self.max_conns:
            self._open()
        return self.idle[-1] if self.idle else None

    def run(self, until: float) -> None:
        """Send at the paced rate until `until` (perf_counter), probes when due."""
        now = time.perf_counter()
        self.next_send = self.next_send or now
        self.next_probe = self.next_probe or now
        while now < until:
            if now >= self.next_send:
                conn = self._connection()
                if conn is not None:
                    stats = self._stats_for(now)
                    stats.max_lag = max(stats.max_lag, now - self.next_send)
                    if now >= self.next_probe:
                        self.next_probe += self.probe_every
                        data, n, email = self.probe()
                        sent = time.perf_counter()
                        start, end = self.window
                        self.book.add(Probe(email, sent, time.time(), start <= sent < end))
                    else:
                        data, n = self.background()
                    self._send(conn, data, n)
                    self.next_send += n / self.rate
                    self._poll(0)
                    now = time.perf_counter()
                    continue
                self._poll(0.005)
            else:
                self._poll(min(self.next_send, until) - now)
            now = time.perf_counter()

    def finish(self, seconds: float = 10.0) -> None:
        """Wait for in-flight requests (no new ones)."""
        deadline = time.perf_counter() + seconds
        while self.busy and time.perf_counter() < deadline:
            self._poll(0.05)
        for conn in list(self.busy):
            self._stats_for(conn.sent_at).errors += 1
            self._drop(conn)


# ---------------------------------------------------------------- CPU from /proc


def _proc_cpu(pid: int) -> int:
    """utime+stime of a process and its reaped children, in clock ticks; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(f) for f in fields[11:15])


def tree(pid: int) -> list[int]:
    found = [pid]
    with contextlib.suppress(OSError):
        for child in children(pid):
            found += tree(child)
    return found


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


def pg_backends(name: str) -> list[int]:
    """Server processes connected to this database (the poller's included)."""
    import psycopg

    with psycopg.connect(**common.PG_ADMIN, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [name])
        return [pid for (pid,) in rows]


def machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks over all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds per named process group between `start` and `stop`."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, int]] = {}
        self.self_before = 0.0
        self.machine_before = (0, 0)

    def snapshot(self) -> dict[str, dict[int, int]]:
        return {name: {p: _proc_cpu(p) for p in pids()} for name, pids in self.groups.items()}

    def start(self) -> None:
        self.before = self.snapshot()
        times = os.times()
        self.self_before = times.user + times.system
        self.machine_before = machine_busy()

    def stop(self, seconds: float) -> list[tuple[str, float]]:
        """Each group's CPU-seconds per second; the last rows are this script and the machine."""
        tick = os.sysconf("SC_CLK_TCK")
        after = self.snapshot()
        rows = []
        for name, now in after.items():
            # Counting reaped children in their parent keeps a tree's total monotonic.
            then = self.before.get(name, {})
            used = sum(ticks - then.get(pid, 0) for pid, ticks in now.items())
            rows.append((name, max(0, used) / tick / seconds))
        times = os.times()
        used_here = times.user + times.system - self.self_before
        rows.append(("this script (load + poller)", used_here / seconds))
        busy, total = machine_busy()
        cores = common.cpu_count()
        share = (busy - self.machine_before[0]) / max(1, total - self.machine_before[1])
        rows.append((f"whole machine ({cores} CPUs, everyone)", share * cores))
        return rows


# ---------------------------------------------------------------- set-up


def child_env(db_url: str, redis_url: str) -> dict[str, str]:
    return dict(
        os.environ,
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        SECRET_KEY="bench",
        PYTHONPATH=str(common.ROOT),
    )


def spawn(
    cleanup: common.Cleanup, what: str, command: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen:
    out = log.open("wb")
    cleanup.add(f"{what} log", out.close)
    process = subprocess.Popen(
        command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(log.parent)
    )
    return cleanup.process(what, process)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def stop_worker(process: subprocess.Popen) -> None:
    """Stop an RQ worker and its work horse: the first SIGTERM waits for the running job
    (an ingestion job reads for a minute), a second one at least 1 s later kills the horse."""
    if process.poll() is not None:
        return
    horses = [(pid, _start_time(pid)) for pid in tree(process.pid)[1:]]
    process.terminate()
    for _ in range(2):
        try:
            process.wait(1.2)
            break
        except subprocess.TimeoutExpired:
            process.terminate()
    else:
        common.stop_process(process)
    for pid, started in horses:  # only if still the very process we started
        if started is not None and _start_time(pid) == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def spawn_worker(
    cleanup: common.Cleanup, queue: str, command: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen:
    out = log.open("wb")
    cleanup.add(f"worker {queue} log", out.close)
    process = subprocess.Popen(
        [*command, "worker", "--queues", queue],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=str(log.parent),
    )
    cleanup.add(f"worker --queues {queue}", lambda: stop_worker(process))
    return process


def start_tracker(
    cleanup: common.Cleanup, tmp: Path, env: dict[str, str], args: argparse.Namespace
) -> tuple[int, subprocess.Popen]:
    from tracker.redis_conn import free_port

    port = free_port()
    log = tmp / "gunicorn.log"
    command = common.gunicorn_command(
        common.ROOT, HOST, port, args.workers, args.threads, log, "wsgi:app"
    )
    process = cleanup.process(
        "gunicorn",
        subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp)
        ),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited at start:\n{tail(log)}")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            if ok and len(children(process.pid)) >= args.workers:
                return port, process
        time.sleep(0.2)
    raise SystemExit(f"gunicorn did not answer /healthz within 30 s:\n{tail(log)}")


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def ingest_settings(env: dict[str, str]) -> str:
    """The ingestion settings the child processes run with (environment, else default)."""
    from tracker.settings import SETTINGS

    names = ("INGEST_BATCH", "INGEST_BLOCK_MS", "INGEST_JOB_SECONDS", "SCHEDULER_TICK_SECONDS")
    defaults = {s.name: s.default for s in SETTINGS}
    return ", ".join(f"{n}={env.get(n, defaults[n])}" for n in names)


def wait_for_ingestion(client: Any, logs: list[Path], timeout: float = 30.0) -> None:
    from rq import Queue
    from rq.registry import StartedJobRegistry

    from automation.jobs import INGEST_QUEUE

    registry = StartedJobRegistry(queue=Queue(INGEST_QUEUE, connection=client))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.count >= 1:
            return
        time.sleep(0.2)
    raise SystemExit(
        "no ingestion job started within 30 s:\n" + "\n".join(tail(p, 800) for p in logs)
    )


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    database: str
    rate_eps: float
    accepted_eps: float
    latencies: list[float]
    lost: int
    ok: bool


def run_database(kind: str, args: argparse.Namespace) -> RunResult:
    with common.Cleanup() as cleanup:
        tmp = cleanup.tempdir(f"cl-bench-latency-{kind}-")
        redis_url = common.start_redis(cleanup, tmp)
        pg_name = f"cl_bench_latency_{os.getpid()}"
        if kind == "pg":
            db_url = common.pg_create(pg_name)
            cleanup.add(f"PostgreSQL database {pg_name}", lambda: common.pg_drop(pg_name))
            location = db_url.replace("postgresql+psycopg://", "postgresql://")
        else:
            location = str(tmp / "closedloop.db")
            db_url = f"sqlite:///{location}"
        app = common.make_app(db_url, redis_url)
        common.migrate(app)
        _, site_key = common.create_site(app, [HOST])
        from tracker.db import db
        from tracker.redis_conn import get_redis

        with app.app_context():
            db.engine.dispose()
        client = get_redis(app)
        cleanup.add("redis client", client.close)
        stream, group = app.config["EVENT_STREAM"], app.config["INGEST_GROUP"]
        redis_pid = int(client.info("server")["process_id"])

        env = child_env(db_url, redis_url)
        flask = [sys.executable, "-m", "flask", "--app", APP_SPEC]
        rules = tmp / "rules.yaml"
        rules.write_text(RULES)
        loaded = subprocess.run(
            [*flask, "automation", "load", str(rules)],
            env=env,
            cwd=str(tmp),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if loaded.returncode:
            raise SystemExit(f"automation load failed:\n{loaded.stdout}{loaded.stderr}")
        print(f"rules: {loaded.stdout.strip()}")

        port, server = start_tracker(cleanup, tmp, env, args)
        logs = {n: tmp / f"{n}.log" for n in ("worker-ingest", "worker-default", "scheduler")}
        ingest = spawn_worker(cleanup, "ingest", flask, env, logs["worker-ingest"])
        default = spawn_worker(cleanup, "default", flask, env, logs["worker-default"])
        scheduler = spawn(cleanup, "scheduler", [*flask, "scheduler"], env, logs["scheduler"])
        wait_for_ingestion(client, list(logs.values()))
        print(
            f"{kind}: gunicorn gthread {args.workers}x{args.threads} on {HOST}:{port}, "
            f"1 ingest worker, 1 default worker, 1 scheduler, private Redis; "
            f"{ingest_settings(env)}; first ingestion job running"
        )

        book = ProbeBook()
        ask, close_db = probe_query(kind, location)
        cleanup.add("probe query connection", close_db)
        samples = Samples()
        stop = threading.Event()
        poller = threading.Thread(
            target=poll_loop,
            args=(book, ask, client, stream, group, samples, stop),
            name="poller",
            daemon=True,
        )
        poller.start()
        cleanup.add("poller", lambda: (stop.set(), poller.join(5)))

        load = LoadGenerator(port, site_key, args, book)
        cleanup.add("client connections", load.close)
        meter = CpuMeter(
            {
                "gunicorn (master + workers)": lambda: tree(server.pid),
                "worker --queues ingest (+ horse)": lambda: tree(ingest.pid),
                "worker --queues default (+ horses)": lambda: tree(default.pid),
                "scheduler": lambda: tree(scheduler.pid),
                "redis-server": lambda: [redis_pid],
                **(
                    {
                        "postgres backends of this database": lambda: pg_backends(pg_name),
                        "postgres, all processes (any database)": postgres_pids,
                    }
                    if kind == "pg"
                    else {}
                ),
            }
        )
        began = time.perf_counter()
        print(f"warm-up {args.warmup:.0f}s at {args.rate:.0f} events/s, not counted ...")
        measure_from = began + args.warmup
        measure_to = measure_from + args.seconds
        load.window = (measure_from, measure_to)
        load.run(measure_from)
        meter.start()
        print(f"measuring {args.seconds:.0f}s ...")
        load.run(measure_to)
        cpu = meter.stop(args.seconds)
        load.finish()
        deadline = time.perf_counter() + args.drain
        while book.outstanding() and time.perf_counter() < deadline:
            time.sleep(0.05)
        stop.set()
        poller.join(5)
        for what, process in (
            ("gunicorn", server),
            ("ingest worker", ingest),
            ("default", default),
        ):
            if process.poll() is not None:
                print(f"  {what} DIED during the run (exit {process.returncode})")
        tags = tagged_probes(ask, location, kind, load.run_tag)
        jobs = ingest_jobs(logs["worker-ingest"])
        window = (measure_from, measure_to)
        return report(kind, args, load, book, samples, cpu, window, tags, jobs)


def tagged_probes(ask: Any, location: str, kind: str, run_tag: str) -> int:
    """How many probe contacts carry the tag `probe` (the second action)."""
    sql = (
        "SELECT count(*) FROM contact_tags t JOIN contacts c ON c.id = t.contact_id "
        "WHERE t.tag = 'probe' AND c.email LIKE {}"
    )
    like = f"probe.{run_tag}.%"
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(location, timeout=5)) as conn:
            return conn.execute(sql.format("?"), [like]).fetchone()[0]
    import psycopg

    with psycopg.connect(location) as conn:
        return conn.execute(sql.format("%s"), [like]).fetchone()[0]


JOB_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) worker (?:"
    r"(?P<start>.*ingest: automation\.jobs\.ingest\(\) \()|"
    r"(?P<end>Successfully completed automation\.jobs\.ingest\(\) job))"
)


def ingest_jobs(log: Path) -> list[tuple[str, float]]:
    """('start'|'end', perf_counter time) of each ingestion job, from the worker's log."""
    offset = time.time() - time.perf_counter()
    found = []
    for line in tail(log, 10**7).splitlines():
        if match := JOB_LINE.match(line):
            wall = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local
            found.append(("start" if match["start"] else "end", wall - offset))
    return found


def report_handovers(
    samples: Samples,
    jobs: list[tuple[str, float]],
    window: tuple[float, float],
    drain: float,
    seen: list[Probe],
) -> None:
    """When one ingestion job ended and the next read the stream, and what it cost probes."""
    start, end = window
    reads = [at for at, _ in samples.consumers if start - 5 <= at < end + drain]
    if not reads:
        print("ingestion job hand-overs: none during the window")
        return
    for first_read in reads:
        ended = [at for kind, at in jobs if kind == "end" and at <= first_read]
        began = [at for kind, at in jobs if kind == "start" and at <= first_read]
        gone = [at for at, _ in samples.gone if at <= first_read]
        backlog = [n for at, n in samples.backlog if first_read <= at < first_read + 2]
        waiting = [p for p in seen if p.sent <= first_read <= p.seen]  # type: ignore[operator]
        parts = [f"hand-over, first read of the new job at {first_read - start:+.1f}s:"]
        if ended and began and began[-1] >= ended[-1]:
            parts.append(
                f"job ended -> next job started {(began[-1] - ended[-1]) * 1000:.0f} ms "
                f"(scheduler tick + dequeue + fork), started -> first read "
                f"{(first_read - began[-1]) * 1000:.0f} ms (job set-up, "
                f"{SAMPLE_SECONDS * 1000:.0f} ms sampling);"
            )
        if gone:
            parts.append(f"no consumer for {(first_read - gone[-1]) * 1000:.0f} ms;")
        parts.append(f"backlog after it up to {max(backlog, default=0):,} entries;")
        if waiting:
            worst = max(p.seen - p.sent for p in waiting)  # type: ignore[operator]
            parts.append(f"{len(waiting)} probes waited across it, worst {worst * 1000:.0f} ms")
        print(" ".join(p for p in parts if p))
    stalled = {
        id(p)
        for p in seen
        for read in reads
        if p.sent <= read <= p.seen  # type: ignore[operator]
    }
    rest = [p.seen - p.sent for p in seen if id(p) not in stalled]  # type: ignore[operator]
    print(
        f"  without the {len(stalled)} probes caught in a hand-over: p50 {pct(rest, 0.5):.0f} ms "
        f"p95 {pct(rest, 0.95):.0f} ms p99 {pct(rest, 0.99):.0f} ms max {pct(rest, 1.0):.0f} ms"
    )


def report(
    kind: str,
    args: argparse.Namespace,
    load: LoadGenerator,
    book: ProbeBook,
    samples: Samples,
    cpu: list[tuple[str, float]],
    window: tuple[float, float],
    tagged: int,
    jobs: list[tuple[str, float]],
) -> RunResult:
    start, end = window
    stats = load.stats
    rate = stats.events / args.seconds
    accepted = stats.accepted / args.seconds
    non_204 = {s: n for s, n in stats.statuses.items() if s != 204}
    warm_non_204 = {s: n for s, n in load.warm.statuses.items() if s != 204}
    print(
        f"load: sent {stats.events:,} events in {stats.requests:,} requests in "
        f"{args.seconds:.0f}s = {rate:,.0f} events/s (target {args.rate:,.0f}); "
        f"accepted (204) {accepted:,.0f} events/s; HTTP p50 {pct(stats.latencies, 0.5):.1f} ms "
        f"p99 {pct(stats.latencies, 0.99):.1f} ms; worst pacing lag {stats.max_lag * 1000:.0f} ms"
        + (f"; NON-204 {non_204}" if non_204 else "")
        + (f"; errors {stats.errors}" if stats.errors else "")
        + (f"; resent after a keep-alive close {stats.resent}" if stats.resent else "")
        + (f"; warm-up NON-204 {warm_non_204}" if warm_non_204 else "")
    )
    if rate < 0.97 * args.rate or stats.max_lag > 1.0:
        print(f"  WARNING: this machine did not sustain {args.rate:,.0f} events/s from one client")
    with book.lock:
        measured = [p for p in book.probes.values() if p.measured]
    seen = [p for p in measured if p.seen is not None]
    lost = len(measured) - len(seen)
    all_seen = sum(1 for p in book.probes.values() if p.seen is not None)
    latencies = [p.seen - p.sent for p in seen]  # type: ignore[operator]
    in_tx = [p.action_at - p.sent_wall for p in seen if p.action_at is not None]
    print(
        f"probes: sent {len(measured)} in the measured window ({len(measured) / args.seconds:.1f}"
        f"/s), seen {len(seen)}, lost {lost}; incl. warm-up {len(book.probes)} sent, "
        f"{all_seen} seen, {tagged} tagged 'probe'; poller: {samples.polls:,} queries, "
        f"{samples.poll_seconds / max(1, samples.polls) * 1000:.1f} ms each"
    )
    print(
        f"latency POST -> stage mql visible: p50 {pct(latencies, 0.5):.0f} ms  "
        f"p95 {pct(latencies, 0.95):.0f} ms  p99 {pct(latencies, 0.99):.0f} ms  "
        f"max {pct(latencies, 1.0):.0f} ms  (target p95 < {TARGET_P95_MS:.0f} ms: "
        f"{'met' if pct(latencies, 0.95) < TARGET_P95_MS else 'NOT met'})"
    )
    if in_tx:
        print(
            f"  cross-check, POST -> stage_changes.created_at (scoring began, before commit): "
            f"p50 {pct(in_tx, 0.5):.0f} ms  p95 {pct(in_tx, 0.95):.0f} ms  "
            f"max {pct(in_tx, 1.0):.0f} ms"
        )
    backlog = [n for at, n in samples.backlog if start <= at < end]
    if backlog:
        print(
            f"stream backlog (XLEN every {SAMPLE_SECONDS * 1000:.0f} ms): mean "
            f"{sum(backlog) / len(backlog):,.0f}, p95 {quantile(backlog, 0.95):,.0f}, "
            f"max {max(backlog):,} entries"
        )
    report_handovers(samples, jobs, window, args.drain, seen)
    worst = sorted(seen, key=lambda p: p.seen - p.sent, reverse=True)[:5]  # type: ignore[operator]
    if worst:
        print(
            "slowest probes (sent at, latency): "
            + ", ".join(f"{p.sent - start:+.1f}s {(p.seen - p.sent) * 1000:.0f} ms" for p in worst)  # type: ignore[operator]
        )
    print("CPU-seconds per second over the measured window:")
    for name, used in cpu:
        print(f"  {name:<38} {used:5.2f}")
    ok = lost == 0 and not non_204 and stats.errors == 0 and tagged == all_seen
    return RunResult(kind, rate, accepted, latencies, lost, ok)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = parse_args()
    kinds = ["sqlite", "pg"] if args.database == "both" else [args.database]
    if "pg" in kinds and not common.pg_answers():
        raise SystemExit("PostgreSQL does not answer at 127.0.0.1:5432 (user postgres)")
    print(
        f"lead latency at {args.rate:,.0f} events/s ({args.probes:g} probes/s inside it), "
        f"{args.warmup:.0f}s warm-up + {args.seconds:.0f}s measured, on {common.cpu_count()} CPUs"
    )
    results = []
    for kind in kinds:
        print(f"--- {kind}")
        results.append(run_database(kind, args))
    last = results[-1]
    figures = [
        f"p50_ms={pct(last.latencies, 0.5):.0f}",
        f"p95_ms={pct(last.latencies, 0.95):.0f}",
        f"p99_ms={pct(last.latencies, 0.99):.0f}",
        f"rate_eps={last.rate_eps:.0f}",
    ]
    if len(results) > 1:
        for r in results:
            figures += [
                f"{r.database}_p50_ms={pct(r.latencies, 0.5):.0f}",
                f"{r.database}_p95_ms={pct(r.latencies, 0.95):.0f}",
                f"{r.database}_p99_ms={pct(r.latencies, 0.99):.0f}",
                f"{r.database}_rate_eps={r.rate_eps:.0f}",
                f"{r.database}_lost={r.lost}",
            ]
    print(" ".join(figures))
    return 0 if all(r.ok for r in results) else 2


if __name__ == "__main__":
    sys.exit(main())
