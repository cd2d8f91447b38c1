"""The sales pages: the "My leads" queue, one lead with its actions, and follow-up health.

The queues and the follow-up tables also download as CSV (`?format=csv`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from flask import Response, abort, current_app, redirect, render_template, request, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from tracker.admin import bp
from tracker.admin.csv_export import csv_response, keyset_chunks, keyset_rows, today, wants_csv
from tracker.admin.opportunities import contact_label, money, owners, parse_deal, when
from tracker.auth import current_user, roles
from tracker.automation_models import PointsEntry, ScoringRule, StageChange
from tracker.db import db
from tracker.email_models import Enrolment
from tracker.email_models import Sequence as NurtureSequence
from tracker.models import Contact, Event, User, as_utc, utcnow
from tracker.paging import BadCursor, Cursor, Kind, Page, SortKey, keyset_page, read_cursor
from tracker.sales_models import LeadAction, Opportunity

POINTS_SHOWN = 5
"""Recent point awards shown per lead in the queue (the lead's page shows more)."""

ACTION_LABELS = {
    "accept": "Accepted",
    "not_ready": "Not ready",
    "disqualify": "Disqualified",
    "convert": "Converted",
}
DONE = {
    "accept": "Accepted: the lead is now an SQL.",
    "not_ready": "Sent back to nurture.",
    "disqualify": "Disqualified.",
}


def _mql_times() -> Any:
    """Per contact, when it last became an MQL."""
    return (
        select(StageChange.contact_id, func.max(StageChange.created_at).label("at"))
        .where(StageChange.to_stage == "mql")
        .group_by(StageChange.contact_id)
        .subquery()
    )


def _latest_causes(contact_ids: Sequence[int]) -> dict[int, str]:
    """Why each contact last became an MQL (the stage change's cause)."""
    causes: dict[int, str] = {}
    for contact_id, cause in db.session.execute(
        select(StageChange.contact_id, StageChange.cause)
        .where(StageChange.contact_id.in_(contact_ids), StageChange.to_stage == "mql")
        .order_by(StageChange.created_at, StageChange.id)
    ):
        causes[contact_id] = cause
    return causes


def recent_points(contact_ids: Sequence[int], per_contact: int) -> dict[int, list[Any]]:
    """The latest point awards of each contact: rule, points, and the event that earned them."""
    if not contact_ids:
        return {}
    ranked = (
        select(
            PointsEntry.contact_id,
            PointsEntry.delta,
            PointsEntry.kind,
            PointsEntry.created_at,
            ScoringRule.name.label("rule"),
            Event.type.label("event_type"),
            Event.path,
            Event.title,
            Event.name.label("event_name"),
            func.row_number()
            .over(
                partition_by=PointsEntry.contact_id,
                order_by=(PointsEntry.created_at.desc(), PointsEntry.id.desc()),
            )
            .label("rank"),
        )
        .outerjoin(ScoringRule, ScoringRule.id == PointsEntry.rule_id)
        .outerjoin(Event, Event.id == PointsEntry.event_id)
        .where(PointsEntry.contact_id.in_(contact_ids), PointsEntry.delta > 0)
        .subquery()
    )
    found: dict[int, list[Any]] = defaultdict(list)
    for row in db.session.execute(
        select(ranked)
        .where(ranked.c.rank <= per_contact)
        .order_by(ranked.c.contact_id, ranked.c.rank)
    ):
        found[row.contact_id].append(row)
    return found


QUEUE_ORDER: tuple[Kind, Kind] = ("time", "int")
"""The kinds of the queues' sort keys: when the lead became an MQL, then its id."""


def _queue_order(mql: Any) -> list[SortKey]:
    """Oldest MQL first: when the contact became an MQL (else was created), then its id."""
    since, contact_id = QUEUE_ORDER
    return [
        SortKey(func.coalesce(mql.c.at, Contact.created_at), since),
        SortKey(Contact.id, contact_id),
    ]


def _queue_query(owner: int | str | None, stages: Sequence[str]) -> tuple[Any, list[SortKey]]:
    """The leads in `stages` of `owner` (see `lead_queue`): contact, mql_at, owner name;
    and the queue's sort keys."""
    mql = _mql_times()
    order = _queue_order(mql)
    owner_user = aliased(User)
    query = (
        select(Contact, order[0].expression.label("mql_at"), owner_user.name)
        .outerjoin(mql, mql.c.contact_id == Contact.id)
        .outerjoin(owner_user, owner_user.id == Contact.owner_id)
        .where(Contact.stage.in_(stages))
    )
    if owner == "none":
        query = query.where(Contact.owner_id.is_(None))
    elif owner is not None:
        query = query.where(Contact.owner_id == owner)
    return query, order


def lead_queue(
    owner: int | str | None,
    stages: Sequence[str] = ("mql",),
    cursor: Cursor | None = None,
    prefix: str = "",
) -> Page:
    """A page of leads in `stages`, oldest MQL first, with why they qualified and recent points.

    `owner` is a user id, "none" for unassigned leads, or None for everyone's.
    The page's rows are dicts: contact, label, mql_at, owner, cause, points.
    """
    query, order = _queue_query(owner, stages)
    page = keyset_page(query, order, cursor, prefix=prefix)
    ids = [contact.id for contact, _, _ in page.rows]
    causes = _latest_causes(ids) if ids else {}
    points = recent_points(ids, POINTS_SHOWN)
    leads = [
        {
            "contact": contact,
            "label": contact_label(contact),
            "mql_at": as_utc(mql_at) if mql_at else None,
            "owner": owner_name,
            "cause": causes.get(contact.id),
            "points": points.get(contact.id, []),
        }
        for contact, mql_at, owner_name in page.rows
    ]
    return replace(page, rows=leads)


QUEUES = {"waiting": ("mql",), "accepted": ("sql",)}
"""The queues of the leads page by name (`?queue=`), with the stages each lists."""

QUEUE_COLUMNS = (
    "email",
    "first_name",
    "last_name",
    "company",
    "stage",
    "owner",
    "mql_at",
    "score",
    "engagement_score",
    "fit_score",
    "why",
)
"""The leads CSV's columns (times in UTC; why: the cause of the last MQL stage change)."""


def _queue_rows(owner: int | str | None, stages: Sequence[str]) -> Iterator[list[Any]]:
    """Every lead of a queue, oldest MQL first, read in chunks."""
    query, order = _queue_query(owner, stages)
    for chunk in keyset_chunks(query, order):
        causes = _latest_causes([contact.id for contact, _, _ in chunk])
        for contact, mql_at, owner_name in chunk:
            yield [
                contact.email,
                contact.first_name,
                contact.last_name,
                contact.company,
                contact.stage,
                owner_name,
                mql_at,
                contact.score,
                contact.engagement_score,
                contact.fit_score,
                causes.get(contact.id),
            ]


def _leads_csv(owner: int | str | None) -> Response:
    queue = request.args.get("queue", "")
    if queue not in QUEUES:
        abort(400, f"choose the queue to download: queue={' or queue='.join(QUEUES)}")
    return csv_response(
        f"leads_{queue}_{today()}", QUEUE_COLUMNS, _queue_rows(owner, QUEUES[queue])
    )


def _cursor(prefix: str = "") -> Cursor | None:
    """The page cursor of a queue in the request; a hand-edited one is a 400, never a 500."""
    try:
        return read_cursor(request.args, QUEUE_ORDER, prefix)
    except BadCursor as e:
        abort(400, str(e))


def _owner_filter(user: User) -> tuple[int | str | None, str]:
    """Whose leads a page shows: a salesperson's own; an admin's choice (everyone's by default)."""
    if user.role != "admin":
        return user.id, str(user.id)
    raw = request.args.get("owner", "")
    if raw == "none":
        return "none", raw
    if raw.isdigit():
        return int(raw), raw
    return None, ""


@bp.get("/leads")
@roles("sales")
def leads() -> Response | str:
    """My leads: MQLs waiting for a decision, then accepted leads (SQLs) still being worked.

    `?format=csv&queue=waiting` (or `accepted`): the whole queue, with the same owner filter.
    """
    user = current_user()
    owner, chosen = _owner_filter(user)
    if wants_csv():
        return _leads_csv(owner)
    waiting = lead_queue(owner, ("mql",), _cursor("waiting_"), "waiting_")
    accepted = lead_queue(owner, ("sql",), _cursor("accepted_"), "accepted_")
    # A link pages one queue and keeps the owner filter and where the other queue is.
    cursors = [f"{queue}_{d}" for queue in ("waiting", "accepted") for d in ("after", "before")]
    keep = {
        "owner": chosen if user.role == "admin" else None,
        **{name: request.args.get(name) for name in cursors},
    }
    return render_template(
        "admin/sales/leads.html",
        waiting=waiting,
        accepted=accepted,
        keep=keep,
        owner=chosen,
        owners=owners() if user.role == "admin" else [],
        when=when,
    )


def _lead(contact_id: int) -> Contact:
    """The contact, when the user may act on it: its owner, or an admin."""
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        abort(404)
    user = current_user()
    if user.role != "admin" and contact.owner_id != user.id:
        abort(403, "this lead is assigned to someone else")
    return contact


def _lead_page(
    contact: Contact,
    status: int = 200,
    errors: dict[str, str] | None = None,
    form: Any = None,
    done: str | None = None,
) -> tuple[str, int] | str:
    mql = _mql_times()
    mql_at = db.session.scalar(select(mql.c.at).where(mql.c.contact_id == contact.id))
    actor = aliased(User)
    actions = db.session.execute(
        select(LeadAction, actor.name)
        .outerjoin(actor, actor.id == LeadAction.user_id)
        .where(LeadAction.contact_id == contact.id)
        .order_by(LeadAction.created_at.desc(), LeadAction.id.desc())
    ).all()
    enrolments = db.session.execute(
        select(Enrolment, NurtureSequence.name)
        .join(NurtureSequence, NurtureSequence.id == Enrolment.sequence_id)
        .where(Enrolment.contact_id == contact.id)
        .order_by(Enrolment.started_at.desc(), Enrolment.id.desc())
    ).all()
    deals = db.session.scalars(
        select(Opportunity)
        .where(Opportunity.contact_id == contact.id)
        .order_by(Opportunity.created_at.desc())
    ).all()
    page = render_template(
        "admin/sales/lead.html",
        contact=contact,
        label=contact_label(contact),
        mql_at=mql_at,
        cause=_latest_causes([contact.id]).get(contact.id),
        points=recent_points([contact.id], 20).get(contact.id, []),
        actions=actions,
        enrolments=enrolments,
        deals=deals,
        errors=errors or {},
        form=form or {},
        done=DONE.get(done or ""),
        labels=ACTION_LABELS,
        when=when,
        money=money,
    )
    return (page, status) if status != 200 else page


@bp.get("/leads/<int:contact_id>")
@roles("sales")
def lead(contact_id: int) -> tuple[str, int] | str:
    """One lead: why it qualified, what was decided so far, and the action forms."""
    return _lead_page(_lead(contact_id), done=request.args.get("done"))


@bp.post("/leads/<int:contact_id>")
@roles("sales")
def lead_act(contact_id: int) -> Response | tuple[str, int] | str:
    """Accept, send back to nurture, disqualify, or convert the lead to an opportunity."""
    from automation.sales import ACTIONS, SalesRefused, act_on_lead

    contact = _lead(contact_id)
    user = current_user()
    action = request.form.get("action", "")
    reason = (request.form.get("reason") or "").strip()
    errors: dict[str, str] = {}
    deal = None
    if action not in ACTIONS:
        errors["action"] = "choose accept, not ready, disqualify or convert"
    elif action in ("not_ready", "disqualify") and not reason:
        errors[f"{action}_reason"] = "say why, so marketing can learn from it"
    elif len(reason) > 500:
        errors[f"{action}_reason"] = f"at most 500 characters (this one has {len(reason)})"
    elif action == "convert":
        deal, deal_errors = parse_deal(request.form, False, user.id)
        errors.update(deal_errors)
    if errors:
        return _lead_page(contact, 400, errors, request.form)
    try:
        result = act_on_lead(
            db.session.connection(),
            contact.id,
            user.id,
            user.name,
            action,
            reason or None,
            utcnow(),
            deal,
        )
    except SalesRefused as e:
        db.session.rollback()
        db.session.refresh(contact)
        return _lead_page(contact, 409, {"action": str(e)}, request.form)
    db.session.commit()
    if result.opportunity_id is not None:
        return redirect(url_for("admin.opportunity", opportunity_id=result.opportunity_id, saved=1))
    return redirect(url_for("admin.lead", contact_id=contact.id, done=action))


def health_pairs(since: datetime) -> list[tuple[int, int | None, datetime, datetime | None]]:
    """(contact, owner, became MQL, first lead action since) for MQL changes after `since`."""
    first_action = (
        select(func.min(LeadAction.created_at))
        .where(
            LeadAction.contact_id == StageChange.contact_id,
            LeadAction.created_at >= StageChange.created_at,
        )
        .scalar_subquery()
    )
    rows = db.session.execute(
        select(StageChange.contact_id, Contact.owner_id, StageChange.created_at, first_action)
        .join(Contact, Contact.id == StageChange.contact_id)
        .where(StageChange.to_stage == "mql", StageChange.created_at >= since)
    ).all()
    return [
        (contact_id, owner_id, as_utc(mql_at), as_utc(acted) if acted else None)
        for contact_id, owner_id, mql_at, acted in rows
    ]


def _untouched_query() -> tuple[Any, list[SortKey]]:
    """Contacts in stage mql with no lead action since they became MQL: contact, mql_at,
    owner name; and the list's sort keys (oldest first)."""
    mql = _mql_times()
    order = _queue_order(mql)
    since = order[0].expression
    acted = (
        select(LeadAction.id)
        .where(LeadAction.contact_id == Contact.id, LeadAction.created_at >= since)
        .exists()
    )
    owner_user = aliased(User)
    query = (
        select(Contact, since.label("mql_at"), owner_user.name)
        .outerjoin(mql, mql.c.contact_id == Contact.id)
        .outerjoin(owner_user, owner_user.id == Contact.owner_id)
        .where(Contact.stage == "mql", ~acted)
    )
    return query, order


def untouched_mqls(cursor: Cursor | None = None) -> Page:
    """A page of contacts in stage mql with no lead action since they became MQL, oldest first.

    The page's rows are dicts: contact, label, mql_at, owner.
    """
    query, order = _untouched_query()
    page = keyset_page(query, order, cursor)
    return replace(
        page,
        rows=[
            {"contact": c, "label": contact_label(c), "mql_at": as_utc(at), "owner": name}
            for c, at, name in page.rows
        ],
    )


def health_per_owner(
    pairs: Sequence[tuple[int, int | None, datetime, datetime | None]], now: datetime, hours: float
) -> list[tuple[str, Any]]:
    """(owner's name, follow-up Health) of each owner with MQLs in `pairs`, by name."""
    from automation.follow_up import follow_up_health

    by_owner: dict[int | None, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    for _, owner_id, mql_at, acted in pairs:
        by_owner[owner_id].append((mql_at, acted))
    names = dict(db.session.execute(select(User.id, User.name)).all())
    return sorted(
        (
            (names.get(owner_id, "(nobody)") if owner_id else "(nobody)", health)
            for owner_id, rows in by_owner.items()
            if (health := follow_up_health(rows, now, hours)).mqls
        ),
        key=lambda item: item[0].casefold(),
    )


HEALTH_COLUMNS = (
    "owner",
    "mqls",
    "on_time",
    "late",
    "pending",
    "untouched",
    "share_on_time",
    "median_hours_to_action",
)
"""A follow-up health CSV's columns (the share as a ratio: 0.5 is half)."""


def health_cells(owner: str, health: Any) -> list[Any]:
    """One owner's follow-up Health in `HEALTH_COLUMNS` order."""
    return [
        owner,
        health.mqls,
        health.on_time,
        health.late,
        health.pending,
        health.untouched,
        health.share_on_time,
        health.median_hours_to_action,
    ]


UNTOUCHED_COLUMNS = ("email", "first_name", "last_name", "company", "owner", "mql_at", "hours")
"""The untouched MQLs CSV's columns (mql_at in UTC; hours waited until the download)."""


def _untouched_rows(now: datetime) -> Iterator[list[Any]]:
    query, order = _untouched_query()
    for contact, mql_at, owner_name in keyset_rows(query, order):
        waited = (now - as_utc(mql_at)).total_seconds() / 3600
        yield [
            contact.email,
            contact.first_name,
            contact.last_name,
            contact.company,
            owner_name,
            mql_at,
            waited,
        ]


HEALTH_TABLES = ("per_owner", "untouched")
"""The tables of the follow-up health page a CSV can hold (`?table=`)."""


@bp.get("/leads/health")
@roles("marketer", "sales")
def leads_health() -> Response | str:
    """Follow-up health: the share of MQLs acted on in time, per owner, and the untouched.

    `?format=csv&table=per_owner` (or `untouched`): that table, untouched MQLs all of them.
    """
    from automation.follow_up import WINDOW_DAYS, follow_up_health

    now = utcnow()
    hours = current_app.config["FOLLOW_UP_HOURS"]
    table = request.args.get("table", "")
    if wants_csv() and table not in HEALTH_TABLES:
        abort(400, f"choose the table to download: table={' or table='.join(HEALTH_TABLES)}")
    if wants_csv() and table == "untouched":
        return csv_response(f"untouched_mqls_{today()}", UNTOUCHED_COLUMNS, _untouched_rows(now))
    pairs = health_pairs(now - timedelta(days=WINDOW_DAYS))
    per_owner = health_per_owner(pairs, now, hours)
    if wants_csv():
        rows = [health_cells(name, health) for name, health in per_owner]
        return csv_response(f"follow_up_per_owner_{today()}", HEALTH_COLUMNS, rows)
    overall = follow_up_health([(m, a) for _, _, m, a in pairs], now, hours)
    untouched = untouched_mqls(_cursor())
    return render_template(
        "admin/sales/health.html",
        overall=overall,
        per_owner=per_owner,
        untouched=untouched,
        hours=hours,
        days=WINDOW_DAYS,
        now=now,
        when=when,
    )
