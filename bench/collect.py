"""Benchmark the collection endpoint `POST /e` against a bare 204 endpoint on the same server.

    .venv/bin/python bench/collect.py [--seconds 20] [--rounds 2] [--concurrency 8]

Starts the tracker under gunicorn (gthread, 2 workers x 4 threads, keep-alive) on a free
port of 127.0.0.1, with a migrated SQLite file in a temp dir, a private redis-server and a
site allowing 127.0.0.1. The same server also answers `POST /bare` (bench/_bare_app.py),
which only returns 204. Phases alternate bare, collect, bare, collect … with the same
concurrency, duration and request bodies (snippet-like batches of 1-3 events, Origin
http://127.0.0.1); each prints requests/s and p50/p99 latency. At the end every collect
request must have answered 204 and the stream must hold exactly the events accepted.
The load generator is one single-threaded process (non-blocking sockets, keep-alive,
no pipelining), so it takes as little CPU from the server as a Python client can.
Everything it starts or creates is removed at the end; the last line is `key=value`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import selectors
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

HOST = "127.0.0.1"
ORIGIN = "http://127.0.0.1"
BODIES = 2000
EVENTS_WEIGHTS = ((1, 0.6), (2, 0.25), (3, 0.15))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="bare+collect pairs to run")
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds of warm-up, not counted")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="open connections, each with one request in flight",
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    return parser.parse_args()


# ---------------------------------------------------------------- request bodies


def build_bodies(site_key: str, count: int, seed: int = 7) -> list[tuple[bytes, int]]:
    """Snippet-like `POST /e` bodies: a pageview, often followed by engage or a click."""
    rng = random.Random(seed)
    sizes, weights = zip(*EVENTS_WEIGHTS, strict=True)
    bodies = []
    for _ in range(count):
        n = rng.choices(sizes, weights)[0]
        page = rng.choice(common.PAGES)
        ts = int(time.time() * 1000)
        events = [common.snippet_event("pageview", rng, page, ORIGIN, ts, first=rng.random() < 0.3)]
        for _ in range(n - 1):
            kind = rng.choice(("engage", "engage", "outbound", "custom"))
            events.append(common.snippet_event(kind, rng, page, ORIGIN, ts + 1500))
        body = {
            "site": site_key,
            "visitor": common.visitor_key(rng),
            "dnt": False,
            "events": events,
        }
        bodies.append((json.dumps(body, separators=(",", ":")).encode(), n))
    return bodies


def build_requests(
    path: str, port: int, bodies: list[tuple[bytes, int]]
) -> list[tuple[bytes, int]]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nOrigin: {ORIGIN}\r\n"
        f"Referer: {ORIGIN}/pricing\r\nContent-Type: text/plain;charset=UTF-8\r\n"
        f"User-Agent: {common.BROWSER_UAS[0]}\r\nAccept: */*\r\n"
    )
    return [((head + f"Content-Length: {len(b)}\r\n\r\n").encode() + b, n) for b, n in bodies]


# ---------------------------------------------------------------- load generator


@dataclass
class PhaseResult:
    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    events_accepted: int = 0
    errors: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    redis_cpu: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Connection:
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.out = memoryview(b"")
        self.buf = bytearray()
        self.sent_at = 0.0
        self.events = 0
        self.busy = False
        self.writing = False

    def open(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def parse_response(buf: bytearray) -> tuple[int, int, bool] | None:
    """Return (status, bytes used, server closes) once a whole response is in `buf`."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length, close = 0, False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    total = end + 4 + length
    if len(buf) < total:
        return None
    return status, total, close


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of processes (and their threads), from /proc; 0 for gone ones."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def run_phase(
    name: str,
    requests: list[tuple[bytes, int]],
    conns: list[Connection],
    seconds: float,
    server_pids: list[int],
    redis_pid: int,
    count_events: bool,
) -> PhaseResult:
    """Keep every connection busy for `seconds`; then let in-flight requests finish.

    The connections stay open from phase to phase, so both endpoints are served by the
    same connection-to-worker assignment."""
    result = PhaseResult(name)
    selector = selectors.DefaultSelector()
    for conn in conns:
        if conn.sock is not None:
            selector.register(conn.sock, selectors.EVENT_READ, conn)
    rng = random.Random(zlib.crc32(name.encode()))
    cursor = rng.randrange(len(requests))

    def send(conn: Connection) -> None:
        nonlocal cursor
        data, n = requests[cursor]
        cursor = (cursor + 1) % len(requests)
        if conn.sock is None:
            selector.register(conn.open(), selectors.EVENT_READ, conn)
        conn.out, conn.events, conn.busy = memoryview(data), n, True
        conn.sent_at = time.perf_counter()
        flush(conn)

    def flush(conn: Connection) -> None:
        assert conn.sock is not None
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        conn.out = conn.out[sent:]
        if bool(conn.out) != conn.writing:  # only touch epoll when a send is left over
            conn.writing = bool(conn.out)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            selector.modify(conn.sock, events, conn)

    def fail(conn: Connection) -> None:
        result.errors += 1
        if conn.sock is not None:
            selector.unregister(conn.sock)
        conn.close()
        conn.busy = conn.writing = False
        conn.buf.clear()

    cpu0, srv0, red0 = time.process_time(), cpu_seconds(server_pids), cpu_seconds([redis_pid])
    started = time.perf_counter()
    deadline = started + seconds
    last_done = started
    for conn in conns:
        send(conn)
    while True:
        now = time.perf_counter()
        sending = now < deadline
        if not sending and not any(c.busy for c in conns):
            break
        if not sending and now > deadline + 10:
            result.errors += sum(c.busy for c in conns)
            break
        for key, mask in selector.select(timeout=0.5):
            conn: Connection = key.data
            if mask & selectors.EVENT_WRITE and conn.out:
                flush(conn)
            if not mask & selectors.EVENT_READ:
                continue
            try:
                chunk = conn.sock.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                fail(conn)
                continue
            if not chunk:
                fail(conn)
                if time.perf_counter() < deadline:
                    send(conn)
                continue
            conn.buf += chunk
            parsed = parse_response(conn.buf)
            if parsed is None:
                continue
            status, used, close = parsed
            del conn.buf[:used]
            done = time.perf_counter()
            last_done = done
            result.latencies.append(done - conn.sent_at)
            result.statuses[status] += 1
            if status == 204 and count_events:
                result.events_accepted += conn.events
            conn.busy = False
            if close:
                selector.unregister(conn.sock)  # type: ignore[arg-type]
                conn.close()
                conn.writing = False
            if done < deadline:
                send(conn)
    result.seconds = last_done - started
    result.client_cpu = (time.process_time() - cpu0) / result.seconds
    result.server_cpu = (cpu_seconds(server_pids) - srv0) / result.seconds
    result.redis_cpu = (cpu_seconds([redis_pid]) - red0) / result.seconds
    for conn in conns:
        if conn.sock is not None:
            selector.unregister(conn.sock)
    selector.close()
    return result


