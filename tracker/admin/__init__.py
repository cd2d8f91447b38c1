"""The admin: server-rendered pages for marketers and sales, behind a login.

Every route of this blueprint needs a logged-in user (only the login page is
open), every POST needs the session's CSRF token, and views say which roles
may use them with `tracker.auth.roles`. Feature pages live in modules of this
package and add themselves to `NAV`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from tracker.auth import check_csrf, csrf_token, current_user

bp = Blueprint("admin", __name__, url_prefix="/admin")

OPEN_ENDPOINTS = frozenset({"admin.login"})
"""The only admin endpoints that answer without a login."""

CSP = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "script-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
"""No inline script anywhere in the admin: injected markup cannot run."""


@dataclass(frozen=True)
class NavItem:
    """A link in the admin's menu, shown to the roles that may open it."""

    endpoint: str
    label: str
    roles: tuple[str, ...] = ("admin", "marketer", "sales")
    shown: Callable[[], bool] | None = None  # None: always


NAV: list[NavItem] = [
    NavItem("admin.home", "Home"),
    NavItem("admin.dashboard", "Dashboard"),
    NavItem("admin.contacts", "Contacts"),
    NavItem("admin.leads", "My leads", ("sales",)),
    NavItem("admin.opportunities", "Opportunities", ("marketer", "sales")),
    NavItem("admin.leads_health", "Follow-up health"),
    NavItem("admin.campaigns", "Campaigns", ("marketer",)),
    NavItem("admin.imports", "Import", ("marketer",)),
    NavItem("admin.report_roi", "Reports", ("marketer",)),
    NavItem("admin.configure", "Configure", ("marketer",)),
    # Mail is kept in the outbox only while no SMTP server is set.
    NavItem(
        "admin.outbox_list", "Outbox", ("marketer",), lambda: not current_app.config["SMTP_URL"]
    ),
]
"""The menu, in order, with the roles that see each item."""


def safe_next(target: str | None) -> str | None:
    """A same-site path to return to after login, or None (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc and "\\" not in target else None


@bp.before_request
def _guard() -> Response | None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        check_csrf()
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if current_user() is None:
        if request.method in ("GET", "HEAD"):
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        return _error_page(401, "Log in first.")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(status: int, message: str) -> Response:
    response = Response(render_template("admin/error.html", status=status, message=message), status)
    return response


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    messages = {401: "Log in first.", 403: "Your role cannot open this page.", 404: "Not found."}
    message = error.description if error.code == 400 else messages.get(error.code or 500)
    return _error_page(error.code or 500, message or error.name)


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    user = current_user() if request.blueprint == "admin" else None
    menu = [
        item
        for item in NAV
        if user is not None
        and (user.role == "admin" or user.role in item.roles)
        and (item.shown is None or item.shown())
    ]
    return {"current_user": user, "csrf_token": csrf_token, "nav": menu}


# The pages: each module registers its routes on `bp` and its menu items in NAV.
from tracker.admin import (  # noqa: E402, F401
    campaigns,
    config_segments,
    config_sequences,
    config_sites,
    config_templates,
    config_users,
    configure,
    contacts,
    dashboard,
    imports,
    opportunities,
    outbox,
    reports,
    retention,
    sales,
    views_auth,
)
