"""Contact import in the admin: upload a CSV, check the mapping, run it as a job, read the summary.

The uploaded file waits in Redis (`automation.import_uploads`), so the preview
works whichever web node answers and whichever worker runs the job. Once
started, an import is a row of the history in the database
(`tracker.import_models`): its page reads that row, during the run and for good
after. An import belongs to who uploaded it (and admins); imports made on the
command line are everyone's to read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, abort, redirect, render_template, request, url_for
from sqlalchemy import or_, select, true
from sqlalchemy.orm import defer
from werkzeug.exceptions import RequestEntityTooLarge

from tracker.admin import bp
from tracker.admin.csv_export import csv_response, keyset_rows, today, wants_csv
from tracker.admin.opportunities import when
from tracker.auth import current_user, roles
from tracker.db import db
from tracker.import_models import ContactImport
from tracker.models import User, utcnow
from tracker.paging import BadCursor, Kind, Page, SortKey, keyset_page, read_cursor
from tracker.redis_conn import get_redis

PREVIEW_ROWS = 10
"""Rows shown under the mapping."""

FORM_ALLOWANCE = 64 * 1024
"""Bytes of multipart framing and the CSRF field allowed on top of the file's size."""


def _limit_mb() -> int:
    from automation.contact_import import MAX_UPLOAD_BYTES

    return MAX_UPLOAD_BYTES // (1024 * 1024)


@bp.url_value_preprocessor
def _upload_limit(endpoint: str | None, values: dict[str, Any] | None) -> None:
    # Runs before the blueprint's CSRF check, which is what first reads the body:
    # a file over the limit is refused (413) before it is read.
    if endpoint == "admin.import_upload":
        from automation.contact_import import MAX_UPLOAD_BYTES

        request.max_content_length = MAX_UPLOAD_BYTES + FORM_ALLOWANCE


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(error: RequestEntityTooLarge) -> tuple[str, int]:
    message = (
        f"The file is larger than {_limit_mb()} MB: split it, or import it on the server "
        "with `flask --app wsgi contacts import FILE`."
    )
    return _upload_page(message, 413)


HISTORY_ORDER: tuple[Kind, Kind] = ("time", "int")
"""Kinds of the history's sort keys: when the import was started, then its id (newest first)."""


def _readable() -> Any:
    """The imports the user may read: all for admins; their own and the command line's."""
    user = current_user()
    assert user is not None  # the blueprint lets no anonymous request through
    if user.role == "admin":
        return true()
    return or_(ContactImport.user_id == user.id, ContactImport.source == "cli")


def _history_query() -> tuple[Any, list[SortKey]]:
    """The imports the user may read with who started them, and the history's sort keys."""
    when, by_id = HISTORY_ORDER
    query = (
        select(ContactImport, User.name)
        .outerjoin(User, User.id == ContactImport.user_id)
        .where(_readable())
        .options(defer(ContactImport.errors))  # up to a thousand lines each: the list needs none
    )
    return query, [SortKey(ContactImport.created_at, when), SortKey(ContactImport.id, by_id)]


def _history() -> Page:
    """A page of past imports, newest first; a hand-edited page link is a 400."""
    try:
        cursor = read_cursor(request.args, HISTORY_ORDER)
    except BadCursor as e:
        abort(400, str(e))
    query, order = _history_query()
    return keyset_page(query, order, cursor, descending=True)


HISTORY_COLUMNS = (
    "started_at",
    "file",
    "by",
    "source",
    "status",
    "rows_total",
    "rows_done",
    "created",
    "updated",
    "unchanged",
    "repeated",
    "skipped",
    "finished_at",
    "failure",
)
"""The import history CSV's columns (times in UTC; by is empty for the command line)."""


def _history_rows() -> Iterator[list[Any]]:
    """Every import the user may read, newest first, read in chunks."""
    query, order = _history_query()
    for run, who in keyset_rows(query, order, descending=True):
        yield [
            run.created_at,
            run.filename,
            None if run.source == "cli" else who,
            run.source,
            run.status,
            run.rows_total,
            run.rows_done,
            run.created,
            run.updated,
            run.unchanged,
            run.repeated,
            run.skipped,
            run.finished_at,
            run.failure,
        ]


def _upload_page(error: str | None, status: int = 200) -> tuple[str, int]:
    # A file over the limit is refused before the login check: no history for strangers.
    user = current_user()
    history = _history() if user is not None and user.role in ("admin", "marketer") else None
    page = render_template(
        "admin/imports/upload.html", error=error, limit=_limit_mb(), history=history, when=when
    )
    return page, status


