"""The outbox in the admin: mail kept instead of sent while no SMTP_URL is set."""

from __future__ import annotations

from flask import abort, current_app, render_template

from tracker.admin import bp
from tracker.auth import roles
from tracker.db import db
from tracker.email_models import OutboxMessage
from tracker.outbox_view import newest, parts

ADMIN_PAGES = {
    "layout": "admin/outbox_layout.html",
    "list_endpoint": "admin.outbox_list",
    "message_endpoint": "admin.outbox_message",
}


def _embedded_only() -> None:
    if current_app.config["SMTP_URL"]:
        abort(404, "mail is sent over SMTP: there is no outbox")


@bp.get("/outbox")
@roles("marketer")
def outbox_list() -> str:
    """The kept messages, newest first."""
    _embedded_only()
    return render_template("outbox/list.html", rows=newest(), **ADMIN_PAGES)


@bp.get("/outbox/<int:outbox_id>")
@roles("marketer")
def outbox_message(outbox_id: int) -> str:
    """One kept message: headers, the HTML as a mail client would show it, the text."""
    _embedded_only()
    row = db.session.get(OutboxMessage, outbox_id)
    if row is None:
        abort(404)
    return render_template("outbox/message.html", row=row, **parts(row.raw), **ADMIN_PAGES)