def owners(port: int, conns: list[Connection], workers: list[int]) -> list[int | None]:
    """Which gunicorn worker holds the server end of each connection (from /proc)."""
    inode_by_client_port: dict[int, str] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, inode = parts[1], parts[2], parts[9]
        if int(local.rsplit(":", 1)[1], 16) == port:
            inode_by_client_port[int(remote.rsplit(":", 1)[1], 16)] = inode
    owner_by_inode: dict[str, int] = {}
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner_by_inode[target[8:-1]] = pid
    found: list[int | None] = []
    for conn in conns:
        client_port = conn.sock.getsockname()[1] if conn.sock else None
        found.append(owner_by_inode.get(inode_by_client_port.get(client_port, "")))
    return found


def open_balanced(port: int, count: int, workers: list[int], probe: bytes) -> list[Connection]:
    """Open `count` keep-alive connections spread evenly over the gunicorn workers.

    Which worker accepts a connection is a race; an uneven spread leaves a worker (and a
    core) idle and makes phases incomparable, so connections are reopened until even."""

    def opened() -> Connection:
        conn = Connection(port)
        sock = conn.open()
        sock.setblocking(True)
        sock.sendall(probe)  # one request, so the worker has surely accepted it
        buf = bytearray()
        while parse_response(buf) is None:
            chunk = sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed a connection during set-up")
            buf += chunk
        sock.setblocking(False)
        return conn

    conns = [opened() for _ in range(count)]
    for _ in range(200):
        where = owners(port, conns, workers)
        per = collections.Counter(where)
        busiest = max(workers, key=lambda w: per[w])
        if None not in per and per[busiest] - min(per[w] for w in workers) <= 1:
            break
        victim = where.index(None) if None in per else where.index(busiest)
        conns[victim].close()
        conns[victim] = opened()
        time.sleep(0.01)
    spread = collections.Counter(owners(port, conns, workers))
    print(f"connections per worker: {dict(sorted((str(k), v) for k, v in spread.items()))}")
    return conns


# ---------------------------------------------------------------- server


def start_server(
    cleanup: common.Cleanup, tmp: Path, db_url: str, redis_url: str, args: argparse.Namespace
) -> tuple[int, subprocess.Popen]:
    from tracker.redis_conn import free_port

    port = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        SECRET_KEY="bench",
        PYTHONPATH=str(common.ROOT),
    )
    log = tmp / "gunicorn.log"
    command = common.gunicorn_command(
        Path(__file__).parent, HOST, port, args.workers, args.threads, log, "_bare_app:app"
    )
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp)
    )
    cleanup.process("gunicorn", process)
    deadline = time.monotonic() + 30
    import http.client

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited at start:\n{log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200 and len(children(process.pid)) >= args.workers:
                conn.close()
                return port, process
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"gunicorn did not answer /healthz within 30 s:\n{log.read_text()[-2000:]}")


def report(result: PhaseResult) -> None:
    other = {s: n for s, n in result.statuses.items() if s != 204}
    print(
        f"  {result.name:<9} {result.rps:8,.0f} req/s  p50 {result.pct(0.5):6.2f} ms  "
        f"p99 {result.pct(0.99):6.2f} ms  ({len(result.latencies):,} requests in "
        f"{result.seconds:.1f}s; CPU-s/s: server {result.server_cpu:.2f}, "
        f"redis {result.redis_cpu:.2f}, load generator {result.client_cpu:.2f})"
        + (f"  NON-204: {other}" if other else "")
        + (f"  errors: {result.errors}" if result.errors else "")
    )


