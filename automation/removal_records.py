"""Plans for deleting sites, users, campaigns and opportunities.

As in `automation.removal_config`: each `plan_*` reads what refers to the
record and what would go with it; `automation.removal.carry_out` deletes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, func, select, update

from automation.removal import (
    Plan,
    count_rows,
    counted,
    segments_whose_leaves,
    the,
    thresholds_with_action,
)
from automation.sales import AUTO
from tracker.automation_models import DecayPolicy, ScoringRule, Segment
from tracker.models import Contact, Event, Site, User, Visitor
from tracker.sales_models import Campaign, CampaignCost, ContactNote, LeadAction, Opportunity


def plan_site(conn: Connection, site_id: int) -> Plan:
    """Refused once it collected anything, or while rules, decay policies or segments name it.

    Sites have no off switch: to stop collecting, the tag comes off the pages.
    """
    name = conn.execute(select(Site.name).where(Site.id == site_id)).scalar_one()
    plan = Plan("site", name)
    visitors = count_rows(conn, Visitor, Visitor.site_id == site_id)
    events = count_rows(conn, Event, Event.site_id == site_id)
    if visitors or events:
        plan.blockers.append(
            f"it collected {counted(visitors, 'visitor')} and {counted(events, 'event')}, which "
            "contact histories and reports need: it stays; to stop collecting, take its tag "
            "off the pages"
        )
    for model, one, many in (
        (ScoringRule, "scoring rule", "scoring rules"),
        (DecayPolicy, "decay policy", "decay policies"),
    ):
        names = list(conn.execute(select(model.name).where(model.site_id == site_id)).scalars())
        if names:
            plan.blockers.append(
                f"it is named by {the(names, one, many)} (site: …): edit them first"
            )
    segments = segments_whose_leaves(
        conn.execute(select(Segment.name, Segment.rules)), "visited", "site", site_id
    )
    if segments:
        plan.blockers.append(
            f"its visits are looked at by {the(segments, 'segment')} (visited: site "
            f"{site_id}): edit their rules first"
        )
    plan.consequences.append(
        "events still sent with its key are refused from then on (within SITE_CACHE_SECONDS)"
    )
    plan.statements.append(delete(Site).where(Site.id == site_id))
    return plan


def plan_user(
    conn: Connection, user_id: int, actor_id: int, hand_to: int | None, now: datetime
) -> Plan:
    """Never oneself, never the last active admin, nor someone a threshold assigns leads to.

    Their leads and opportunities go to `hand_to` (None: nobody, so they show as
    unowned); the notes and lead actions they wrote stay, shown as by a deleted user.
    """
    user = conn.execute(
        select(User.name, User.email, User.role, User.active).where(User.id == user_id)
    ).one()
    plan = Plan(
        "user", f"{user.name} <{user.email}>", alternative="deactivate" if user.active else None
    )
    if user_id == actor_id:
        plan.blockers.append("you cannot delete yourself: ask another admin")
        plan.alternative = None
    elif user.role == "admin":
        others = count_rows(
            conn, User, User.role == "admin", User.active.is_(True), User.id != user_id
        )
        if not others:
            plan.blockers.append("they are the last active admin: make another admin first")
    thresholds = thresholds_with_action(conn, "assign_owner", "owner", user.email, fold=True)
    if thresholds:
        plan.blockers.append(
            f"leads are assigned to them by {the(thresholds, 'threshold')} (owner: "
            f"{user.email}): edit them first"
        )
    heir = "become unowned, unless handed to someone"
    if hand_to is not None:
        heir = "go to " + conn.execute(select(User.name).where(User.id == hand_to)).scalar_one()
    leads = count_rows(conn, Contact, Contact.owner_id == user_id)
    deals = count_rows(conn, Opportunity, Opportunity.owner_id == user_id)
    notes = count_rows(conn, ContactNote, ContactNote.author_id == user_id)
    actions = count_rows(conn, LeadAction, LeadAction.user_id == user_id)
    plan.consequences += [
        f"their leads ({leads}) and opportunities ({deals}) {heir}",
        f"the notes ({notes}) and lead decisions ({actions}) they wrote stay, shown as by a "
        "deleted user",
        "they are logged out at once",
    ]
    plan.statements += [
        update(Contact).where(Contact.owner_id == user_id).values(owner_id=hand_to, updated_at=now),
        update(Opportunity)
        .where(Opportunity.owner_id == user_id)
        .values(owner_id=hand_to, updated_at=now),
        update(ContactNote).where(ContactNote.author_id == user_id).values(author_id=None),
        update(LeadAction).where(LeadAction.user_id == user_id).values(user_id=None),
        delete(User).where(User.id == user_id),
    ]
    return plan


def plan_campaign(conn: Connection, campaign_id: int, now: datetime) -> Plan:
    """Deleted with its cost periods; its opportunities lose it and are attributed again
    from their touches (campaign_source 'auto'), a hand-chosen campaign included."""
    name = conn.execute(select(Campaign.name).where(Campaign.id == campaign_id)).scalar_one()
    plan = Plan("campaign", name)
    costs = count_rows(conn, CampaignCost, CampaignCost.campaign_id == campaign_id)
    deals, chosen = conn.execute(
        select(func.count(), func.count().filter(Opportunity.campaign_source != AUTO)).where(
            Opportunity.campaign_id == campaign_id
        )
    ).one()
    plan.consequences.append(f"its cost periods ({costs}) go with it")
    if deals:
        plan.consequences.append(
            f"its opportunities ({deals}"
            + (f", {chosen} chosen by hand" if chosen else "")
            + ") lose it and are attributed from their touches again"
        )
    plan.consequences.append(
        "the ROI report no longer lists it; touches that matched only it count for no campaign"
    )
    plan.statements += [
        delete(CampaignCost).where(CampaignCost.campaign_id == campaign_id),
        update(Opportunity)
        .where(Opportunity.campaign_id == campaign_id)
        .values(campaign_id=None, campaign_source=AUTO, updated_at=now),
        delete(Campaign).where(Campaign.id == campaign_id),
    ]
    return plan


def plan_opportunity(conn: Connection, opportunity_id: int) -> Plan:
    """Deleted; the contact keeps its stage, the reports and the timeline lose the deal."""
    name, stage, amount = conn.execute(
        select(Opportunity.name, Opportunity.stage, Opportunity.amount).where(
            Opportunity.id == opportunity_id
        )
    ).one()
    plan = Plan("opportunity", name)
    plan.consequences += [
        f"the reports lose its amount of {amount:,.2f} ({stage})",
        "the contact keeps its stage; its timeline loses the opportunity's entries (mark it "
        "lost instead to keep it on record)",
    ]
    plan.statements.append(delete(Opportunity).where(Opportunity.id == opportunity_id))
    return plan
