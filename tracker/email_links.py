"""The links inside every email: open pixel, click redirect, unsubscribe, and the bounce hook.

Opens and clicks go to the event stream like web events (the pixel does no
database work at all; the click reads the message's stored links). Every
token is signed: one that was altered, or made for another purpose, is a 404.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
)
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from tracker.collect import NO_CACHE, PIXEL, client_of
from tracker.db import db
from tracker.email_models import Enrolment, EnrolmentLog, Message
from tracker.errors import BadEvent, StorageUnavailable
from tracker.models import Contact, utcnow
from tracker.netaddr import truncate_ip
from tracker.payload import MAX_EMAIL, normalise_email
from tracker.stream import encode
from tracker.tokens import IDENTIFY_PARAM, MessageRef, make_token, read_token, signing_key

bp = Blueprint("email_links", __name__)

STATUS_RANK = {"ok": 0, "unsubscribed": 1, "bounced": 2, "complained": 3}
"""A contact's email status only ever moves up this scale: a complaint is never undone by
an unsubscribe, an unsubscribe never by a soft event."""

MAX_BOUNCE_BYTES = 1_048_576
"""Largest body `POST /hooks/bounce` reads."""

MAX_NOTIFICATIONS = 1000
"""Most notifications one bounce hook request may carry."""

MAX_REASON = 500


@bp.record_once
def _derive_key(state: Any) -> None:
    # HMAC key derivation costs little, but the pixel is a hot path: derive it once.
    state.app.extensions["email_token_key"] = signing_key(state.app.config["SECRET_KEY"])


def _token(app: Flask, purpose: str, token: str) -> MessageRef | None:
    return read_token(app.extensions["email_token_key"], purpose, token)


def _record(app: Flask, req: Request, kind: str, message_id: int, **fields: Any) -> None:
    """Append an email event to the stream (or the spool when Redis is down)."""
    ip, user_agent = client_of(app, req)
    # Opens and clicks belong to no site, so no site setting applies: always truncated.
    ip = truncate_ip(ip)
    entry = {
        "id": str(uuid.uuid4()),
        "type": kind,
        "message": message_id,
        "at": time.time(),
        "ip": ip,
        "ua": user_agent,
        **fields,
    }
    app.extensions["event_sink"].append([encode(entry)])


def _page(template: str, status: int = 200, **context: Any) -> Response:
    """A small HTML page for people: never cached, never leaking its token as a Referer."""
    response = Response(render_template(template, **context), status, mimetype="text/html")
    response.headers["Cache-Control"] = NO_CACHE
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _missing() -> Response:
    return _page("email_links/missing.html", 404)


@bp.get("/o/<token>.gif")
def open_pixel(token: str) -> Response:
    """Record an email open and answer a 1x1 GIF; no database work."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    ref = _token(app, "open", token)
    if ref is None or ref.link:
        abort(404, "no such email")
    _record(app, request, "email_open", ref.message_id)
    response = Response(PIXEL, mimetype="image/gif")
    response.headers["Cache-Control"] = NO_CACHE
    response.headers["Pragma"] = "no-cache"
    response.headers["Expires"] = "0"
    return response


def with_identity(url: str, token: str) -> str:
    """Return `url` with the identify token added to its query (fragment kept)."""
    parts = urlsplit(url)
    query = (
        f"{parts.query}&{IDENTIFY_PARAM}={token}" if parts.query else f"{IDENTIFY_PARAM}={token}"
    )
    return urlunsplit(parts._replace(query=query))


def _stored_link(message_id: int, link: int) -> str | None:
    """The URL the message's link number `link` leads to, as stored when it was rendered."""
    try:
        links = db.session.execute(
            select(Message.links).where(Message.id == message_id)
        ).scalar_one_or_none()
    except SQLAlchemyError as e:
        db.session.rollback()
        raise StorageUnavailable("the message cannot be read; try again shortly") from e
    if not isinstance(links, list) or not 1 <= link <= len(links):
        return None
    url = links[link - 1]
    if not isinstance(url, str):
        return None
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in ("http", "https") else None


