"""Plans for deleting rules-file items: segments, rules, thresholds, decay, webhooks, templates.

Each `plan_*` reads, in the caller's transaction, what refers to the item and
what would go with it; `automation.removal.carry_out` does the deleting.
History that contact timelines and reports read is never deleted behind
their back: an item it needs is refused (or, for a scoring rule, offered
disabling instead).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from automation.removal import (
    Plan,
    count_rows,
    counted,
    segment_leaves,
    segments_whose_leaves,
    the,
    thresholds_with_action,
)
from automation.sequence_defs import SequenceError, read_steps
from tracker.automation_models import (
    ActionRun,
    DecayPolicy,
    PointsEntry,
    ScoringRule,
    Segment,
    SegmentChange,
    SegmentMember,
    Threshold,
    ThresholdState,
    Webhook,
)
from tracker.email_models import Broadcast, EmailTemplate, Message, Sequence, TemplateVersion
from tracker.sales_models import Campaign

RELOADED = "a rules file that still holds it brings it back when loaded"
"""Said of every rules-file item: `automation load` creates what it names."""


def _names(conn: Connection, column: Any, *where: Any) -> list[str]:
    return list(conn.execute(select(column).where(*where)).scalars())


def plan_segment(conn: Connection, segment_id: int) -> Plan:
    """Refused while a sequence enters from it, a broadcast or threshold names it, or a segment
    uses it (`in_segment`); else its memberships and their join/leave history go with it."""
    name = conn.execute(select(Segment.name).where(Segment.id == segment_id)).scalar_one()
    plan = Plan("segment", name)
    sequences = _names(conn, Sequence.name, Sequence.entry_segment_id == segment_id)
    if sequences:
        plan.blockers.append(
            f"it is the entry segment of {the(sequences, 'sequence')}: give them another "
            "entry segment, or delete them, first"
        )
    broadcasts = _names(conn, Broadcast.name, Broadcast.segment_id == segment_id)
    if broadcasts:
        plan.blockers.append(
            f"it is the target of {the(broadcasts, 'broadcast')} (their reports show it): "
            "point them at another segment in the rules file first"
        )
    thresholds = _names(conn, Threshold.name, Threshold.segment_id == segment_id)
    if thresholds:
        plan.blockers.append(
            f"it limits {the(thresholds, 'threshold')} to its members: take "
            f"'segment: {name}' out of them first"
        )
    users = [
        other
        for other, rules in conn.execute(
            select(Segment.name, Segment.rules).where(Segment.id != segment_id)
        )
        if any(kind == "in_segment" and spec == name for kind, spec in segment_leaves(rules))
    ]
    if users:
        plan.blockers.append(
            f"it is used in the rules of {the(users, 'segment')} (in_segment: {name}): "
            "edit their rules first"
        )
    members = count_rows(conn, SegmentMember, SegmentMember.segment_id == segment_id)
    changes = count_rows(conn, SegmentChange, SegmentChange.segment_id == segment_id)
    plan.consequences += [
        f"its memberships ({members}) go with it; the contacts stay",
        f"the join and leave entries it left in contact timelines ({changes}) go too",
        RELOADED,
    ]
    plan.statements += [
        delete(SegmentMember).where(SegmentMember.segment_id == segment_id),
        delete(SegmentChange).where(SegmentChange.segment_id == segment_id),
        delete(Segment).where(Segment.id == segment_id),
    ]
    return plan


def plan_rule(conn: Connection, rule_id: int) -> Plan:
    """Refused once the rule awarded points: the timelines and the sales "why" list name the
    rule behind each award, so it is disabled instead; an unused rule is deleted."""
    name, enabled = conn.execute(
        select(ScoringRule.name, ScoringRule.enabled).where(ScoringRule.id == rule_id)
    ).one()
    plan = Plan("scoring rule", name, alternative="disable" if enabled else None)
    awards, contacts = conn.execute(
        select(func.count(), func.count(PointsEntry.contact_id.distinct())).where(
            PointsEntry.rule_id == rule_id
        )
    ).one()
    if awards:
        plan.blockers.append(
            f"it awarded points ({counted(awards, 'time')}, to {counted(contacts, 'contact')}), "
            "and contact timelines and the leads' reasons name it: "
            + ("disable it instead (it awards nothing more)" if enabled else "it is disabled")
            + ", and its history keeps its name"
        )
    plan.consequences += ["scores stay as they are", RELOADED]
    plan.statements.append(delete(ScoringRule).where(ScoringRule.id == rule_id))
    return plan


def plan_threshold(conn: Connection, threshold_id: int) -> Plan:
    """Deleted with where each contact stands against it and the record of its actions; what
    those actions did (stages and their causes, tags, owners, enrolments) stays."""
    name = conn.execute(select(Threshold.name).where(Threshold.id == threshold_id)).scalar_one()
    plan = Plan("threshold", name)
    states = count_rows(conn, ThresholdState, ThresholdState.threshold_id == threshold_id)
    runs = dict(
        conn.execute(
            select(ActionRun.status, func.count())
            .where(ActionRun.threshold_id == threshold_id)
            .group_by(ActionRun.status)
        ).all()
    )
    waiting = runs.get("queued", 0) + runs.get("running", 0)
    plan.consequences.append(
        f"where each contact stands against it ({states}) is forgotten: made again, it "
        "fires afresh for contacts above it"
    )
    if sum(runs.values()) - waiting:
        plan.consequences.append(
            f"the record of the {counted(sum(runs.values()) - waiting, 'action')} it ran goes; "
            "what they did stays (stage changes still name it as their cause)"
        )
    if waiting:
        plan.consequences.append(f"its queued actions ({waiting}) will not run")
    plan.consequences.append(RELOADED)
    plan.statements += [
        delete(ActionRun).where(ActionRun.threshold_id == threshold_id),
        delete(ThresholdState).where(ThresholdState.threshold_id == threshold_id),
        delete(Threshold).where(Threshold.id == threshold_id),
    ]
    return plan


def plan_decay(conn: Connection, policy_id: int) -> Plan:
    """Deleted; the points it already expired or reduced stay so (nothing refers to a policy)."""
    name = conn.execute(select(DecayPolicy.name).where(DecayPolicy.id == policy_id)).scalar_one()
    plan = Plan("decay policy", name)
    plan.consequences += [
        "points it already expired or reduced stay so; nothing fades by it any more",
        RELOADED,
    ]
    plan.statements.append(delete(DecayPolicy).where(DecayPolicy.id == policy_id))
    return plan


def plan_webhook(conn: Connection, webhook_id: int) -> Plan:
    """Refused while a threshold's action calls it (by name); else deleted."""
    name = conn.execute(select(Webhook.name).where(Webhook.id == webhook_id)).scalar_one()
    plan = Plan("webhook", name)
    thresholds = thresholds_with_action(conn, "webhook", "webhook", name)
    if thresholds:
        plan.blockers.append(
            f"it is called by {the(thresholds, 'threshold')}: take the 'webhook: {name}' "
            "action out of them first"
        )
    plan.consequences.append(RELOADED)
    plan.statements.append(delete(Webhook).where(Webhook.id == webhook_id))
    return plan


