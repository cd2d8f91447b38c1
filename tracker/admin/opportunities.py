"""Opportunities in the admin: the list with totals, opening one, editing and closing it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import Response, abort, redirect, render_template, request, url_for
from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import aliased

from tracker.admin import bp
from tracker.admin.csv_export import csv_response, keyset_rows, today, wants_csv
from tracker.admin.deleting import delete_page
from tracker.auth import current_user, roles
from tracker.db import db
from tracker.models import Contact, User, as_utc, utcnow
from tracker.paging import BadCursor, Kind, Page, SortKey, keyset_page, read_cursor
from tracker.sales_models import Campaign, Opportunity

STAGES = ("open", "won", "lost")
AUTO = "auto"  # the same value as automation.sales.AUTO (tracker never imports it at load)
MAX_AMOUNT = Decimal("999999999999.99")  # Numeric(14, 2)
LIST_ORDER: tuple[Kind, ...] = ("int", "int", "date", "int")
"""Kinds of the list's sort keys: open first, dated first, by expected close, by id."""


def money(amount: Decimal | int | None) -> str:
    """An amount as a page shows it: thousands separated, two decimals."""
    return "" if amount is None else f"{Decimal(amount):,.2f}"


def when(moment: datetime | None) -> str:
    """A stored time as a page shows it, in UTC."""
    return "" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def contact_label(contact: Contact | None) -> str:
    """A contact's name and email for a page ("erased" once it is gone)."""
    if contact is None:
        return "(erased contact)"
    name = " ".join(p for p in (contact.first_name, contact.last_name) if p)
    return f"{name} <{contact.email}>" if name else contact.email


def owners() -> list[User]:
    """Who may own an opportunity or a lead: active sales users and admins."""
    return list(
        db.session.scalars(
            select(User)
            .where(User.active.is_(True), User.role.in_(("sales", "admin")))
            .order_by(User.name, User.id)
        )
    )


def parse_deal(
    form: Mapping[str, str], full: bool, user_id: int
) -> tuple[Any | None, dict[str, str]]:
    """An `automation.sales.Deal` from a form, or None and an error per field.

    `full` forms also carry stage, owner and campaign (the opportunity's own page);
    otherwise the deal is open, owned by `user_id`, its campaign attributed.
    """
    from automation.sales import Deal

    errors: dict[str, str] = {}
    name = (form.get("name") or "").strip()
    if not name:
        errors["name"] = "give the opportunity a name, e.g. the company and the product"
    elif len(name) > 200:
        errors["name"] = f"at most 200 characters (this one has {len(name)})"
    amount = _amount(form.get("amount"), errors)
    expected_close = _date(form.get("expected_close"), errors)
    stage, owner_id, campaign = "open", user_id, AUTO
    if full:
        stage = form.get("stage") or ""
        if stage not in STAGES:
            errors["stage"] = f"choose one of {', '.join(STAGES)}"
        owner_id = _owner(form.get("owner"), errors)
        campaign = _campaign(form.get("campaign"), errors)
    if errors:
        return None, errors
    assert amount is not None
    return Deal(name, amount, expected_close, stage, owner_id, campaign), errors


def _amount(raw: str | None, errors: dict[str, str]) -> Decimal | None:
    text = (raw or "").strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        errors["amount"] = "write the amount as a number, e.g. 12500 or 12500.50 (no separators)"
        return None
    if not amount.is_finite() or amount < 0:
        errors["amount"] = "the amount must be zero or more"
    elif amount > MAX_AMOUNT:
        errors["amount"] = f"the amount must be at most {MAX_AMOUNT}"
    elif amount != amount.quantize(Decimal("0.01")):
        errors["amount"] = "at most two decimals (cents)"
    else:
        return amount
    return None


def _date(raw: str | None, errors: dict[str, str]) -> date | None:
    text = (raw or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors["expected_close"] = "write the date as YYYY-MM-DD, e.g. 2025-06-30"
        return None


def _owner(raw: str | None, errors: dict[str, str]) -> int | None:
    text = (raw or "").strip()
    if not text:
        return None
    allowed = {user.id for user in owners()}
    if not text.isdigit() or int(text) not in allowed:
        errors["owner"] = "choose an active sales user or admin from the list"
        return None
    return int(text)


def _campaign(raw: str | None, errors: dict[str, str]) -> int | str | None:
    text = AUTO if raw is None else raw.strip()
    if text == AUTO:
        return AUTO
    if not text:
        return None
    if not text.isdigit() or db.session.get(Campaign, int(text)) is None:
        errors["campaign"] = "choose a campaign from the list, none, or automatic"
        return None
    return int(text)


def _form_page(template_values: dict[str, Any], status: int = 200) -> tuple[str, int] | str:
    page = render_template(
        "admin/sales/opportunity_form.html",
        owners=owners(),
        campaigns=db.session.scalars(select(Campaign).order_by(Campaign.name)).all(),
        stages=STAGES,
        money=money,
        when=when,
        **template_values,
    )
    return (page, status) if status != 200 else page


def _may_edit(owner_id: int | None) -> bool:
    user = current_user()
    return user.role == "admin" or owner_id == user.id


def _list_query(conditions: list[Any]) -> tuple[Any, list[SortKey]]:
    """The opportunities matching `conditions` with contact, owner's and campaign's names;
    and the list's sort keys."""
    owner_user = aliased(User)
    query = (
        select(Opportunity, Contact, owner_user.name, Campaign.name)
        .outerjoin(Contact, Contact.id == Opportunity.contact_id)
        .outerjoin(owner_user, owner_user.id == Opportunity.owner_id)
        .outerjoin(Campaign, Campaign.id == Opportunity.campaign_id)
        .where(*conditions)
    )
    # Open deals first, soonest expected close first, deals without a date after the
    # dated ones (spelled out: SQLite and PostgreSQL put NULLs at opposite ends).
    closed, undated, close, by_id = LIST_ORDER
    order = [
        SortKey(case((Opportunity.stage == "open", 0), else_=1), closed),
        SortKey(case((Opportunity.expected_close.is_(None), 1), else_=0), undated),
        SortKey(func.coalesce(Opportunity.expected_close, literal(date.min)), close),
        SortKey(Opportunity.id, by_id),
    ]
    return query, order


CSV_COLUMNS = (
    "opportunity",
    "contact_email",
    "contact_name",
    "amount",
    "expected_close",
    "stage",
    "owner",
    "campaign",
    "campaign_source",
    "created_at",
    "closed_at",
)
"""The opportunities CSV's columns (times in UTC)."""


def _csv_rows(conditions: list[Any]) -> Iterator[list[Any]]:
    """Every opportunity matching `conditions`, in the list's order, read in chunks."""
    query, order = _list_query(conditions)
    for opp, contact, owner_name, campaign_name in keyset_rows(query, order):
        if contact is None:
            email, name = None, "(erased contact)"
        else:
            email = contact.email
            name = " ".join(p for p in (contact.first_name, contact.last_name) if p)
        yield [
            opp.name,
            email,
            name,
            opp.amount,
            opp.expected_close,
            opp.stage,
            owner_name,
            campaign_name,
            opp.campaign_source,
            opp.created_at,
            opp.closed_at,
        ]


@bp.get("/opportunities")
@roles("marketer", "sales")
def opportunities() -> Response | tuple[str, int] | str:
    """Opportunities filtered by stage and owner, with the count and amount per stage.

    `?format=csv`: every opportunity the filters match, not only the page.
    """
    user = current_user()
    stage = request.args.get("stage", "")
    default_owner = str(user.id) if user.role == "sales" else ""
    owner = request.args.get("owner", default_owner)
    errors = {}
    if stage and stage not in STAGES:
        errors["stage"] = f"choose one of {', '.join(STAGES)}, or all"
    if owner and not owner.isdigit() and owner != "none":
        errors["owner"] = "choose an owner from the list"
    conditions = []
    if stage and not errors:
        conditions.append(Opportunity.stage == stage)
    if owner and not errors:
        conditions.append(
            Opportunity.owner_id.is_(None)
            if owner == "none"
            else Opportunity.owner_id == int(owner)
        )
    if wants_csv() and not errors:
        name = f"opportunities_{stage or 'all'}_{today()}"
        return csv_response(name, CSV_COLUMNS, _csv_rows(conditions))
    cursor = None
    try:
        cursor = read_cursor(request.args, LIST_ORDER)
    except BadCursor as e:
        errors["page"] = str(e)
    totals = {name: (0, Decimal(0)) for name in STAGES}
    listed = Page([], 0, 0, None, None)
    if not errors:
        for name, count, amount in db.session.execute(
            select(Opportunity.stage, func.count(), func.coalesce(func.sum(Opportunity.amount), 0))
            .where(*conditions)
            .group_by(Opportunity.stage)
        ):
            totals[name] = (count, Decimal(amount))
        query, order = _list_query(conditions)
        listed = keyset_page(query, order, cursor)
    page = render_template(
        "admin/sales/opportunities.html",
        rows=listed.rows,
        listed=listed,
        keep={"stage": stage, "owner": owner},
        totals=totals,
        stage=stage,
        owner=owner,
        owners=owners(),
        stages=STAGES,
        errors=errors,
        money=money,
        contact_label=contact_label,
        may_edit=_may_edit,
    )
    return (page, 400) if errors else page


@bp.route("/opportunities/new", methods=["GET", "POST"])
@roles("sales")
def opportunity_new() -> Response | tuple[str, int] | str:
    """Open an opportunity for a contact (`?contact=ID`); its campaign is attributed."""
    raw = request.args.get("contact", "")
    contact = db.session.get(Contact, int(raw)) if raw.isdigit() else None
    if contact is None:
        abort(404, "no such contact: open this page from a lead or a contact")
    user = current_user()
    if not _may_edit(contact.owner_id):
        abort(403, "this contact is assigned to someone else")
    values = {
        "contact": contact,
        "contact_label": contact_label(contact),
        "opportunity": None,
        "errors": {},
        "form": {"owner": str(user.id), "campaign": AUTO, "stage": "open"},
    }
    if request.method == "GET":
        return _form_page(values)
    deal, errors = parse_deal(request.form, True, user.id)
    if deal is None:
        return _form_page({**values, "errors": errors, "form": request.form}, 400)
    from automation.sales import SalesRefused, open_opportunity

    try:
        opportunity_id = open_opportunity(
            db.session.connection(), contact.id, deal, user.id, user.name, utcnow()
        )
    except SalesRefused as e:
        db.session.rollback()
        return _form_page({**values, "errors": {"form": str(e)}, "form": request.form}, 409)
    db.session.commit()
    return redirect(url_for("admin.opportunity", opportunity_id=opportunity_id, saved=1))


@bp.route("/opportunities/<int:opportunity_id>", methods=["GET", "POST"])
@roles("sales")
def opportunity(opportunity_id: int) -> Response | tuple[str, int] | str:
    """One opportunity: edit amount, close date, stage, owner and campaign."""
    found = db.session.get(Opportunity, opportunity_id)
    if found is None:
        abort(404)
    if not _may_edit(found.owner_id):
        abort(403, "this opportunity belongs to someone else")
    contact = db.session.get(Contact, found.contact_id) if found.contact_id else None
    campaign = db.session.get(Campaign, found.campaign_id) if found.campaign_id else None
    values = {
        "contact": contact,
        "contact_label": contact_label(contact),
        "opportunity": found,
        "campaign": campaign,
        "saved": request.args.get("saved") == "1",
        "errors": {},
        "form": {
            "name": found.name,
            "amount": f"{found.amount:.2f}",
            "expected_close": found.expected_close.isoformat() if found.expected_close else "",
            "stage": found.stage,
            "owner": str(found.owner_id or ""),
            "campaign": AUTO if found.campaign_source == "auto" else str(found.campaign_id or ""),
        },
    }
    if request.method == "GET":
        return _form_page(values)
    user = current_user()
    deal, errors = parse_deal(request.form, True, user.id)
    if deal is None:
        return _form_page({**values, "errors": errors, "form": request.form, "saved": False}, 400)
    from automation.sales import SalesRefused, change_opportunity

    try:
        change_opportunity(db.session.connection(), opportunity_id, deal, user.name, utcnow())
    except SalesRefused as e:
        db.session.rollback()
        return _form_page({**values, "errors": {"form": str(e)}, "saved": False}, 409)
    db.session.commit()
    if not _may_edit(deal.owner_id):
        # Handed to someone else: this user may not open it any more.
        return redirect(url_for("admin.opportunities"))
    return redirect(url_for("admin.opportunity", opportunity_id=opportunity_id, saved=1))


@bp.route("/opportunities/<int:opportunity_id>/delete", methods=["GET", "POST"])
@roles("sales")
def opportunity_delete(opportunity_id: int) -> Response:
    """Delete an opportunity its owner (or an admin) may edit, after a confirmation page."""
    from automation.removal_records import plan_opportunity

    found = db.session.get(Opportunity, opportunity_id)
    if found is None:
        abort(404)
    if not _may_edit(found.owner_id):
        abort(403, "this opportunity belongs to someone else")
    return delete_page(
        lambda conn: plan_opportunity(conn, found.id),
        back=url_for("admin.opportunity", opportunity_id=found.id),
        done=url_for("admin.opportunities"),
    )
