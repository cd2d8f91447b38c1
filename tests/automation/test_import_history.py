"""The import history rows: recorded once, claimed once, progress throttled, failures kept."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from automation import contact_import
from automation.contact_import import ImportSummary, decode, detect_mapping, import_contacts
from automation.import_history import (
    ERRORS_KEPT,
    ProgressRecorder,
    claim,
    record_done,
    record_failed,
    record_queued,
    record_started,
)
from tests.conftest import make_user
from tracker.db import db
from tracker.import_models import ContactImport
from tracker.models import Contact, utcnow


def row(app, token: str) -> ContactImport:
    with app.app_context():
        found = db.session.scalar(select(ContactImport).where(ContactImport.token == token))
        db.session.expunge_all()
        return found


def test_an_upload_is_recorded_once_and_claimed_by_one_job(app):
    user = make_user(app, "marketer")
    with app.app_context():
        assert record_queued(db.engine, "tok-1", user, "people.csv", 3, utcnow())
        assert not record_queued(db.engine, "tok-1", user, "people.csv", 3, utcnow())
        assert claim(db.engine, "tok-1", utcnow())
        assert not claim(db.engine, "tok-1", utcnow())  # the duplicated job does nothing
        assert not claim(db.engine, "no-such-token", utcnow())
    recorded = row(app, "tok-1")
    assert (recorded.status, recorded.source, recorded.user_id) == ("running", "admin", user)
    assert (recorded.rows_total, recorded.rows_done) == (3, 0) and recorded.started_at is not None


def test_progress_is_written_at_most_every_second_and_always_at_the_end(app):
    now = [100.0]
    with app.app_context():
        token = record_started(db.engine, "big.csv", 0, utcnow())
        summary = ImportSummary()
        recorder = ProgressRecorder(db.engine, token, summary, clock=lambda: now[0])
        steps = [(100.0, 1000, 5000), (100.5, 2000, 5000), (101.2, 3000, 5000), (101.3, 5000, 5000)]
        seen = []
        for moment, done, total in steps:
            now[0] = moment
            summary.rows, summary.created = done, done // 2
            recorder(done, total)
            recorded = db.session.get(ContactImport, db.session.scalar(select(ContactImport.id)))
            db.session.refresh(recorded)
            seen.append((recorded.rows_done, recorded.rows_total, recorded.created))
    # 100.5 is within a second of the first write; the last call is written however soon.
    assert seen == [(1000, 5000, 500), (1000, 5000, 500), (3000, 5000, 1500), (5000, 5000, 2500)]


def test_a_failed_import_keeps_what_its_committed_batches_did(app, monkeypatch):
    text = "email\n" + "".join(f"p{i}@x.io\n" for i in range(5)) + "not-an-email\n"
    source = decode(text.encode())
    real_write = contact_import._write_batch
    calls = []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(contact_import, "_write_batch", failing_write)
    with app.app_context():
        token = record_started(db.engine, "people.csv", 0, utcnow())
        summary = ImportSummary()
        recorder = ProgressRecorder(db.engine, token, summary)
        with pytest.raises(RuntimeError):
            import_contacts(
                db.engine,
                source,
                detect_mapping(source.headers),
                "import: people.csv",
                progress=recorder,
                batch=2,
                summary=summary,
            )
        record_failed(db.engine, token, "RuntimeError: disk full", utcnow(), recorder)
        stored = db.session.scalar(select(db.func.count()).select_from(Contact))
    recorded = row(app, token)
    assert stored == 2  # the first batch committed, the second rolled back
    assert (recorded.status, recorded.failure) == ("failed", "RuntimeError: disk full")
    assert (recorded.rows_done, recorded.created, recorded.skipped) == (2, 2, 0)
    assert recorded.finished_at is not None


def test_only_the_first_error_lines_are_kept(app):
    text = "email\n" + "".join(f"bad {i}\n" for i in range(ERRORS_KEPT + 50)) + "ok@x.io\n"
    source = decode(text.encode())
    with app.app_context():
        token = record_started(db.engine, "bad.csv", 0, utcnow())
        summary, _ = import_contacts(
            db.engine, source, detect_mapping(source.headers), "import: bad.csv"
        )
        record_done(db.engine, token, summary, utcnow())
    recorded = row(app, token)
    assert (recorded.status, recorded.skipped, recorded.created) == ("done", ERRORS_KEPT + 50, 1)
    assert len(recorded.errors) == ERRORS_KEPT
    assert recorded.errors[0] == [2, "'bad 0' is not an email address"]
