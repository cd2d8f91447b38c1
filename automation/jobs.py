"""RQ jobs. Each takes plain values, runs in the app context the worker provides,
and lets exceptions propagate so RQ records and retries the failure."""

from __future__ import annotations

from flask import current_app

from automation.ingest import StreamIngestor
from automation.worker import stopping
from tracker.redis_conn import get_redis

INGEST_QUEUE = "ingest"
"""Queue that only ingestion jobs use, so they never wait behind mail or reports."""


def ingest(seconds: float | None = None) -> dict[str, int]:
    """Read the event stream for `seconds` (default INGEST_JOB_SECONDS) and store what arrives."""
    config = current_app.config
    ingestor = StreamIngestor(
        get_redis(),
        config["EVENT_STREAM"],
        config["INGEST_GROUP"],
        batch=config["INGEST_BATCH"],
        block_ms=config["INGEST_BLOCK_MS"],
        claim_idle_ms=config["INGEST_CLAIM_IDLE_MS"],
    )
    total = ingestor.run(
        config["INGEST_JOB_SECONDS"] if seconds is None else seconds, should_stop=stopping
    )
    return {"read": total.read, "stored": total.stored, "dead": total.dead}


def run_action(run_id: int) -> str:
    """Run one queued action (notify the owner, call a webhook, enrol) exactly once.

    The run is claimed with a conditional UPDATE, so a duplicated job does nothing.
    A failure is recorded and re-raised, so RQ retries with backoff; after
    ACTION_MAX_ATTEMPTS the run is marked failed and no longer retried.
    """
    from automation.action_runner import claim, execute, finish

    run = claim(run_id)
    if run is None:
        return "not queued (done, failed or running elsewhere)"
    try:
        status, note = execute(run)
    except Exception as e:
        finish(
            run_id,
            ok=False,
            error=f"{type(e).__name__}: {e}",
            final=run["attempts"] >= current_app.config["ACTION_MAX_ATTEMPTS"],
        )
        if run["attempts"] >= current_app.config["ACTION_MAX_ATTEMPTS"]:
            return f"failed for good after {run['attempts']} attempts: {e}"
        raise
    finish(run_id, ok=True, error=note, status=status)
    return note or status


SWEEP_AFTER_SECONDS = 300
"""A run still queued this long after it was created is checked for a lost job."""


def sweep_action_runs() -> int:
    """Re-enqueue queued action runs whose job was lost (say, a crash after the commit)."""
    from datetime import timedelta

    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from sqlalchemy import select

    from automation.dispatch import enqueue_action_runs
    from tracker.automation_models import ActionRun
    from tracker.db import db
    from tracker.models import utcnow

    cutoff = utcnow() - timedelta(seconds=SWEEP_AFTER_SECONDS)
    run_ids = db.session.scalars(
        select(ActionRun.id).where(ActionRun.status == "queued", ActionRun.created_at < cutoff)
    ).all()
    db.session.remove()
    client = get_redis()
    lost = []
    for run_id in run_ids:
        try:
            status = Job.fetch(f"action-run-{run_id}", connection=client).get_status()
        except NoSuchJobError:
            status = None
        if status not in {"queued", "started", "scheduled", "deferred"}:
            lost.append(run_id)
    return enqueue_action_runs(client, lost)


def apply_decay() -> dict[str, int]:
    """Expire old points and fade scores per the decay policies; thresholds re-evaluate."""
    from automation.decay_runner import run_decay
    from automation.dispatch import enqueue_action_runs
    from tracker.db import db
    from tracker.models import utcnow

    try:
        with db.engine.begin() as conn:
            result = run_decay(conn, utcnow())
    finally:
        db.session.remove()
    enqueue_action_runs(get_redis(), result.queued_runs)
    return {"contacts": result.contacts, "firings": result.firings}


def rebuild_segments(segment_ids: list[int] | None = None) -> dict[str, int]:
    """Rebuild segment membership for everyone (all segments, or these ids)."""
    from automation.dispatch import enqueue_action_runs
    from automation.segment_jobs import rebuild
    from tracker.db import db

    try:
        with db.engine.begin() as conn:
            moved, queued = rebuild(conn, segment_ids)
    finally:
        db.session.remove()
    enqueue_action_runs(get_redis(), queued)
    return {
        "joined": sum(map(len, moved.joined.values())),
        "left": sum(map(len, moved.left.values())),
    }