def combine(name: str, results: list[PhaseResult]) -> PhaseResult:
    total = PhaseResult(name)
    for r in results:
        total.seconds += r.seconds
        total.latencies += r.latencies
        total.statuses.update(r.statuses)
        total.events_accepted += r.events_accepted
        total.errors += r.errors
        total.client_cpu += r.client_cpu * r.seconds
        total.server_cpu += r.server_cpu * r.seconds
        total.redis_cpu += r.redis_cpu * r.seconds
    if total.seconds:
        total.client_cpu /= total.seconds
        total.server_cpu /= total.seconds
        total.redis_cpu /= total.seconds
    return total


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    args = parse_args()
    with common.Cleanup() as cleanup:
        tmp = cleanup.tempdir("cl-bench-collect-")
        redis_url = common.start_redis(cleanup, tmp)
        db_url = f"sqlite:///{tmp / 'closedloop.db'}"
        app = common.make_app(db_url, redis_url)
        common.migrate(app)
        _, site_key = common.create_site(app, [HOST])
        from tracker.db import db
        from tracker.redis_conn import get_redis

        with app.app_context():
            db.engine.dispose()
        client = get_redis(app)
        stream = app.config["EVENT_STREAM"]
        start_len = client.xlen(stream)
        redis_pid = int(client.info("server")["process_id"])

        port, server = start_server(cleanup, tmp, db_url, redis_url, args)
        workers = children(server.pid)
        server_pids = [server.pid, *workers]
        bodies = build_bodies(site_key, BODIES)
        mean_events = sum(n for _, n in bodies) / len(bodies)
        mean_bytes = sum(len(b) for b, _ in bodies) / len(bodies)
        collect_requests = build_requests("/e", port, bodies)
        bare_requests = build_requests("/bare", port, bodies)
        print(
            f"gunicorn gthread on {HOST}:{port}: {args.workers} workers x {args.threads} "
            f"threads, keep-alive; SQLite in {tmp}, private Redis {redis_url}"
        )
        print(
            f"bodies: {len(bodies):,} snippet-like batches, {mean_events:.2f} events and "
            f"{mean_bytes:.0f} bytes per request on average; both endpoints get the same ones"
        )
        print(
            f"fairness: this machine has {common.cpu_count()} CPUs, shared by the "
            f"{args.workers} server workers, redis-server and this single-threaded load "
            f"generator ({args.concurrency} keep-alive connections, 1 request in flight "
            "each); the generator costs both endpoints the same, so the ratio is fair, "
            "but absolute req/s are lower than on a dedicated server (CPU use is printed)"
        )

        conns = open_balanced(port, args.concurrency, workers, bare_requests[0][0])
        cleanup.add("client connections", lambda: [c.close() for c in conns])

        def phase(name: str, seconds: float) -> PhaseResult:
            requests = collect_requests if name.startswith("collect") else bare_requests
            return run_phase(
                name, requests, conns, seconds, server_pids, redis_pid, name.startswith("collect")
            )

        print(f"warm-up: {args.warmup:.0f}s, not counted")
        warm = [phase("bare", args.warmup / 2), phase("collect", args.warmup / 2)]
        results: dict[str, list[PhaseResult]] = {"bare": [], "collect": []}
        print(f"phases of {args.seconds:.0f}s, alternating:")
        for _ in range(args.rounds):
            for name in ("bare", "collect"):
                result = phase(name, args.seconds)
                report(result)
                results[name].append(result)
        if server.poll() is not None:
            print("gunicorn died during the run")
            return 2
        bare = combine("bare", results["bare"])
        collect = combine("collect", results["collect"])
        end_len = client.xlen(stream)
        client.close()

    print("totals:")
    report(bare)
    report(collect)
    accepted = collect.events_accepted + sum(w.events_accepted for w in warm)
    grew = end_len - start_len
    non_204 = sum(n for s, n in collect.statuses.items() if s != 204) + sum(
        n for w in warm if w.name == "collect" for s, n in w.statuses.items() if s != 204
    )
    ok = non_204 == 0 and grew == accepted and collect.errors == 0
    ratio = collect.rps / bare.rps if bare.rps else 0.0
    print(
        f"collect accepted {collect.rps * mean_events:,.0f} events/s "
        f"({collect.events_accepted:,} events in the measured phases)"
    )
    print(
        f"check: collect non-204 answers {non_204}, stream XLEN grew by {grew:,}, events "
        f"accepted {accepted:,} (incl. warm-up) -> {'OK' if ok else 'MISMATCH'}"
    )
    print(f"collect/bare = {ratio:.2f}")
    print(
        f"ratio={ratio:.3f} collect_rps={collect.rps:.0f} bare_rps={bare.rps:.0f} "
        f"p99_ms={collect.pct(0.99):.2f}"
    )
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
