"""Migrations upgrade a database that holds data, and match the models."""

from __future__ import annotations

from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from tests.conftest import make_app
from tracker.db import db


def test_upgrading_a_populated_database_keeps_its_rows(tmp_path, redis_url):
    app = make_app(f"sqlite:///{tmp_path / 'old.db'}", redis_url)
    with app.app_context():
        upgrade(revision="0001")
        db.session.execute(
            text(
                "INSERT INTO sites (key, name, domains, respect_dnt, created_at) "
                "VALUES ('cl_k', 'n', '[]', 0, '2026-01-01')"
            )
        )
        db.session.execute(
            text(
                "INSERT INTO contacts (email, traits, stage, score, created_at, updated_at) "
                "VALUES ('a@b.co', '{}', 'lead', 0, '2026-01-01', '2026-01-01')"
            )
        )
        db.session.execute(
            text(
                "INSERT INTO visitors (site_id, key, contact_id, first_seen, last_seen, is_bot) "
                "VALUES (1, 'visitor-1', 1, '2026-01-01', '2026-01-01', 0)"
            )
        )
        db.session.commit()
        upgrade()
        row = db.session.execute(
            text(
                "SELECT c.email, c.engagement_score, v.contact_id FROM contacts c "
                "JOIN visitors v ON v.contact_id = c.id"
            )
        ).one()
        assert tuple(row) == ("a@b.co", 0, 1)
        assert db.session.execute(text("PRAGMA foreign_key_check")).all() == []
        downgrade(revision="0001")
        assert db.session.execute(text("SELECT count(*) FROM visitors")).scalar() == 1
        db.session.remove()


def test_models_and_migrations_agree(app):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with app.app_context(), db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert differences == [], "models changed without a migration: flask --app wsgi db migrate"