@bp.route("/c/<token>", methods=["GET", "HEAD"])
def click(token: str) -> Response:
    """Record a click and redirect to the URL stored for that message and link, nothing else."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    ref = _token(app, "click", token)
    if ref is None or not ref.link:
        return _missing()
    url = _stored_link(ref.message_id, ref.link)
    if url is None:
        return _missing()
    _record(
        app,
        request,
        "email_click",
        ref.message_id,
        link=ref.link,
        method=request.method,
        target=url,
    )
    location = url
    host = urlsplit(url).hostname
    if app.extensions["sites"].for_host(host) is not None:
        key = app.extensions["email_token_key"]
        location = with_identity(url, make_token(key, "identify", ref.message_id))
    response = Response(status=302)
    response.headers["Location"] = location
    response.headers["Cache-Control"] = NO_CACHE
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def do_not_contact(conn: Connection, contact_ids: Iterable[int], status: str, now: datetime) -> int:
    """Move contacts to `status` (unsubscribed/bounced/complained) unless already at or past it."""
    ids = sorted(set(contact_ids))
    lower = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
    if not ids:
        return 0
    result = conn.execute(
        update(Contact)
        .where(Contact.id.in_(ids), Contact.email_status.in_(lower))
        .values(email_status=status, email_status_at=now, updated_at=now)
    )
    return max(result.rowcount, 0)


def end_enrolments(conn: Connection, contact_ids: Iterable[int], reason: str, now: datetime) -> int:
    """End every active enrolment of these contacts (status exited, with the reason)."""
    ids = sorted(set(contact_ids))
    if not ids:
        return 0
    active = conn.execute(
        select(Enrolment.id, Enrolment.position).where(
            Enrolment.contact_id.in_(ids), Enrolment.status == "active"
        )
    ).all()
    if not active:
        return 0
    ended = conn.execute(
        update(Enrolment)
        .where(Enrolment.id.in_([id_ for id_, _ in active]), Enrolment.status == "active")
        .values(status="exited", exit_reason=reason, ended_at=now, lease_until=None, updated_at=now)
    )
    conn.execute(
        insert(EnrolmentLog),
        [
            {
                "enrolment_id": id_,
                "position": position,
                "action": "exited",
                "detail": reason,
                "created_at": now,
            }
            for id_, position in active
        ],
    )
    return max(ended.rowcount, 0)


def unsubscribe(message_id: int) -> str | None:
    """Unsubscribe the message's contact from all email; return its address, None if unknown.

    Idempotent: a second call changes nothing and answers the same.
    """
    now = utcnow()
    try:
        with db.engine.begin() as conn:
            row = conn.execute(
                select(Message.contact_id, Contact.email)
                .join(Contact, Contact.id == Message.contact_id)
                .where(Message.id == message_id)
            ).first()
            if row is None:
                return None
            contact_id, email = row
            conn.execute(
                update(Message)
                .where(Message.id == message_id, Message.unsubscribed_at.is_(None))
                .values(unsubscribed_at=now)
            )
            do_not_contact(conn, [contact_id], "unsubscribed", now)
            end_enrolments(conn, [contact_id], "unsubscribed", now)
            return email
    except SQLAlchemyError as e:
        raise StorageUnavailable("the unsubscribe could not be saved; try again shortly") from e


def _recipient(message_id: int) -> str | None:
    try:
        return db.session.execute(
            select(Contact.email)
            .join(Message, Message.contact_id == Contact.id)
            .where(Message.id == message_id)
        ).scalar_one_or_none()
    except SQLAlchemyError as e:
        db.session.rollback()
        raise StorageUnavailable("the message cannot be read; try again shortly") from e


@bp.route("/u/<token>", methods=["GET", "POST"])
def unsubscribe_page(token: str) -> Response:
    """GET: ask to confirm. POST (the form, or RFC 8058 one-click): unsubscribe at once.

    The signed token is the authentication: a one-click POST from a mail
    provider carries no cookie and no CSRF token.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    ref = _token(app, "unsubscribe", token)
    if ref is None or ref.link:
        return _missing()
    if request.method == "GET":
        email = _recipient(ref.message_id)
        if email is None:
            return _missing()
        return _page("email_links/unsubscribe.html", email=email, token=token)
    email = unsubscribe(ref.message_id)
    if email is None:
        return _missing()
    return _page("email_links/unsubscribed.html", email=email)


@dataclass(frozen=True)
class Notification:
    """One bounce or complaint as the hook received it."""

    type: str  # bounce | complaint
    email: str
    message_id: str | None
    permanent: bool
    reason: str

    @property
    def hard(self) -> bool:
        """True when the address must not be mailed again."""
        return self.type == "complaint" or self.permanent


