"""The contact import history in the database: a row per import, written as it goes.

The admin's import is recorded when it is queued and claimed by the job that
runs it (a duplicated job finds it claimed and does nothing); the command line
records its import when it starts. Progress is written at most every
`PROGRESS_SECONDS`, in its own short transaction, so the page polling the row
sees it while the batches commit. Each write is one statement on `engine`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, insert, update
from sqlalchemy.exc import IntegrityError

from automation.contact_import import MAX_PROBLEMS, ImportSummary
from tracker.import_models import ContactImport

ERRORS_KEPT = MAX_PROBLEMS
"""Skipped rows (line and message) an import's row keeps; beyond this only the count."""

PROGRESS_SECONDS = 1.0
"""Least time between two progress writes of one import (the last one is always written)."""

IMPORTS = ContactImport.__table__


def new_token() -> str:
    """A token naming an import's page, as unguessable as an upload's."""
    return secrets.token_urlsafe(16)


def record_queued(
    engine: Engine, token: str, user_id: int, filename: str, rows_total: int, now: datetime
) -> bool:
    """Record an admin import waiting for a worker; False when it is recorded already."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(IMPORTS).values(
                    token=token,
                    user_id=user_id,
                    source="admin",
                    filename=filename[:200],
                    status="queued",
                    rows_total=rows_total,
                    errors=[],
                    created_at=now,
                )
            )
    except IntegrityError:
        return False  # the same upload started twice at once: the first one counts
    return True


def record_started(engine: Engine, filename: str, rows_total: int, now: datetime) -> str:
    """Record a command-line import that starts now; return its token."""
    token = new_token()
    with engine.begin() as conn:
        conn.execute(
            insert(IMPORTS).values(
                token=token,
                user_id=None,
                source="cli",
                filename=filename[:200],
                status="running",
                rows_total=rows_total,
                errors=[],
                created_at=now,
                started_at=now,
            )
        )
    return token


def claim(engine: Engine, token: str, now: datetime) -> bool:
    """Mark a queued import running; False when it is not queued (another job took it)."""
    with engine.begin() as conn:
        taken = conn.execute(
            update(IMPORTS)
            .where(IMPORTS.c.token == token, IMPORTS.c.status == "queued")
            .values(status="running", started_at=now)
        )
    return taken.rowcount == 1


def _results(summary: ImportSummary) -> dict[str, object]:
    return {
        "rows_done": summary.rows,
        "created": summary.created,
        "updated": summary.updated,
        "unchanged": summary.unchanged,
        "repeated": summary.repeated,
        "skipped": summary.skipped,
        "errors": [list(p) for p in summary.problems[:ERRORS_KEPT]],
    }


class ProgressRecorder:
    """The `progress` callback of `import_contacts` for one recorded import.

    Called after each committed batch, it keeps what the import did so far
    (`committed`, for a failure to record) and writes rows done and the counters
    to the row, at most every `PROGRESS_SECONDS` and always at the end.
    """

    def __init__(
        self,
        engine: Engine,
        token: str,
        summary: ImportSummary,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine, self.token, self.summary, self.clock = engine, token, summary, clock
        self.committed = _results(summary)
        self.last_write = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        self.committed = _results(self.summary)
        moment = self.clock()
        if done < total and moment - self.last_write < PROGRESS_SECONDS:
            return
        self.last_write = moment
        with self.engine.begin() as conn:
            conn.execute(
                update(IMPORTS)
                .where(IMPORTS.c.token == self.token)
                .values(rows_total=total, **self.committed)
            )


def record_done(engine: Engine, token: str, summary: ImportSummary, now: datetime) -> None:
    """Write what the import did: its counters, its first skipped rows, done."""
    with engine.begin() as conn:
        conn.execute(
            update(IMPORTS)
            .where(IMPORTS.c.token == token)
            .values(status="done", finished_at=now, **_results(summary))
        )


def record_failed(
    engine: Engine,
    token: str,
    failure: str,
    now: datetime,
    recorder: ProgressRecorder | None = None,
) -> None:
    """Write why the import stopped and what its committed batches did (those stay)."""
    done = recorder.committed if recorder is not None else {}
    with engine.begin() as conn:
        conn.execute(
            update(IMPORTS)
            .where(IMPORTS.c.token == token)
            .values(status="failed", failure=failure[:500], finished_at=now, **done)
        )
