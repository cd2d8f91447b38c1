"""Closed Loop's web service: collection endpoints, email links, the admin, health and CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

from tracker import (  # noqa: F401 - the models register their tables
    automation_models,
    config,
    email_models,
    errors,
    import_models,
    redis_conn,
    sales_models,
)
from tracker.db import db, migrate
from tracker.netaddr import parse_trusted
from tracker.sites import SiteDirectory, load_sites
from tracker.snippet_asset import build as build_snippet
from tracker.stream import EventSink

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def create_app(config_overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then `config_overrides`."""
    app = Flask(__name__, instance_relative_config=True)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    app.config.update(config.load(Path(app.instance_path), config_overrides))
    app.config["SQLALCHEMY_DATABASE_URI"] = app.config["DATABASE_URL"]
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    app.config["MAX_CONTENT_LENGTH"] = None
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=app.config["ENV"] != "development",
        SESSION_COOKIE_NAME="closedloop_session",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )

    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS), render_as_batch=True)
    redis_conn.init_app(app)
    errors.register(app)
    app.extensions["trusted_proxies"] = parse_trusted(app.config["TRUSTED_PROXIES"])
    app.extensions["snippet"] = build_snippet()
    app.extensions["event_sink"] = EventSink(redis_conn.get_redis(app), app.config["EVENT_STREAM"])

    def _load_sites() -> dict:
        with app.app_context():
            return load_sites()

    app.extensions["sites"] = SiteDirectory(_load_sites, app.config["SITE_CACHE_SECONDS"])

    from tracker import cli, collect, email_links, health, outbox_view
    from tracker.admin import bp as admin_bp

    app.register_blueprint(admin_bp)
    app.register_blueprint(collect.bp)
    app.register_blueprint(email_links.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(outbox_view.bp)
    cli.register(app)
    return app
