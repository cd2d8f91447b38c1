"""Uploaded contact files waiting for, or going through, an import job.

An upload lives in Redis (the one store every web node and worker shares)
for `UPLOAD_TTL_SECONDS`: the file under `cl:import:<token>:file`, and its
state in the hash `cl:import:<token>` (who uploaded it, its name, status,
mapping). Once started, the import is a row of the history in the database
(`automation.import_history`): the page polls that row, the job writes its
progress and results there, and it outlives the upload.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import orjson
import redis
from sqlalchemy import Engine

UPLOAD_TTL_SECONDS = 86400
"""How long an upload, its progress and its summary are kept."""

STATUSES = ("uploaded", "queued", "running", "done", "failed")


def _key(token: str) -> str:
    return f"cl:import:{token}"


def save_upload(client: redis.Redis, user_id: int, filename: str, data: bytes, rows: int) -> str:
    """Keep an uploaded file and return the token its pages and job use."""
    token = secrets.token_urlsafe(16)
    pipe = client.pipeline(transaction=True)
    pipe.set(_key(token) + ":file", data, ex=UPLOAD_TTL_SECONDS)
    pipe.hset(
        _key(token),
        mapping={
            "user_id": user_id,
            "filename": filename[:200],
            "status": "uploaded",
            "rows_total": rows,
            "rows_done": 0,
        },
    )
    pipe.expire(_key(token), UPLOAD_TTL_SECONDS)
    pipe.execute()
    return token


def load_state(client: redis.Redis, token: str) -> dict[str, Any] | None:
    """The upload's state, decoded; None when there is no such upload (or it expired)."""
    if not token.replace("-", "").replace("_", "").isalnum() or len(token) > 64:
        return None
    raw = client.hgetall(_key(token))
    if not raw:
        return None
    state: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in ("user_id", "rows_total", "rows_done"):
        state[name] = int(state.get(name, 0))
    for name in ("mapping", "summary"):
        state[name] = orjson.loads(state[name]) if name in state else None
    state["token"] = token
    return state


def load_file(client: redis.Redis, token: str) -> bytes | None:
    """The uploaded bytes, or None once the import has run (or the upload expired)."""
    return client.get(_key(token) + ":file")


def update_state(client: redis.Redis, token: str, **values: Any) -> None:
    """Write some state fields (lists and dicts as JSON)."""
    encoded = {
        k: orjson.dumps(v).decode() if isinstance(v, list | dict) else v for k, v in values.items()
    }
    client.hset(_key(token), mapping=encoded)


def queue_import(
    client: redis.Redis, engine: Engine, state: dict[str, Any], mapping: list[str], now: datetime
) -> str | None:
    """Record the import in the history and enqueue it on the maintenance queue.

    Returns the job id, or None when the upload was started already (twice at once).
    """
    from rq import Queue

    from automation.import_history import record_failed, record_queued

    token = state["token"]
    if not record_queued(
        engine, token, state["user_id"], state["filename"], state["rows_total"], now
    ):
        return None
    try:
        update_state(client, token, mapping=mapping, status="queued")
        job = Queue("maintenance", connection=client).enqueue(
            "automation.jobs.import_contacts",
            token,
            job_timeout=3600,
            result_ttl=UPLOAD_TTL_SECONDS,
            failure_ttl=UPLOAD_TTL_SECONDS,
        )
        update_state(client, token, job_id=job.id)
    except redis.RedisError as e:
        # No job will run it: say so on its row rather than leave it waiting for ever.
        record_failed(engine, token, f"it could not be queued ({e})", now)
        raise
    return job.id


def run_upload(client: redis.Redis, token: str) -> dict[str, int]:
    """The import job: import the stored file with its mapping, writing progress as it goes.

    A failure is written to the import's row for the page and re-raised for RQ.
    """
    from automation.contact_import import ImportSummary, decode, import_contacts
    from automation.dispatch import enqueue_action_runs
    from automation.import_history import ProgressRecorder, claim, record_done, record_failed
    from tracker.db import db
    from tracker.models import utcnow

    state = load_state(client, token)
    data = load_file(client, token)
    if state is None or data is None or state["status"] != "queued":
        return {"skipped": 1}  # expired, or a duplicated job: the first one ran it
    engine = db.engine
    if not claim(engine, token, utcnow()):
        return {"skipped": 1}  # a duplicated job claimed it first
    update_state(client, token, status="running")
    summary = ImportSummary()
    recorder = ProgressRecorder(engine, token, summary)
    try:
        _, queued = import_contacts(
            engine,
            decode(data),
            state["mapping"],
            f"import: {state['filename']}",
            progress=recorder,
            summary=summary,
        )
    except Exception as e:
        record_failed(engine, token, f"{type(e).__name__}: {e}", utcnow(), recorder)
        update_state(client, token, status="failed")
        raise
    finally:
        db.session.remove()
    record_done(engine, token, summary, utcnow())
    update_state(client, token, status="done")
    client.delete(_key(token) + ":file")
    enqueue_action_runs(client, queued)
    return {k: v for k, v in summary.as_dict().items() if isinstance(v, int)}
