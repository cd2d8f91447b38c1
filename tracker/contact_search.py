"""Finding contacts: the admin list's filters, checked, the page they make, and the export."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, func, or_, select

from tracker.automation_models import Segment, SegmentMember
from tracker.db import db
from tracker.models import Contact, User, Visitor, as_utc

PER_PAGE = 50
"""Contacts one page of the list shows."""

MAX_QUERY = 200
"""Longest search text."""

MAX_PAGE = 10_000
"""Highest page number accepted (an offset beyond this is a mistake, not a need)."""


@dataclass(frozen=True)
class ContactFilters:
    """What the list is narrowed to; None means "any"."""

    q: str = ""
    stage: str | None = None
    owner: int | None = None
    unowned: bool = False
    segment: int | None = None
    min_score: int | None = None
    max_score: int | None = None
    page: int = 1

    def query_args(self, **changes: Any) -> dict[str, Any]:
        """These filters as URL query arguments (for pagination links), with changes."""
        args: dict[str, Any] = {
            "q": self.q or None,
            "stage": self.stage,
            "owner": "none" if self.unowned else self.owner,
            "segment": self.segment,
            "min_score": self.min_score,
            "max_score": self.max_score,
            "page": self.page if self.page > 1 else None,
        }
        args.update(changes)
        return {k: v for k, v in args.items() if v not in (None, "")}


@dataclass
class ParsedFilters:
    """Filters read from a request, and a message per field that was wrong."""

    filters: ContactFilters
    errors: dict[str, str] = field(default_factory=dict)


def _int(args: Mapping[str, str], name: str, errors: dict[str, str], what: str) -> int | None:
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        errors[name] = f"{what} must be a whole number, not {raw[:40]!r}"
        return None


def parse_filters(args: Mapping[str, str], stages: tuple[str, ...]) -> ParsedFilters:
    """Read and check the list's query arguments; wrong ones are left out and named."""
    errors: dict[str, str] = {}
    q = (args.get("q") or "").strip()
    if len(q) > MAX_QUERY:
        errors["q"] = f"search at most {MAX_QUERY} characters"
        q = ""
    stage = (args.get("stage") or "").strip() or None
    if stage is not None and stage not in stages:
        errors["stage"] = f"unknown stage {stage[:40]!r}; pick one of {', '.join(stages)}"
        stage = None
    raw_owner = (args.get("owner") or "").strip()
    unowned = raw_owner == "none"
    owner = None if unowned else _int(args, "owner", errors, "owner")
    segment = _int(args, "segment", errors, "segment")
    min_score = _int(args, "min_score", errors, "minimum score")
    max_score = _int(args, "max_score", errors, "maximum score")
    if min_score is not None and max_score is not None and min_score > max_score:
        errors["max_score"] = f"the maximum score ({max_score}) is below the minimum ({min_score})"
        max_score = None
    page = _int(args, "page", errors, "page")
    if page is None:
        page = 1
    elif not 1 <= page <= MAX_PAGE:
        errors["page"] = f"page must be between 1 and {MAX_PAGE}"
        page = 1
    filters = ContactFilters(q, stage, owner, unowned, segment, min_score, max_score, page)
    return ParsedFilters(filters, errors)


@dataclass(frozen=True)
class ContactRow:
    """One line of the list."""

    id: int
    email: str
    name: str
    company: str | None
    stage: str
    score: int
    engagement_score: int
    fit_score: int
    owner: str | None
    last_seen: datetime | None


@dataclass(frozen=True)
class ContactPage:
    """One page of matching contacts, and how many match in all."""

    rows: list[ContactRow]
    total: int
    page: int
    has_next: bool


def _matching(filters: ContactFilters) -> Select[Any]:
    return filtered(select(Contact.id), filters)


def filtered(query: Select[Any], filters: ContactFilters) -> Select[Any]:
    """`query` (over Contact) narrowed to the contacts the filters match; the page is ignored."""
    if filters.q:
        # Case-insensitive substring; LIKE's wildcards in the text are taken literally.
        text = filters.q.lower()
        full_name = func.lower(
            func.coalesce(Contact.first_name, "") + " " + func.coalesce(Contact.last_name, "")
        )
        query = query.where(
            or_(
                *(
                    func.lower(column).contains(text, autoescape=True)
                    for column in (Contact.email, Contact.company, Contact.last_name)
                ),
                full_name.contains(text, autoescape=True),
            )
        )
    if filters.stage:
        query = query.where(Contact.stage == filters.stage)
    if filters.unowned:
        query = query.where(Contact.owner_id.is_(None))
    elif filters.owner is not None:
        query = query.where(Contact.owner_id == filters.owner)
    if filters.segment is not None:
        member = select(SegmentMember.contact_id).where(
            SegmentMember.segment_id == filters.segment, SegmentMember.contact_id == Contact.id
        )
        query = query.where(member.exists())
    if filters.min_score is not None:
        query = query.where(Contact.score >= filters.min_score)
    if filters.max_score is not None:
        query = query.where(Contact.score <= filters.max_score)
    return query


