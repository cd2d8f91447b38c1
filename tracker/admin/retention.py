"""Retention in the admin: count the raw events a purge would delete, or queue the purge.

The page does what `flask --app wsgi events purge [--months N] [--dry-run]`
does. Counting runs in the request (it only reads); purging runs as a job on
the maintenance queue, because deleting millions of rows outlasts any request.
The job's id comes back in the page's URL, so the page can say how it went.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for

from tracker.admin import NAV, NavItem, bp
from tracker.auth import roles
from tracker.db import db
from tracker.models import utcnow
from tracker.redis_conn import get_redis

MAX_MONTHS = 1200
"""Longest period the form takes (a hundred years): further back no date can be counted."""

JOB_ID_RE = re.compile(r"retention-purge-[0-9a-f]{32}")
"""The ids this page gives its purge jobs; `?job=` takes nothing else."""

JOB_TIMEOUT = 6 * 3600
"""Seconds a purge job may run: a first purge of a large table is long."""

SHOWN_DAYS = 31
"""Kept days listed by name after a count; the rest are only counted."""

NAV.append(NavItem("admin.retention", "Retention", ()))


@dataclass
class PurgeForm:
    """The "Purge now" form, checked; `errors` maps a field to what is wrong with it."""

    months: str = ""
    confirm: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def month_count(self) -> int:
        """The months as a number (only once the form has no errors)."""
        return int(self.months)


def setting() -> int:
    """RETENTION_MONTHS: events older than this many months go daily; 0 keeps them forever."""
    return int(current_app.config["RETENTION_MONTHS"])


def read_purge_form(form: Any, purging: bool) -> PurgeForm:
    """Check the posted months (a whole number from 1) and, to purge, the confirmation."""
    checked = PurgeForm(months=(form.get("months") or "").strip()[:20], confirm="confirm" in form)
    text = checked.months
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_MONTHS:
        checked.errors["months"] = (
            f"{text!r} is not a number of months: give a whole number from 1 to {MAX_MONTHS}"
        )
    if purging and not checked.confirm:
        checked.errors["confirm"] = "tick the box to confirm that the events are to be deleted"
    return checked


def job_report(job_id: str) -> dict[str, Any]:
    """How the purge job `job_id` stands: its status and, once finished, what it did."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(job_id, connection=get_redis())
    except NoSuchJobError:
        return {"status": "unknown"}
    status = job.get_status().value
    return {"status": status, "result": job.return_value() if status == "finished" else None}


def _page(form: PurgeForm, status: int = 200, **extra: Any) -> Response:
    page = render_template("admin/retention.html", form=form, setting=setting(), **extra)
    return Response(page, status)


@bp.get("/retention")
@roles()
def retention() -> Response:
    """The retention setting, and the form to count or purge old events now."""
    job_id = request.args.get("job")
    if job_id is not None and not JOB_ID_RE.fullmatch(job_id):
        abort(400, "that is not a purge job of this page; open Retention from the menu")
    months = setting()
    form = PurgeForm(months=str(months) if months else "")
    return _page(form, job_id=job_id, job=job_report(job_id) if job_id else None)


@bp.post("/retention")
@roles()
def retention_purge() -> Response:
    """Count (`action=count`) or queue the purge (`action=purge`) of events older than N months."""
    action = request.form.get("action")
    if action not in ("count", "purge"):
        abort(400, "press Count or Purge")
    form = read_purge_form(request.form, purging=action == "purge")
    if form.errors:
        return _page(form, 400)
    if action == "count":
        from automation.retention import purge_expired_events

        try:
            counted = purge_expired_events(db.engine, form.month_count, utcnow(), dry_run=True)
        finally:
            db.session.remove()
        return _page(
            form, counted=counted, kept_days=sorted(counted.uncovered_days), shown_days=SHOWN_DAYS
        )
    from rq import Queue

    job_id = f"retention-purge-{uuid.uuid4().hex}"
    Queue("maintenance", connection=get_redis()).enqueue(
        "automation.jobs.purge_events", form.month_count, job_id=job_id, job_timeout=JOB_TIMEOUT
    )
    flash(
        f"Queued: a worker deletes the events older than {form.month_count} months "
        "that the rollups hold. Reload this page to see how it went."
    )
    return redirect(url_for("admin.retention", job=job_id))