def repair_identities() -> int:
    """Re-point recent anonymous events of identified visitors (see automation.store)."""
    from automation.ingest import repair_recent_identities

    return repair_recent_identities()


def decide_broadcast(broadcast_id: int) -> str:
    """Pick a broadcast's A/B test winner and queue it for the rest of the audience, once."""
    from automation.broadcasts import decide
    from automation.outgoing import dispatch
    from tracker.db import db

    try:
        with db.engine.begin() as conn:
            decided = decide(conn, broadcast_id)
    finally:
        db.session.remove()
    if decided is None:
        return "not testing: decided already, or started without a test"
    # After the commit, so a send job never looks for a message that is not there yet.
    dispatch(get_redis(), decided.message_ids, current_app.config["MAIL_BATCH"])
    return f"winner {decided.winner} by {decided.metric} rate, {len(decided.message_ids)} queued"


def send_messages(message_ids: list[int]) -> dict[str, int]:
    """Send these queued messages (claimed one by one, so a duplicated job sends nothing twice)."""
    from automation.sending import send_batch, settings_from
    from tracker.db import db

    try:
        return send_batch(db.engine, get_redis(), message_ids, settings_from(current_app.config))
    finally:
        db.session.remove()


def run_enrolments(enrolment_ids: list[int]) -> dict[str, int]:
    """Run the due steps of these enrolments, each step once, then dispatch their messages."""
    from automation.outgoing import dispatch
    from automation.sequence_runner import run_due
    from automation.sequence_steps import Caps
    from tracker.models import utcnow

    config = current_app.config
    caps = Caps(config["EMAIL_CAP_PER_DAY"], config["EMAIL_CAP_PER_WEEK"])
    result = run_due(enrolment_ids, utcnow(), caps)
    # After the commits, so a send job never looks for a message that is not there yet.
    dispatch(get_redis(), result.message_ids, config["MAIL_BATCH"])
    return {
        "enrolments": result.enrolments,
        "steps": result.steps,
        "messages": len(result.message_ids),
    }


def import_contacts(token: str) -> dict[str, int]:
    """Import an uploaded contacts CSV with its chosen mapping (see automation.import_uploads)."""
    from automation.import_uploads import run_upload

    return run_upload(get_redis(), token)


def apply_retention() -> dict[str, int]:
    """Delete raw events older than RETENTION_MONTHS (nothing when it is 0)."""
    from automation.retention import purge_expired_events
    from tracker.db import db
    from tracker.models import utcnow

    try:
        result = purge_expired_events(db.engine, current_app.config["RETENTION_MONTHS"], utcnow())
    finally:
        db.session.remove()
    return {"events": result.deleted, "points_detached": result.points_detached}


def purge_events(months: int) -> dict[str, int | str | None]:
    """Delete raw events older than `months` months whose days the rollups hold (admin's Purge)."""
    from automation.retention import purge_expired_events
    from tracker.db import db
    from tracker.models import utcnow

    try:
        result = purge_expired_events(db.engine, months, utcnow())
    finally:
        db.session.remove()
    return {
        "cutoff": result.cutoff.isoformat(timespec="seconds") if result.cutoff else None,
        "events": result.deleted,
        "points_detached": result.points_detached,
        "days_kept": len(result.uncovered_days),
    }


def refresh_attribution() -> dict[str, int]:
    """Recompute the campaign credit of contacts marked since the last run (all of them
    after a campaign's codes, emails or sequences changed); the scheduler runs it every
    minute, a run stops after `REFRESH_SECONDS` and leaves the rest to the next."""
    from automation.attribution_store import pending, refresh
    from tracker.db import db

    try:
        done = refresh(db.engine)
        with db.engine.connect() as conn:
            left = pending(conn)
    finally:
        db.session.remove()
    return {"recomputed": done, "pending": left}


def settle_rollups() -> dict[str, str]:
    """Recount the dashboard's row metrics (leads, stage changes, mail sent) of yesterday and
    today: the scheduler runs it every minute, so sales actions show within one."""
    from datetime import timedelta

    from automation.rollups import settle
    from tracker.db import db
    from tracker.models import utcnow

    today = utcnow().date()
    try:
        with db.engine.begin() as conn:
            settle(conn, today - timedelta(days=1), today)
    finally:
        db.session.remove()
    return {"settled": f"{today - timedelta(days=1)}..{today}"}