def search_contacts(filters: ContactFilters, per_page: int = PER_PAGE) -> ContactPage:
    """The page of contacts the filters match, most recently active first."""
    matching = _matching(filters).subquery()
    total = db.session.scalar(select(func.count()).select_from(matching)) or 0
    seen = (
        select(Visitor.contact_id, func.max(Visitor.last_seen).label("last_seen"))
        .where(Visitor.contact_id.in_(select(matching.c.id)))
        .group_by(Visitor.contact_id)
        .subquery()
    )
    # A contact never seen on a site (imported, email only) counts as active when it changed.
    activity = func.coalesce(seen.c.last_seen, Contact.updated_at)
    rows = db.session.execute(
        select(Contact, User.name, seen.c.last_seen)
        .join(matching, matching.c.id == Contact.id)
        .outerjoin(seen, seen.c.contact_id == Contact.id)
        .outerjoin(User, User.id == Contact.owner_id)
        .order_by(activity.desc(), Contact.id.desc())
        .offset((filters.page - 1) * per_page)
        .limit(per_page + 1)
    ).all()
    return ContactPage(
        [
            ContactRow(
                contact.id,
                contact.email,
                " ".join(p for p in (contact.first_name, contact.last_name) if p),
                contact.company,
                contact.stage,
                contact.score,
                contact.engagement_score,
                contact.fit_score,
                owner,
                as_utc(last_seen) if last_seen else None,
            )
            for contact, owner, last_seen in rows[:per_page]
        ],
        total,
        filters.page,
        len(rows) > per_page,
    )


EXPORT_CHUNK = 1000
"""Contacts one query of a CSV export reads."""


class ContactExport(NamedTuple):
    """One contact as the list's CSV has it (a tuple: an export makes thousands a second)."""

    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    stage: str
    owner: str | None
    engagement_score: int
    fit_score: int
    score: int
    segments: list[str]
    created_at: datetime
    last_seen: datetime | None


def export_contacts(
    filters: ContactFilters, chunk: int | None = None
) -> Iterator[list[ContactExport]]:
    """Every contact the filters match (the page ignored), oldest first, `chunk` at a time
    (EXPORT_CHUNK unless given).

    Each chunk is read after the last id of the one before (keyset), with its
    owners, segments and last visit looked up for its contacts only, so an
    export of any size holds one chunk in memory.
    """
    columns = select(
        Contact.id,
        Contact.email,
        Contact.first_name,
        Contact.last_name,
        Contact.company,
        Contact.stage,
        User.name,
        Contact.engagement_score,
        Contact.fit_score,
        Contact.score,
        Contact.created_at,
    ).outerjoin(User, User.id == Contact.owner_id)
    chunk = chunk or EXPORT_CHUNK
    query = filtered(columns, filters).order_by(Contact.id).limit(chunk)
    last_id: int | None = None
    while True:
        page = query if last_id is None else query.where(Contact.id > last_id)
        rows = db.session.execute(page).all()
        if not rows:
            return
        ids = [row.id for row in rows]
        seen = dict(
            db.session.execute(
                select(Visitor.contact_id, func.max(Visitor.last_seen))
                .where(Visitor.contact_id.in_(ids))
                .group_by(Visitor.contact_id)
            ).all()
        )
        segments: dict[int, list[str]] = {}
        for contact_id, name in db.session.execute(
            select(SegmentMember.contact_id, Segment.name)
            .join(Segment, Segment.id == SegmentMember.segment_id)
            .where(SegmentMember.contact_id.in_(ids))
            .order_by(Segment.name, Segment.id)
        ):
            segments.setdefault(contact_id, []).append(name)
        yield [
            ContactExport(
                row.email,
                row.first_name,
                row.last_name,
                row.company,
                row.stage,
                row.name,
                row.engagement_score,
                row.fit_score,
                row.score,
                segments.get(row.id, []),
                as_utc(row.created_at),
                as_utc(seen[row.id]) if seen.get(row.id) else None,
            )
            for row in rows
        ]
        if len(rows) < chunk:
            return
        last_id = ids[-1]
