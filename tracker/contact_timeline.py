"""A contact's 360° timeline: everything that happened to it, newest first, as plain data.

Each source table (events, messages, points, stage changes, enrolments,
segment changes, notes, opportunities, sales actions) is read newest first,
at most `limit + 1` rows before the cursor, and `merge` cuts the union to one
page. The template only renders what is here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, select

from tracker.automation_models import PointsEntry, ScoringRule, Segment, SegmentChange, StageChange
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, EnrolmentLog, Message, Sequence
from tracker.models import Event, User, as_utc
from tracker.sales_models import ContactNote, LeadAction, Opportunity

PAGE = 500
"""Timeline entries one page shows; older ones are behind a "show more" link."""

WEB_KINDS = {
    "pageview": "Page view",
    "search": "Search",
    "download": "Download",
    "outbound": "Outbound click",
    "custom": "Event",
    "identify": "Identified",
}
"""Web event types the timeline shows (engagement pings would drown the rest)."""

ENROLMENT_ACTIONS = ("entered", "exited", "completed")
"""Enrolment log lines worth a timeline entry (sends show as emails already)."""

LEAD_ACTIONS = {
    "accept": "Accepted by sales",
    "not_ready": "Not ready: back to nurture",
    "disqualify": "Disqualified",
    "convert": "Converted to an opportunity",
}


@dataclass(frozen=True)
class Entry:
    """One line of the timeline.

    `kind` groups entries for styling and tests (web, email, score, stage,
    enrolment, segment, note, opportunity, sales); `machine` marks a bot's page
    view or a machine's email open or click, with `bot_reason` saying why.
    """

    at: datetime
    kind: str
    title: str
    detail: str | None = None
    url: str | None = None
    machine: bool = False
    bot_reason: str | None = None
    who: str | None = None
    # Breaks ties between entries of one instant: stable order across pages.
    order: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Timeline:
    """One page of entries, newest first, and the cursor for the next (older) page."""

    entries: list[Entry]
    older: datetime | None


def merge(sources: Iterable[Iterable[Entry]], limit: int) -> Timeline:
    """Merge per-source entries (each newest first) into one page of at most `limit`.

    The next page starts strictly before the page's last instant, so when the
    cut falls inside a group of entries sharing one instant the whole group
    moves to the next page (unless it alone fills a page).
    """
    entries = sorted(
        (entry for source in sources for entry in source),
        key=lambda e: (e.at, e.order),
        reverse=True,
    )
    if len(entries) <= limit:
        return Timeline(entries, None)
    page = entries[:limit]
    boundary = entries[limit].at
    if page[-1].at == boundary:
        trimmed = [entry for entry in page if entry.at != boundary]
        page = trimmed or page
    return Timeline(page, page[-1].at)


def _money(amount: Decimal | None) -> str:
    return f"{amount:,.2f}" if amount is not None else "—"


def _web(event: Event) -> Entry:
    label = WEB_KINDS.get(event.type, event.type)
    if event.type == "pageview":
        title, detail, url = f"{label}: {event.title or event.path or event.url}", None, event.url
    elif event.type == "search":
        title, detail, url = f"{label}: {event.query or ''}", None, event.url
    elif event.type in ("download", "outbound"):
        title, detail, url = f"{label}: {event.target or event.url}", None, event.target
    elif event.type == "identify":
        traits = ", ".join(f"{k}={v}" for k, v in sorted((event.props or {}).items()))
        title, detail, url = f"{label} as {event.email or '—'}", traits or None, event.url
    else:
        props = ", ".join(f"{k}={v}" for k, v in sorted((event.props or {}).items()))
        title, detail, url = f"{label}: {event.name or event.type}", props or None, event.url
    utm = ", ".join(
        f"{name}={value}"
        for name in ("utm_source", "utm_medium", "utm_campaign")
        if (value := getattr(event, name))
    )
    if utm:
        detail = f"{detail}; {utm}" if detail else utm
    return Entry(
        as_utc(event.occurred_at),
        "web",
        title,
        detail,
        url,
        event.is_bot,
        event.bot_reason,
        order=(1, event.id),
    )


def _email_event(event: Event, templates: dict[int, str]) -> Entry:
    props = event.props or {}
    template = templates.get(props.get("template_id") or 0, "a deleted template")
    variant = props.get("variant")
    what = "Email opened" if event.type == "email_open" else "Email link clicked"
    title = f"{what}: {template}" + (f" ({variant})" if variant else "")
    return Entry(
        as_utc(event.occurred_at),
        "email",
        title,
        "by a machine (not counted as a person's)" if event.is_bot else "by a person",
        event.target if event.type == "email_click" else None,
        event.is_bot,
        event.bot_reason,
        order=(1, event.id),
    )


def _before(query: Select[Any], column: Any, before: datetime | None, limit: int) -> Select[Any]:
    if before is not None:
        query = query.where(column < before)
    return query.order_by(column.desc()).limit(limit + 1)


def _events(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    query = select(Event).where(
        Event.contact_id == contact_id, Event.type.in_([*WEB_KINDS, "email_open", "email_click"])
    )
    events = db.session.scalars(_before(query, Event.occurred_at, before, limit)).all()
    template_ids = {
        (e.props or {}).get("template_id") for e in events if e.type.startswith("email_")
    }
    templates = _template_names({t for t in template_ids if isinstance(t, int)})
    return [_email_event(e, templates) if e.type.startswith("email_") else _web(e) for e in events]


def _template_names(ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = db.session.execute(
        select(EmailTemplate.id, EmailTemplate.name).where(EmailTemplate.id.in_(ids))
    )
    return {id_: name for id_, name in rows}


def _messages(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    entries = []
    stamps = (
        (Message.sent_at, "Email sent"),
        (Message.bounced_at, "Email bounced"),
        (Message.unsubscribed_at, "Unsubscribed through an email"),
    )
    for column, label in stamps:
        query = (
            select(Message, EmailTemplate.name)
            .join(EmailTemplate, EmailTemplate.id == Message.template_id)
            .where(Message.contact_id == contact_id, column.is_not(None))
        )
        for message, template in db.session.execute(_before(query, column, before, limit)):
            where = f"step {message.step + 1} of a sequence" if message.step is not None else None
            detail = ", ".join(
                part
                for part in (
                    f"template {template}",
                    f"variant {message.variant}",
                    message.kind if where is None else where,
                    message.error if column is Message.bounced_at else None,
                )
                if part
            )
            entries.append(
                Entry(
                    as_utc(getattr(message, column.key)),
                    "email",
                    f"{label}: {message.subject or template}",
                    detail,
                    order=(2, message.id),
                )
            )
    return entries


def _points(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    query = (
        select(PointsEntry, ScoringRule.name)
        .outerjoin(ScoringRule, ScoringRule.id == PointsEntry.rule_id)
        .where(PointsEntry.contact_id == contact_id)
    )
    entries = []
    for points, rule in db.session.execute(_before(query, PointsEntry.created_at, before, limit)):
        cause = (
            f"rule “{rule}”"
            if rule
            else {"decay": "decay", "expired": "points expired"}.get(points.reason, points.reason)
        )
        entries.append(
            Entry(
                as_utc(points.created_at),
                "score",
                f"Score {points.delta:+d} ({points.kind})",
                f"because of {cause}",
                order=(3, points.id),
            )
        )
    return entries


def _stages(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    query = select(StageChange).where(StageChange.contact_id == contact_id)
    return [
        Entry(
            as_utc(change.created_at),
            "stage",
            f"Stage {change.from_stage or '—'} → {change.to_stage}",
            change.cause,
            order=(4, change.id),
        )
        for change in db.session.scalars(_before(query, StageChange.created_at, before, limit))
    ]


def _enrolments(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    query = (
        select(EnrolmentLog, Sequence.name, Enrolment.cause)
        .join(Enrolment, Enrolment.id == EnrolmentLog.enrolment_id)
        .join(Sequence, Sequence.id == Enrolment.sequence_id)
        .where(Enrolment.contact_id == contact_id, EnrolmentLog.action.in_(ENROLMENT_ACTIONS))
    )
    entries = []
    for log, sequence, cause in db.session.execute(
        _before(query, EnrolmentLog.created_at, before, limit)
    ):
        detail = log.detail or (f"cause: {cause}" if log.action == "entered" else None)
        entries.append(
            Entry(
                as_utc(log.created_at),
                "enrolment",
                f"Sequence “{sequence}”: {log.action}",
                detail,
                order=(5, log.id),
            )
        )
    return entries


def _segments(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    query = (
        select(SegmentChange, Segment.name)
        .join(Segment, Segment.id == SegmentChange.segment_id)
        .where(SegmentChange.contact_id == contact_id)
    )
    return [
        Entry(
            as_utc(change.created_at),
            "segment",
            f"{'Joined' if change.change == 'join' else 'Left'} segment “{name}”",
            order=(6, change.id),
        )
        for change, name in db.session.execute(
            _before(query, SegmentChange.created_at, before, limit)
        )
    ]


def _notes(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    query = (
        select(ContactNote, User.name)
        .outerjoin(User, User.id == ContactNote.author_id)
        .where(ContactNote.contact_id == contact_id)
    )
    return [
        Entry(
            as_utc(note.created_at),
            "note",
            "Note",
            note.body,
            who=author or "a deleted user",
            order=(7, note.id),
        )
        for note, author in db.session.execute(
            _before(query, ContactNote.created_at, before, limit)
        )
    ]


def _opportunities(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    entries = []
    for column in (Opportunity.created_at, Opportunity.closed_at):
        query = (
            select(Opportunity, User.name)
            .outerjoin(User, User.id == Opportunity.owner_id)
            .where(Opportunity.contact_id == contact_id, column.is_not(None))
        )
        for deal, owner in db.session.execute(_before(query, column, before, limit)):
            opened = column is Opportunity.created_at
            title = (
                f"Opportunity opened: {deal.name}"
                if opened
                else f"Opportunity {deal.stage}: {deal.name}"
            )
            detail = f"amount {_money(deal.amount)}" + (
                f", expected close {deal.expected_close.isoformat()}"
                if opened and deal.expected_close
                else ""
            )
            entries.append(
                Entry(
                    as_utc(getattr(deal, column.key)),
                    "opportunity",
                    title,
                    detail,
                    who=owner,
                    order=(8, deal.id * 2 + (0 if opened else 1)),
                )
            )
    return entries


def _lead_actions(contact_id: int, before: datetime | None, limit: int) -> list[Entry]:
    query = (
        select(LeadAction, User.name)
        .outerjoin(User, User.id == LeadAction.user_id)
        .where(LeadAction.contact_id == contact_id)
    )
    return [
        Entry(
            as_utc(action.created_at),
            "sales",
            LEAD_ACTIONS.get(action.action, action.action),
            action.reason,
            who=user,
            order=(9, action.id),
        )
        for action, user in db.session.execute(_before(query, LeadAction.created_at, before, limit))
    ]


SOURCES = (
    _events,
    _messages,
    _points,
    _stages,
    _enrolments,
    _segments,
    _notes,
    _opportunities,
    _lead_actions,
)


def contact_timeline(
    contact_id: int, before: datetime | None = None, limit: int = PAGE
) -> Timeline:
    """The contact's timeline: up to `limit` entries older than `before`, newest first."""
    return merge((source(contact_id, before, limit) for source in SOURCES), limit)
