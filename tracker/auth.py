"""Who is logged in: passwords, sessions, roles, CSRF tokens and the lock-out after failures.

Passwords are hashed with scrypt (werkzeug's default). A session holds the
user's id and a per-session CSRF token; every state-changing request of the
admin must carry that token. Repeated failed logins lock the account for a
while that doubles with each further failure.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import abort, g, request, session
from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from tracker.db import db
from tracker.models import User, as_utc, utcnow

ROLES = ("admin", "marketer", "sales")
"""Admins do everything; marketers configure and report; sales work their leads."""

LOCK_AFTER_FAILURES = 5
"""Failed logins in a row before the account is locked for a while."""

LOCK_SECONDS = 60
"""The first lock's length; each further failure doubles it, up to MAX_LOCK_SECONDS."""

MAX_LOCK_SECONDS = 3600
"""The longest lock."""

MIN_PASSWORD = 10
"""Shortest password `users create --prompt` accepts."""

CSRF_FIELD = "csrf_token"
"""Form field (or X-CSRF-Token header) that carries the session's CSRF token."""

# Checked against when the email is unknown, so both cases take a hash's time.
_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))

View = TypeVar("View", bound=Callable[..., Any])


def hash_password(password: str) -> str:
    """The stored form of a password (scrypt, salted)."""
    return generate_password_hash(password)


def new_password() -> str:
    """A random password to print once: 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


@dataclass(frozen=True)
class LoginResult:
    """The user who logged in, or why nobody did."""

    user: User | None
    error: str | None = None


def lock_seconds(failures: int) -> int:
    """How long an account stays locked after `failures` failed logins in a row (0: not)."""
    if failures < LOCK_AFTER_FAILURES:
        return 0
    return min(LOCK_SECONDS * 2 ** (failures - LOCK_AFTER_FAILURES), MAX_LOCK_SECONDS)


def authenticate(email: str, password: str, now: datetime | None = None) -> LoginResult:
    """Check a login; count failures and lock the account after too many."""
    now = now or utcnow()
    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    refused = LoginResult(None, "wrong email or password")
    if user is None or not user.active or not user.password_hash:
        check_password_hash(_DUMMY_HASH, password)
        return refused
    if user.locked_until is not None and as_utc(user.locked_until) > now:
        minutes = max(1, round((as_utc(user.locked_until) - now).total_seconds() / 60))
        return LoginResult(
            None, f"too many failed logins: try again in {minutes} minute(s), or ask an admin"
        )
    if not check_password_hash(user.password_hash, password):
        user.failed_logins = (user.failed_logins or 0) + 1
        wait = lock_seconds(user.failed_logins)
        user.locked_until = now + timedelta(seconds=wait) if wait else None
        db.session.commit()
        return refused
    user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
    db.session.commit()
    return LoginResult(user)


def log_in(user: User) -> None:
    """Start a fresh session for `user` (a new CSRF token too: no fixation)."""
    session.clear()
    session["uid"] = user.id
    session[CSRF_FIELD] = secrets.token_urlsafe(32)
    session.permanent = True


def log_out() -> None:
    """End the session."""
    session.clear()


def current_user() -> User | None:
    """The logged-in, active user of this request, or None."""
    if "user" not in g:
        uid = session.get("uid")
        user = db.session.get(User, uid) if isinstance(uid, int) else None
        g.user = user if user is not None and user.active and user.password_hash else None
    return g.user


def csrf_token() -> str:
    """This session's CSRF token, made on first use (before login too: the login form)."""
    token = session.get(CSRF_FIELD)
    if not token:
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """Refuse (400) a state-changing request without this session's CSRF token."""
    expected = session.get(CSRF_FIELD)
    given = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token") or ""
    if not expected or not hmac.compare_digest(str(expected), str(given)):
        abort(400, "the form expired or did not come from this site; reload the page and retry")


def roles(*allowed: str) -> Callable[[View], View]:
    """Let only users with one of these roles in (admins always); others get a 403."""
    unknown = set(allowed) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                abort(401)
            if user.role != "admin" and user.role not in allowed:
                abort(403, f"this page is for {', '.join(allowed)} users")
            return view(*args, **kwargs)

        wrapped.allowed_roles = allowed  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorate
