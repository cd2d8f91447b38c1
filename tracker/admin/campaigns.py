"""Campaigns in the admin: list, create, edit (codes, emails, sequences, dates, costs), delete."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import Response, abort, redirect, render_template, request, url_for
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.datastructures import MultiDict

from tracker.admin import bp
from tracker.admin.csv_export import csv_response, today, wants_csv
from tracker.admin.deleting import delete_page
from tracker.auth import roles
from tracker.db import db
from tracker.email_models import EmailTemplate, Sequence
from tracker.models import utcnow
from tracker.sales_models import Campaign, CampaignCost

CHANNELS = (
    "email",
    "paid_search",
    "paid_social",
    "organic_social",
    "display",
    "event",
    "partner",
    "other",
)
"""What a campaign can be run through."""

BLANK_COST_ROWS = 3
"""Empty per-period cost lines the form offers for adding new ones."""

MAX_AMOUNT = Decimal("999999999999.99")
"""The largest amount the Money column holds."""


@dataclass
class CampaignForm:
    """What the campaign form holds, as typed, and what is wrong with it per field."""

    name: str = ""
    channel: str = "other"
    utm_campaigns: str = ""
    template_ids: list[int] = field(default_factory=list)
    sequence_ids: list[int] = field(default_factory=list)
    starts_on: str = ""
    ends_on: str = ""
    cost: str = ""
    cost_rows: list[dict[str, str]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, campaign: Campaign, costs: list[CampaignCost]) -> CampaignForm:
        """The form filled from a stored campaign."""
        return cls(
            name=campaign.name,
            channel=campaign.channel,
            utm_campaigns=", ".join(campaign.utm_campaigns or []),
            template_ids=list(campaign.template_ids or []),
            sequence_ids=list(campaign.sequence_ids or []),
            starts_on=campaign.starts_on.isoformat() if campaign.starts_on else "",
            ends_on=campaign.ends_on.isoformat() if campaign.ends_on else "",
            cost="" if campaign.cost is None else str(campaign.cost),
            cost_rows=[
                {
                    "starts_on": c.starts_on.isoformat(),
                    "ends_on": c.ends_on.isoformat(),
                    "amount": str(c.amount),
                }
                for c in costs
            ],
        )


@dataclass
class CampaignValues:
    """A checked campaign, ready to store."""

    name: str
    channel: str
    utm_campaigns: list[str]
    template_ids: list[int]
    sequence_ids: list[int]
    starts_on: date | None
    ends_on: date | None
    cost: Decimal | None
    cost_rows: list[tuple[date, date, Decimal]]


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"{text[:40]!r} is not a date: write it as YYYY-MM-DD") from e


def _amount(text: str) -> Decimal:
    try:
        amount = Decimal(text.replace(",", "").strip())
    except InvalidOperation as e:
        raise ValueError(f"{text[:40]!r} is not an amount: write it like 1500 or 1500.50") from e
    if not amount.is_finite() or amount < 0 or amount > MAX_AMOUNT:
        raise ValueError(f"{text[:40]!r} must be between 0 and {MAX_AMOUNT}")
    return amount.quantize(Decimal("0.01"))


def _ids(form: MultiDict[str, str], name: str, known: set[int]) -> tuple[list[int], bool]:
    """The chosen ids of a multi-select, and whether all of them exist."""
    chosen: list[int] = []
    for text in form.getlist(name):
        if not (text.isascii() and text.isdigit()) or int(text) not in known:
            return chosen, False
        if int(text) not in chosen:
            chosen.append(int(text))
    return chosen, True


def parse_campaign_form(
    form: MultiDict[str, str],
    template_ids: set[int],
    sequence_ids: set[int],
    codes_taken: dict[str, str],
) -> tuple[CampaignForm, CampaignValues | None]:
    """Check a submitted form; values only when every field is right.

    `codes_taken` maps the UTM codes of the other campaigns (lower case) to their
    names: a code belongs to one campaign, so that attribution is unambiguous.
    """
    typed = CampaignForm(
        name=form.get("name", "").strip(),
        channel=form.get("channel", ""),
        utm_campaigns=form.get("utm_campaigns", "").strip(),
        starts_on=form.get("starts_on", "").strip(),
        ends_on=form.get("ends_on", "").strip(),
        cost=form.get("cost", "").strip(),
    )
    errors = typed.errors
    if not typed.name:
        errors["name"] = "Give the campaign a name."
    elif len(typed.name) > 200:
        errors["name"] = "Keep the name to 200 characters."
    if typed.channel not in CHANNELS:
        errors["channel"] = f"Choose one of: {', '.join(CHANNELS)}."
    codes: list[str] = []
    for code in (c.strip() for c in typed.utm_campaigns.split(",")):
        if not code or code.lower() in (c.lower() for c in codes):
            continue
        if len(code) > 200:
            errors["utm_campaigns"] = "Keep each code to 200 characters."
        elif code.lower() in codes_taken:
            errors["utm_campaigns"] = (
                f"The code {code!r} already belongs to the campaign "
                f"{codes_taken[code.lower()]!r}: a code may belong to one campaign only."
            )
        codes.append(code)
    typed.template_ids, ok = _ids(form, "template_ids", template_ids)
    if not ok:
        errors["template_ids"] = "Choose templates from the list."
    typed.sequence_ids, ok = _ids(form, "sequence_ids", sequence_ids)
    if not ok:
        errors["sequence_ids"] = "Choose sequences from the list."
    starts_on = ends_on = None
    for key in ("starts_on", "ends_on"):
        text = getattr(typed, key)
        if text:
            try:
                value = _date(text)
            except ValueError as e:
                errors[key] = str(e)
                continue
            if key == "starts_on":
                starts_on = value
            else:
                ends_on = value
    if starts_on and ends_on and ends_on < starts_on:
        errors["ends_on"] = "The end comes before the start."
    cost = None
    if typed.cost:
        try:
            cost = _amount(typed.cost)
        except ValueError as e:
            errors["cost"] = str(e)
        else:
            if not (typed.starts_on and typed.ends_on):
                errors["cost"] = (
                    "A total cost is spread over the campaign's days: give a start and an end."
                )
    cost_rows, row_errors = _cost_rows(form, typed)
    if row_errors:
        errors["cost_rows"] = row_errors
    elif cost_rows and typed.cost and "cost" not in errors:
        errors["cost"] = "Give a total or costs per period, not both."
    if errors:
        return typed, None
    return typed, CampaignValues(
        typed.name,
        typed.channel,
        codes,
        typed.template_ids,
        typed.sequence_ids,
        starts_on,
        ends_on,
        cost,
        cost_rows,
    )


def _cost_rows(
    form: MultiDict[str, str], typed: CampaignForm
) -> tuple[list[tuple[date, date, Decimal]], str]:
    """The per-period cost lines: blank lines and ticked removals are dropped."""
    starts = form.getlist("cost_starts_on")
    ends = form.getlist("cost_ends_on")
    amounts = form.getlist("cost_amount")
    removed = set(form.getlist("cost_remove"))
    rows: list[tuple[date, date, Decimal]] = []
    problems: list[str] = []
    for position in range(min(max(len(starts), len(ends), len(amounts)), 500)):
        line = {
            "starts_on": (starts[position] if position < len(starts) else "").strip(),
            "ends_on": (ends[position] if position < len(ends) else "").strip(),
            "amount": (amounts[position] if position < len(amounts) else "").strip(),
        }
        if str(position) in removed or not any(line.values()):
            continue
        typed.cost_rows.append(line)
        try:
            first, last = _date(line["starts_on"]), _date(line["ends_on"])
            amount = _amount(line["amount"])
        except ValueError as e:
            problems.append(f"Line {len(typed.cost_rows)}: {e}.")
            continue
        if last < first:
            problems.append(f"Line {len(typed.cost_rows)}: the period ends before it starts.")
            continue
        rows.append((first, last, amount))
    return rows, " ".join(problems)


def _choices() -> tuple[list[Any], list[Any]]:
    templates = db.session.execute(
        select(EmailTemplate.id, EmailTemplate.name).order_by(EmailTemplate.name)
    ).all()
    sequences = db.session.execute(select(Sequence.id, Sequence.name).order_by(Sequence.name)).all()
    return templates, sequences


def _codes_taken(except_id: int | None) -> dict[str, str]:
    taken: dict[str, str] = {}
    for campaign_id, name, codes in db.session.execute(
        select(Campaign.id, Campaign.name, Campaign.utm_campaigns)
    ):
        if campaign_id != except_id:
            taken.update({code.lower(): name for code in codes or ()})
    return taken


def _render(form: CampaignForm, campaign: Campaign | None, status: int = 200) -> Response:
    templates, sequences = _choices()
    page = render_template(
        "admin/campaigns/form.html",
        form=form,
        campaign=campaign,
        channels=CHANNELS,
        templates=templates,
        sequences=sequences,
        blank_rows=BLANK_COST_ROWS,
        saved=request.args.get("saved") == "1",
    )
    return Response(page, status)


def _save(campaign: Campaign | None) -> Response:
    """Check and store a submitted form; the form again with errors when it is wrong."""
    templates, sequences = _choices()
    form, values = parse_campaign_form(
        request.form,
        {t.id for t in templates},
        {s.id for s in sequences},
        _codes_taken(campaign.id if campaign else None),
    )
    if values is None:
        return _render(form, campaign, 400)
    clash = db.session.scalar(
        select(Campaign.id).where(
            Campaign.name == values.name, Campaign.id != (campaign.id if campaign else -1)
        )
    )
    if clash is not None:
        form.errors["name"] = f"Another campaign is called {values.name!r}: choose another name."
        return _render(form, campaign, 400)
    if campaign is None:
        campaign = Campaign(created_at=utcnow())
        db.session.add(campaign)
    campaign.name = values.name
    campaign.channel = values.channel
    campaign.utm_campaigns = values.utm_campaigns
    campaign.template_ids = values.template_ids
    campaign.sequence_ids = values.sequence_ids
    campaign.starts_on = values.starts_on
    campaign.ends_on = values.ends_on
    campaign.cost = values.cost
    campaign.updated_at = utcnow()
    try:
        db.session.flush()
        db.session.execute(delete(CampaignCost).where(CampaignCost.campaign_id == campaign.id))
        db.session.add_all(
            CampaignCost(campaign_id=campaign.id, starts_on=s, ends_on=e, amount=a)
            for s, e, a in values.cost_rows
        )
        db.session.commit()
    except IntegrityError:
        # Someone saved a campaign of the same name in between.
        db.session.rollback()
        form.errors["name"] = f"Another campaign is called {values.name!r}: choose another name."
        return _render(form, None, 400)
    return redirect(url_for("admin.campaign_edit", campaign_id=campaign.id, saved=1))


CSV_COLUMNS = (
    "campaign",
    "channel",
    "utm_campaigns",
    "emails",
    "sequences",
    "starts_on",
    "ends_on",
    "cost",
    "cost_basis",
)
"""The campaigns CSV's columns. cost_basis: "total" (one amount over the dates), "per_period"
(cost is the sum of the campaign's cost lines), or empty without a cost."""


def _csv(campaigns: list[Campaign], per_period: dict[int, Decimal]) -> Response:
    rows = []
    for c in campaigns:
        if c.id in per_period:
            cost, basis = per_period[c.id], "per_period"
        else:
            cost, basis = c.cost, "" if c.cost is None else "total"
        rows.append(
            [
                c.name,
                c.channel,
                ", ".join(c.utm_campaigns or []),
                len(c.template_ids or []),
                len(c.sequence_ids or []),
                c.starts_on,
                c.ends_on,
                cost,
                basis,
            ]
        )
    return csv_response(f"campaigns_{today()}", CSV_COLUMNS, rows)


@bp.get("/campaigns")
@roles("marketer")
def campaigns() -> Response | str:
    """Every campaign with its channel, codes, dates and cost; `?format=csv` as a download."""
    rows = list(db.session.scalars(select(Campaign).order_by(Campaign.name)).all())
    per_period = {
        campaign_id: Decimal(total)
        for campaign_id, total in db.session.execute(
            select(CampaignCost.campaign_id, func.sum(CampaignCost.amount)).group_by(
                CampaignCost.campaign_id
            )
        )
    }
    if wants_csv():
        return _csv(rows, per_period)
    return render_template("admin/campaigns/list.html", campaigns=rows, per_period=per_period)


@bp.route("/campaigns/new", methods=["GET", "POST"])
@roles("marketer")
def campaign_new() -> Response:
    """Create a campaign."""
    if request.method == "POST":
        return _save(None)
    return _render(CampaignForm(), None)


@bp.route("/campaigns/<int:campaign_id>", methods=["GET", "POST"])
@roles("marketer")
def campaign_edit(campaign_id: int) -> Response:
    """Edit a campaign: its codes, emails, dates and costs."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        abort(404)
    if request.method == "POST":
        return _save(campaign)
    costs = db.session.scalars(
        select(CampaignCost)
        .where(CampaignCost.campaign_id == campaign.id)
        .order_by(CampaignCost.starts_on)
    ).all()
    return _render(CampaignForm.of(campaign, list(costs)), campaign)


@bp.route("/campaigns/<int:campaign_id>/delete", methods=["GET", "POST"])
@roles("marketer")
def campaign_delete(campaign_id: int) -> Response:
    """Delete a campaign and its cost periods, after a confirmation page; its opportunities
    are attributed automatically again."""
    from automation.removal_records import plan_campaign

    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        abort(404)
    now = utcnow()
    return delete_page(
        lambda conn: plan_campaign(conn, campaign.id, now),
        back=url_for("admin.campaign_edit", campaign_id=campaign.id),
        done=url_for("admin.campaigns"),
    )
