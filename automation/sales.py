"""What sales does to leads and opportunities, as database changes.

A lead action (accept, not ready, disqualify, convert) is kept as a `lead_actions`
row and moves the contact's stage with a logged cause. Opportunities are opened
with their campaign attributed from the contact's touches, and closing one as won
makes the contact a customer. Every function works on the caller's connection and
transaction; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select, update

from automation.actions import set_stage
from automation.attribution import Touch, campaign_for_touches
from automation.attribution_store import campaign_keys
from tracker.email_models import Enrolment, Message
from tracker.errors import ClosedLoopError
from tracker.models import Contact, Event, Visitor, as_utc
from tracker.sales_models import LeadAction, Opportunity

ACTIONS = {
    "accept": "sql",
    "not_ready": "nurture",
    "disqualify": "disqualified",
    "convert": "opportunity",
}
"""Each lead action and the stage it moves the contact to."""

ACTIONABLE = {
    "accept": frozenset({"mql"}),
    "not_ready": frozenset({"mql", "sql"}),
    "disqualify": frozenset({"mql", "sql"}),
    "convert": frozenset({"mql", "sql"}),
}
"""The stages a contact may be in for each action (an accepted lead is still worked)."""

VERBS = {
    "accept": "accepted",
    "not_ready": "not ready",
    "disqualify": "disqualified",
    "convert": "converted to an opportunity",
}

OPPORTUNITY_STAGES = ("open", "won", "lost")
AUTO = "auto"
"""As a campaign choice: attribute it from the contact's touches."""

TOUCH_LIMIT = 500
"""Most recent touches of each kind read when attributing (the latest matching one wins)."""


class SalesRefused(ClosedLoopError):
    """A lead action or opportunity change that cannot happen now; the message says why."""


@dataclass(frozen=True)
class Deal:
    """An opportunity's fields as a person entered them (already validated)."""

    name: str
    amount: Decimal
    expected_close: date | None = None
    stage: str = "open"
    owner_id: int | None = None
    campaign: int | str | None = AUTO  # a campaign id, None for none, or AUTO


@dataclass(frozen=True)
class Nurture:
    """Where a not-ready lead went: the sequence, its enrolment, or why it was not enrolled."""

    sequence: str | None
    enrolment_id: int | None
    refusal: str | None


@dataclass(frozen=True)
class ActionResult:
    """What a lead action did."""

    action: str
    stage: str
    nurture: Nurture | None = None
    opportunity_id: int | None = None


def lead_cause(action: str, user_name: str, reason: str | None = None) -> str:
    """The stage change's cause for a lead action, e.g. "sales: accepted by Ann"."""
    cause = f"sales: {VERBS[action]} by {user_name}"
    return f"{cause}: {reason}" if reason else cause


def _contact_row(conn: Connection, contact_id: int) -> dict[str, Any] | None:
    """The contact's id, stage and owner, locked for this transaction on PostgreSQL."""
    contacts = Contact.__table__
    query = select(contacts.c.id, contacts.c.stage, contacts.c.owner_id).where(
        contacts.c.id == contact_id
    )
    if conn.dialect.name == "postgresql":
        # Two people acting on one lead at once: the second sees the first's stage.
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    return dict(row) if row is not None else None


def send_to_nurture(
    conn: Connection, contact: dict[str, Any], cause: str, now: datetime
) -> Nurture:
    """Stage `nurture` and the not-ready sequence for the contact's segments, when one takes it."""
    from automation.sequence_runner import enrol, not_ready_sequence, refusal

    set_stage(conn, contact, "nurture", cause, now)
    sequence = not_ready_sequence(conn, contact["id"])
    if sequence is None:
        return Nurture(None, None, "no sequence takes not-ready leads in this contact's segments")
    created = enrol(conn, [contact["id"]], sequence, cause, now)
    if created:
        return Nurture(sequence.name, created[0], None)
    return Nurture(sequence.name, None, refusal(conn, contact["id"], sequence, now))


def record_action(
    conn: Connection,
    contact_id: int,
    user_id: int | None,
    action: str,
    reason: str | None,
    now: datetime,
) -> None:
    """Keep a lead action: who did what to which lead, why and when."""
    conn.execute(
        LeadAction.__table__.insert().values(
            contact_id=contact_id,
            user_id=user_id,
            action=action,
            reason=reason[:500] if reason else None,
            created_at=now,
        )
    )