def _templates_sent(steps: Any) -> set[str]:
    """The templates a sequence's stored steps send."""
    try:
        return {step.template for step in read_steps(steps)[1] if step.template}
    except SequenceError:  # not expected of stored steps; read the sends as they are
        return {
            step["send"].strip()
            for step in steps or ()
            if isinstance(step, Mapping) and isinstance(step.get("send"), str)
        }


def plan_template(conn: Connection, template_id: int) -> Plan:
    """Refused once it sent mail other than tests, or while a sequence, broadcast or segment
    names it; else deleted with its test sends and versions and taken out of the campaigns
    that list it."""
    name = conn.execute(
        select(EmailTemplate.name).where(EmailTemplate.id == template_id)
    ).scalar_one()
    plan = Plan("email template", name)
    sent = dict(
        conn.execute(
            select(Message.kind, func.count())
            .where(Message.template_id == template_id)
            .group_by(Message.kind)
        ).all()
    )
    # Test sends are the marketer's own tries: they go with the template, and stop nothing.
    tests = sent.pop("test", 0)
    if sent:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(sent.items()))
        plan.blockers.append(
            f"it was used for {counted(sum(sent.values()), 'message')} ({kinds}), which the "
            "email report and contact timelines show by it: it stays; to retire it, take it "
            "out of sequences and broadcasts"
        )
    sequences = [
        sequence
        for sequence, steps in conn.execute(select(Sequence.name, Sequence.steps))
        if name in _templates_sent(steps)
    ]
    if sequences:
        plan.blockers.append(
            f"it is sent by {the(sequences, 'sequence')}: change those steps, or delete the "
            "sequences, first"
        )
    broadcasts = _names(conn, Broadcast.name, Broadcast.template_id == template_id)
    if broadcasts:
        plan.blockers.append(
            f"it is sent by {the(broadcasts, 'broadcast')}: give them another template in "
            "the rules file first"
        )
    segments = segments_whose_leaves(
        conn.execute(select(Segment.name, Segment.rules)), "email", "template", template_id
    )
    if segments:
        plan.blockers.append(
            f"its opens or clicks are looked at by {the(segments, 'segment')} (email: "
            f"template {template_id}): edit their rules first"
        )
    if tests:
        plan.consequences.append(f"its test sends ({counted(tests, 'message')}) go with it")
    versions = count_rows(conn, TemplateVersion, TemplateVersion.template_id == template_id)
    plan.consequences.append(f"its versions ({versions}) go with it")
    campaigns = [
        (campaign_id, campaign, ids)
        for campaign_id, campaign, ids in conn.execute(
            select(Campaign.id, Campaign.name, Campaign.template_ids)
        )
        if template_id in (ids or ())
    ]
    if campaigns:
        plan.consequences.append(
            f"it is taken out of the emails of {the([c for _, c, _ in campaigns], 'campaign')}"
        )
    plan.consequences.append(RELOADED)
    plan.statements += [
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(template_ids=[i for i in ids if i != template_id])
        for campaign_id, _, ids in campaigns
    ]
    plan.statements += [
        delete(Message).where(Message.template_id == template_id, Message.kind == "test"),
        delete(TemplateVersion).where(TemplateVersion.template_id == template_id),
        delete(EmailTemplate).where(EmailTemplate.id == template_id),
    ]
    return plan
