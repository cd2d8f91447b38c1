"""The local outbox: mail kept instead of sent when no SMTP_URL is set, shown as it would arrive.

Only when SMTP_URL is empty (the embedded default) and only to requests from
this machine; anywhere else these pages do not exist (404). The HTML part is
shown inside a sandboxed iframe (no scripts, no same-origin access).
"""

from __future__ import annotations

import ipaddress
from email import message_from_string, policy
from email.message import EmailMessage
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request
from sqlalchemy import select

from tracker.db import db
from tracker.email_models import OutboxMessage

bp = Blueprint("outbox", __name__)

PAGE_SIZE = 200
"""Messages the list shows, newest first."""

SHOWN_HEADERS = ("From", "To", "Reply-To", "Subject", "Date", "Message-ID", "List-Unsubscribe")
"""Headers the message page lists."""


def _local_only() -> None:
    if current_app.config["SMTP_URL"]:
        abort(404)
    # Behind a proxy every request looks local; a forwarded one is never treated as such.
    if request.headers.get("X-Forwarded-For") or request.headers.get("Forwarded"):
        abort(404)
    try:
        if not ipaddress.ip_address(request.remote_addr or "").is_loopback:
            abort(404)
    except ValueError:
        abort(404)


def parts(raw: str) -> dict[str, Any]:
    """A stored message's headers, text part and HTML part, decoded."""
    message: EmailMessage = message_from_string(raw, policy=policy.default)  # type: ignore[assignment]
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    return {
        "headers": [(name, str(message[name])) for name in SHOWN_HEADERS if message[name]],
        "text": text.get_content() if text is not None else None,
        "html": html.get_content() if html is not None else None,
    }


def newest() -> list[Any]:
    """The newest kept messages (id, time, recipient, subject), newest first."""
    return db.session.execute(
        select(
            OutboxMessage.id,
            OutboxMessage.created_at,
            OutboxMessage.to_addr,
            OutboxMessage.subject,
        )
        .order_by(OutboxMessage.id.desc())
        .limit(PAGE_SIZE)
    ).all()


@bp.get("/outbox")
def outbox_list() -> str:
    """The kept messages, newest first."""
    _local_only()
    return render_template("outbox/list.html", rows=newest())


@bp.get("/outbox/<int:outbox_id>")
def outbox_message(outbox_id: int) -> str:
    """One kept message: headers, the HTML as a mail client would show it, the text."""
    _local_only()
    row = db.session.get(OutboxMessage, outbox_id)
    if row is None:
        abort(404)
    return render_template("outbox/message.html", row=row, **parts(row.raw))