def act_on_lead(
    conn: Connection,
    contact_id: int,
    user_id: int | None,
    user_name: str,
    action: str,
    reason: str | None,
    now: datetime,
    deal: Deal | None = None,
) -> ActionResult:
    """Do a lead action: record it, move the stage, and enrol or open the opportunity.

    Raises SalesRefused when the contact is gone or its stage does not allow the
    action any more (someone else acted first, say); nothing is changed then.
    """
    if action not in ACTIONS:
        raise SalesRefused(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    contact = _contact_row(conn, contact_id)
    if contact is None:
        raise SalesRefused("this contact no longer exists")
    if contact["stage"] not in ACTIONABLE[action]:
        raise SalesRefused(
            f"the lead is in stage {contact['stage']} now, so it cannot be {VERBS[action]}"
        )
    if action == "convert" and deal is None:
        raise SalesRefused("converting needs the opportunity's name and amount")
    cause = lead_cause(action, user_name, reason)
    record_action(conn, contact_id, user_id, action, reason, now)
    if action == "not_ready":
        nurture = send_to_nurture(conn, contact, cause, now)
        return ActionResult(action, contact["stage"], nurture=nurture)
    opportunity_id = None
    if action == "convert":
        assert deal is not None
        opportunity_id = _insert_opportunity(conn, contact_id, deal, user_id, now)
    set_stage(conn, contact, ACTIONS[action], cause, now)
    return ActionResult(action, contact["stage"], opportunity_id=opportunity_id)


def campaign_for(conn: Connection, contact_id: int, before: datetime) -> int | None:
    """The campaign of the contact's last campaign touch at or before `before`, or None."""
    campaigns = campaign_keys(conn)
    if not campaigns:
        return None
    touches = [
        Touch(as_utc(at), utm_campaign=code)
        for at, code in conn.execute(
            select(Event.occurred_at, Event.utm_campaign)
            .where(
                Event.contact_id == contact_id,
                Event.utm_campaign.is_not(None),
                Event.is_bot.is_(False),
                Event.occurred_at <= before,
            )
            .order_by(Event.occurred_at.desc())
            .limit(TOUCH_LIMIT)
        )
    ]
    touches += [
        Touch(as_utc(at), utm_campaign=code)
        for at, code in conn.execute(
            select(Visitor.first_seen, Visitor.utm_campaign).where(
                Visitor.contact_id == contact_id,
                Visitor.utm_campaign.is_not(None),
                Visitor.is_bot.is_(False),
            )
        )
    ]
    # clicked_at is the first human click: machine clicks (scanners) never set it.
    touches += [
        Touch(as_utc(at), template_id=template_id, sequence_id=sequence_id)
        for at, template_id, sequence_id in conn.execute(
            select(Message.clicked_at, Message.template_id, Enrolment.sequence_id)
            .outerjoin(Enrolment, Enrolment.id == Message.enrolment_id)
            .where(
                Message.contact_id == contact_id,
                Message.clicked_at.is_not(None),
                Message.clicked_at <= before,
            )
            .order_by(Message.clicked_at.desc())
            .limit(TOUCH_LIMIT)
        )
    ]
    return campaign_for_touches(touches, campaigns, as_utc(before))


def _insert_opportunity(
    conn: Connection, contact_id: int, deal: Deal, owner_id: int | None, now: datetime
) -> int:
    if deal.campaign == AUTO:
        campaign_id, source = campaign_for(conn, contact_id, now), "auto"
    else:
        campaign_id, source = deal.campaign, "manual"
    closed = deal.stage in ("won", "lost")
    return conn.execute(
        Opportunity.__table__.insert()
        .values(
            contact_id=contact_id,
            owner_id=deal.owner_id or owner_id,
            campaign_id=campaign_id,
            campaign_source=source,
            name=deal.name,
            amount=deal.amount,
            expected_close=deal.expected_close,
            stage=deal.stage,
            closed_at=now if closed else None,
            created_at=now,
            updated_at=now,
        )
        .returning(Opportunity.__table__.c.id)
    ).scalar_one()


def open_opportunity(
    conn: Connection,
    contact_id: int,
    deal: Deal,
    user_id: int | None,
    user_name: str,
    now: datetime,
) -> int:
    """Open an opportunity for a contact (not through the leads queue); return its id.

    A lead (MQL or SQL) counts as converted, like the queue's convert; any other
    contact moves forward to stage `opportunity` (or `customer` if it is won already).
    """
    contact = _contact_row(conn, contact_id)
    if contact is None:
        raise SalesRefused("this contact no longer exists")
    if contact["stage"] in ACTIONABLE["convert"]:
        record_action(conn, contact_id, user_id, "convert", None, now)
    opportunity_id = _insert_opportunity(conn, contact_id, deal, user_id, now)
    cause = f"sales: opportunity {deal.name!r} opened by {user_name}"
    set_stage(conn, contact, "opportunity", cause, now)
    if deal.stage == "won":
        _won(conn, contact, deal.name, user_name, now)
    return opportunity_id


def _won(
    conn: Connection, contact: dict[str, Any], name: str, user_name: str, now: datetime
) -> None:
    set_stage(conn, contact, "customer", f"sales: opportunity {name!r} won by {user_name}", now)


def change_opportunity(
    conn: Connection, opportunity_id: int, deal: Deal, user_name: str, now: datetime
) -> None:
    """Save an edited opportunity; closing stamps closed_at, reopening clears it, won: a customer.

    The campaign stays automatic while AUTO is chosen (attributed again from the touches
    before the opportunity was opened); choosing one, or none, makes it manual.
    """
    table = Opportunity.__table__
    current = conn.execute(select(table).where(table.c.id == opportunity_id)).mappings().first()
    if current is None:
        raise SalesRefused("this opportunity no longer exists")
    values: dict[str, Any] = {
        "name": deal.name,
        "amount": deal.amount,
        "expected_close": deal.expected_close,
        "stage": deal.stage,
        "owner_id": deal.owner_id,
        "updated_at": now,
    }
    contact_id = current["contact_id"]
    if deal.campaign == AUTO:
        # An erased contact has no touches left: its deal keeps the campaign it had.
        if contact_id is not None:
            values["campaign_id"] = campaign_for(conn, contact_id, current["created_at"])
        values["campaign_source"] = "auto"
    else:
        values["campaign_id"], values["campaign_source"] = deal.campaign, "manual"
    if deal.stage != current["stage"]:
        values["closed_at"] = now if deal.stage in ("won", "lost") else None
    conn.execute(update(table).where(table.c.id == opportunity_id).values(**values))
    if deal.stage == "won" and current["stage"] != "won" and contact_id is not None:
        contact = _contact_row(conn, contact_id)
        if contact is not None:
            _won(conn, contact, deal.name, user_name, now)