@bp.get("/import")
@roles("marketer")
def imports() -> Response | tuple[str, int]:
    """The upload form, and the imports made so far, newest first (`?format=csv`: all of them)."""
    if wants_csv():
        return csv_response(f"imports_{today()}", HISTORY_COLUMNS, _history_rows())
    return _upload_page(None)


@bp.post("/import")
@roles("marketer")
def import_upload() -> Response | tuple[str, int]:
    """Keep the uploaded CSV and show its mapping preview, or say what is wrong with it."""
    from automation.contact_import import ImportFileError, count_records, decode
    from automation.import_uploads import save_upload

    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _upload_error("Choose a CSV file to upload.")
    data = upload.read()
    try:
        rows = count_records(decode(data))
    except ImportFileError as e:
        return _upload_error(f"{upload.filename}: {e}")
    if rows == 0:
        return _upload_error(f"{upload.filename} has a header but no rows.")
    token = save_upload(get_redis(), _user_id(), upload.filename, data, rows)
    return redirect(url_for("admin.import_show", token=token))


def _upload_error(message: str) -> tuple[str, int]:
    return _upload_page(message, 400)


def _user_id() -> int:
    user = current_user()
    assert user is not None  # the blueprint lets no anonymous request through
    return user.id


def _state_or_404(token: str) -> dict[str, Any]:
    from automation.import_uploads import load_state

    state = load_state(get_redis(), token)
    user = current_user()
    if state is None or user is None or (user.role != "admin" and state["user_id"] != user.id):
        abort(404)
    return state


def _preview(
    state: dict[str, Any], chosen: list[str] | None, errors: list[str], status: int = 200
) -> tuple[str, int]:
    from automation.contact_import import column_targets, decode, detect_mapping, records
    from automation.import_uploads import load_file

    data = load_file(get_redis(), state["token"])
    if data is None:
        abort(404)
    source = decode(data)
    sample = []
    for _, cells in records(source):
        sample.append(cells)
        if len(sample) == PREVIEW_ROWS:
            break
    mapping = chosen or detect_mapping(source.headers)
    return (
        render_template(
            "admin/imports/preview.html",
            state=state,
            headers=source.headers,
            mapping=mapping,
            choices=[
                [*column_targets(h), *([m] if m not in column_targets(h) else [])]
                for h, m in zip(source.headers, mapping, strict=False)
            ],
            sample=sample,
            errors=errors,
        ),
        status,
    )


def _recorded(token: str) -> tuple[ContactImport, str | None] | None:
    """The import's history row and who started it; None unless started and the user's to read."""
    found = db.session.execute(
        select(ContactImport, User.name)
        .outerjoin(User, User.id == ContactImport.user_id)
        .where(ContactImport.token == token[:64], _readable())
    ).first()
    return None if found is None else (found[0], found[1])


@bp.get("/import/<token>")
@roles("marketer")
def import_show(token: str) -> Any:
    """The import as it stands: mapping preview, progress (refreshing itself) or summary."""
    recorded = _recorded(token)
    if recorded is not None:
        run, who = recorded
        return render_template("admin/imports/status.html", run=run, who=who, when=when)
    state = _state_or_404(token)
    if state["status"] != "uploaded":
        abort(404)  # started, yet not recorded: not this user's
    return _preview(state, None, [])


def _columns(token: str) -> int:
    from automation.contact_import import decode
    from automation.import_uploads import load_file

    data = load_file(get_redis(), token)
    if data is None:
        abort(404)
    return len(decode(data).headers)


@bp.post("/import/<token>/run")
@roles("marketer")
def import_run(token: str) -> Any:
    """Start the import with the chosen mapping (as a job), or show the mapping's faults."""
    from automation.contact_import import check_mapping
    from automation.import_uploads import queue_import

    state = _state_or_404(token)
    if state["status"] != "uploaded":
        return redirect(url_for("admin.import_show", token=token))
    columns = _columns(token)
    chosen = [(request.form.get(f"map-{i}") or "").strip() for i in range(columns)]
    problems = check_mapping(chosen)
    if problems:
        return _preview(state, chosen or None, problems, 400)
    queue_import(get_redis(), db.engine, state, chosen, utcnow())
    return redirect(url_for("admin.import_show", token=token))
