"""Logging in and out, and the admin's home page."""

from __future__ import annotations

from flask import Response, redirect, render_template, request, url_for
from sqlalchemy import func, select

from tracker.admin import bp, safe_next
from tracker.auth import authenticate, current_user, log_in, log_out
from tracker.db import db
from tracker.models import Contact
from tracker.sales_models import LeadAction, Opportunity


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    """The login form; a wrong password counts towards the lock-out."""
    target = safe_next(request.values.get("next")) or url_for("admin.home")
    if request.method == "GET":
        if current_user() is not None:
            return redirect(target)
        return render_template("admin/login.html", next=target, error=None, email="")
    email = (request.form.get("email") or "").strip()[:320]
    result = authenticate(email, request.form.get("password") or "")
    if result.user is None:
        page = render_template("admin/login.html", next=target, error=result.error, email=email)
        return Response(page, 401)
    log_in(result.user)
    return redirect(target)


@bp.post("/logout")
def logout() -> Response:
    """End the session."""
    log_out()
    return redirect(url_for("admin.login"))


@bp.get("/")
def home() -> str:
    """Where a login lands: what needs attention, per role."""
    user = current_user()
    mine = Contact.owner_id == user.id
    acted = select(LeadAction.contact_id).where(LeadAction.contact_id == Contact.id).exists()
    waiting = db.session.scalar(
        select(func.count()).select_from(Contact).where(Contact.stage == "mql", mine, ~acted)
    )
    open_deals = db.session.scalar(
        select(func.count()).select_from(Opportunity).where(Opportunity.stage == "open")
    )
    contacts = db.session.scalar(select(func.count()).select_from(Contact))
    return render_template(
        "admin/home.html", waiting=waiting, open_deals=open_deals, contacts=contacts
    )
