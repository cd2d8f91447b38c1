"""Fixtures: a private Redis server, a migrated database (SQLite, or DATABASE_URL), the app.

Everything is real: the Redis server is a redis-server process of the test
session's own, flushed before each test; the database is built by the
migrations and emptied before each test.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tracker import create_app
from tracker.db import db
from tracker.models import Site
from tracker.redis_conn import free_port, get_redis, start_private_server
from tracker.sites import create_site


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the test session's own, on a free port."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    process = start_private_server(url, tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> str:
    """DATABASE_URL when set (CI points it at a fresh PostgreSQL), else a SQLite file;
    either way the schema comes from the migrations."""
    url = os.environ.get("DATABASE_URL") or (
        f"sqlite:///{tmp_path_factory.mktemp('db') / 'closedloop.db'}"
    )
    from flask_migrate import upgrade

    app = create_app({"DATABASE_URL": url, "REDIS_URL": redis_url, "SECRET_KEY": "test"})
    with app.app_context():
        upgrade()
    return url


def make_app(database_url: str, redis_url: str, **overrides: Any) -> Flask:
    """An app on the test database and Redis, with test-friendly timings."""
    config = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "test-secret",
        "BASE_URL": "http://tracker.test",
        "INGEST_BLOCK_MS": 50,
        "SITE_CACHE_SECONDS": 0,
        "VISITOR_LAST_SEEN_SECONDS": 0,
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def app(database_url: str, redis_url: str) -> Iterator[Flask]:
    from automation.render import forget_versions
    from automation.variants import forget_stats

    app = make_app(database_url, redis_url)
    get_redis(app).flushall()
    # Ids start over in an emptied database: what this process cached by id is stale.
    forget_versions()
    forget_stats()
    with app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        # Deleting opportunities fires the attribution trigger: empty its list last.
        db.session.execute(db.metadata.tables["attribution_dirty"].delete())
        db.session.commit()
        db.session.remove()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def site(app: Flask) -> Site:
    """A site that accepts example.com (and subdomains) and local pages."""
    with app.app_context():
        site = create_site("Example", ["example.com", "127.0.0.1", "localhost"])
        db.session.commit()
        db.session.refresh(site)
        db.session.expunge(site)
        return site


BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0 Safari/537.36"
)


def event(kind: str = "pageview", **fields: Any) -> dict[str, Any]:
    """An event as the snippet sends it."""
    body = {
        "id": str(uuid.uuid4()),
        "type": kind,
        "url": "https://example.com/",
        "ts": 1_700_000_000_000,
    }
    body.update(fields)
    return body


def post_events(
    client: FlaskClient,
    site_key: str,
    events: list[dict[str, Any]],
    visitor: str = "visitor-0001",
    origin: str | None = "https://example.com",
    remote_addr: str = "127.0.0.1",
    **headers: str,
) -> Any:
    """POST a batch to /e the way the snippet does (text/plain JSON)."""
    all_headers = {"Content-Type": "text/plain;charset=UTF-8", "User-Agent": BROWSER_UA}
    if origin:
        all_headers["Origin"] = origin
    all_headers.update(headers)
    body = json.dumps({"site": site_key, "visitor": visitor, "events": events})
    return client.post(
        "/e", data=body, headers=all_headers, environ_base={"REMOTE_ADDR": remote_addr}
    )


def ingest_all(app: Flask) -> int:
    """Run ingestion until the stream is empty; return how many events were stored."""
    from automation.ingest import StreamIngestor

    with app.app_context():
        ingestor = StreamIngestor(
            get_redis(app),
            app.config["EVENT_STREAM"],
            app.config["INGEST_GROUP"],
            consumer="test-consumer",
        )
        ingestor.ensure_group()
        stored = 0
        while True:
            result = ingestor.run_once(wait=False)
            if not result.read:
                return stored
            stored += result.stored


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(client: FlaskClient, path: str = "/admin/login") -> str:
    """The session's CSRF token, as a page of the admin embeds it in its forms."""
    page = client.get(path).get_data(as_text=True)
    match = CSRF_RE.search(page)
    assert match, f"no CSRF token in {path}"
    return match.group(1)


def make_user(
    app: Flask, role: str, email: str | None = None, password: str = "correct horse 9"
) -> int:
    """A user of `role` who can log in with `password`; returns the id."""
    from tracker.auth import hash_password
    from tracker.models import User

    with app.app_context():
        user = User(
            email=email or f"{role}@example.com",
            name=role.title(),
            role=role,
            password_hash=hash_password(password),
        )
        db.session.add(user)
        db.session.commit()
        return user.id


def admin_login(
    app: Flask, client: FlaskClient, role: str = "admin", password: str = "correct horse 9"
) -> int:
    """Create a user of `role` and log `client` in as them through the login form."""
    user_id = make_user(app, role, password=password)
    response = client.post(
        "/admin/login",
        data={"email": f"{role}@example.com", "password": password, "csrf_token": csrf_of(client)},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    return user_id


def post_form(client: FlaskClient, path: str, data: dict[str, Any], page: str | None = None) -> Any:
    """POST an admin form with the session's CSRF token (read from `page`, default `path`)."""
    return client.post(path, data={**data, "csrf_token": csrf_of(client, page or path)})