def parse_notifications(body: bytes) -> list[Notification]:
    """Parse the hook's JSON (one notification or {"notifications": [...]}); raise BadEvent."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadEvent(f"the body is not JSON: {e}", "bad_json") from e
    if isinstance(document, dict) and "notifications" in document:
        items = document["notifications"]
        if not isinstance(items, list):
            raise BadEvent("'notifications' must be a list of notifications", "bad_notification")
    else:
        items = [document]
    if len(items) > MAX_NOTIFICATIONS:
        raise BadEvent(f"send at most {MAX_NOTIFICATIONS} notifications a request", "too_many")
    return [_notification(item, f"notifications[{i}]") for i, item in enumerate(items)]


def _notification(item: Any, where: str) -> Notification:
    def bad(message: str) -> BadEvent:
        return BadEvent(f"{where}: {message}", "bad_notification")

    if not isinstance(item, dict):
        raise bad("must be an object with 'type' and 'email'")
    kind = item.get("type")
    if kind not in ("bounce", "complaint"):
        raise bad(f'\'type\' must be "bounce" or "complaint", not {kind!r}')
    email = item.get("email")
    if not isinstance(email, str) or "@" not in email or len(email.strip()) > MAX_EMAIL:
        raise bad("'email' must be the recipient's address")
    message_id = item.get("message_id")
    if message_id is not None and (not isinstance(message_id, str) or len(message_id) > 300):
        raise bad("'message_id' must be the SMTP Message-ID, a string")
    permanent = item.get("permanent", True)
    if not isinstance(permanent, bool):
        raise bad("'permanent' must be true or false")
    reason = item.get("reason", "")
    if not isinstance(reason, str):
        raise bad("'reason' must be a string")
    return Notification(
        kind,
        normalise_email(email),
        message_id.strip().strip("<>") if message_id else None,
        permanent,
        reason[:MAX_REASON],
    )


def apply_notifications(conn: Connection, notifications: list[Notification]) -> dict[str, int]:
    """Mark bounced and complaining contacts do-not-contact, and their messages; return counts."""
    now = utcnow()
    emails = sorted({n.email for n in notifications})
    contacts = dict(
        conn.execute(select(Contact.email, Contact.id).where(Contact.email.in_(emails))).all()
    )
    counts = {"received": len(notifications), "unknown": len(set(emails) - set(contacts))}
    marked = ended = messages = 0
    for n in notifications:
        contact_id = contacts.get(n.email)
        if n.hard and contact_id is not None:
            status = "complained" if n.type == "complaint" else "bounced"
            marked += do_not_contact(conn, [contact_id], status, now)
            ended += end_enrolments(conn, [contact_id], status, now)
        if n.message_id and n.type == "bounce":
            ids = [n.message_id, f"<{n.message_id}>"]
            if n.permanent:
                change: dict[str, Any] = {
                    "status": "bounced",
                    "bounced_at": now,
                    "error": f"bounce: {n.reason}"[:MAX_REASON],
                }
            else:
                change = {"error": f"soft bounce: {n.reason}"[:MAX_REASON]}
            result = conn.execute(
                update(Message).where(Message.smtp_message_id.in_(ids)).values(change)
            )
            messages += max(result.rowcount, 0)
    counts.update(contacts_marked=marked, enrolments_ended=ended, messages_updated=messages)
    return counts


def _authorised(req: Request, secret: str) -> bool:
    given = (req.headers.get("Authorization") or "").encode("utf-8", "replace")
    return hmac.compare_digest(given, f"Bearer {secret}".encode())


@bp.post("/hooks/bounce")
def bounce_hook() -> Response:
    """Accept bounce and complaint notifications from the mail provider (documented in README)."""
    secret = current_app.config.get("BOUNCE_SECRET") or ""
    if not secret:
        abort(404)
    if not _authorised(request, secret):
        raise BadEvent("send 'Authorization: Bearer <BOUNCE_SECRET>'", "unauthorized", 401)
    if request.content_length is not None and request.content_length > MAX_BOUNCE_BYTES:
        raise BadEvent(f"the body is larger than {MAX_BOUNCE_BYTES} bytes", "too_large", 413)
    body = request.stream.read(MAX_BOUNCE_BYTES + 1)
    if len(body) > MAX_BOUNCE_BYTES:
        raise BadEvent(f"the body is larger than {MAX_BOUNCE_BYTES} bytes", "too_large", 413)
    notifications = parse_notifications(body)
    try:
        with db.engine.begin() as conn:
            counts = apply_notifications(conn, notifications)
    except SQLAlchemyError as e:
        raise StorageUnavailable("the notifications could not be saved; try again") from e
    return jsonify(counts)
