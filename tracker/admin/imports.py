"""Contact import in the admin: upload a CSV, check the mapping, run it as a job, read the summary.

The file and the import's progress live in Redis (`automation.import_uploads`),
so the page works whichever web node answers and whichever worker runs the job.
An import belongs to who uploaded it (and admins).
"""

from __future__ import annotations

from typing import Any

from flask import Response, abort, redirect, render_template, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from tracker.admin import bp
from tracker.auth import current_user, roles
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
    return render_template("admin/imports/upload.html", error=message, limit=_limit_mb()), 413


@bp.get("/import")
@roles("marketer")
def imports() -> str:
    """The upload form."""
    return render_template("admin/imports/upload.html", error=None, limit=_limit_mb())


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
    return render_template("admin/imports/upload.html", error=message, limit=_limit_mb()), 400


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


@bp.get("/import/<token>")
@roles("marketer")
def import_show(token: str) -> Any:
    """The import as it stands: mapping preview, progress (refreshing itself) or summary."""
    state = _state_or_404(token)
    if state["status"] == "uploaded":
        return _preview(state, None, [])
    return render_template("admin/imports/status.html", state=state)


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
    queue_import(get_redis(), token, chosen)
    return redirect(url_for("admin.import_show", token=token))
