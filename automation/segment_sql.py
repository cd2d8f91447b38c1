"""Compile a checked segment rule tree to one SQL condition over contacts.

Pure: a tree, the time and the ids of other segments in, a SQLAlchemy Core
expression out; the job layer runs it. Marketer text reaches the SQL only as
bound parameters, and globs and substrings become LIKE patterns whose own
wildcards are escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, and_, case, func, not_, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from automation.segment_rules import (
    EMAIL_EVENTS,
    ESCAPE,
    NUMBER_FIELDS,
    SCORE_COLUMNS,
    TEXT_FIELDS,
    UTM_KEYS,
    _fail,
    _Node,
    _parse,
)
from tracker.automation_models import ContactTag, SegmentMember
from tracker.models import Contact, Event, Visitor

contacts = Contact.__table__
events = Event.__table__
visitors = Visitor.__table__
contact_tags = ContactTag.__table__
segment_members = SegmentMember.__table__


class _position(FunctionElement[int]):
    """Where `needle` first starts in `text`, from 1; 0 when absent."""

    type = Integer()
    inherit_cache = True


@compiles(_position)
def _position_default(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


@compiles(_position, "sqlite")
def _position_sqlite(element: _position, compiler: SQLCompiler, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


class _json_kind(FunctionElement[str]):
    """The JSON kind under a key: number, string, true, false, null, object, array or missing."""

    type = String()
    inherit_cache = True


@compiles(_json_kind)
def _json_kind_postgresql(element: _json_kind, compiler: SQLCompiler, **kw: Any) -> str:
    (item,) = element.clauses
    column, key = compiler.process(item.left, **kw), compiler.process(item.right, **kw)
    kind = f"jsonb_typeof({column} -> {key})"
    # PostgreSQL says 'boolean'; its text form tells true from false, as SQLite does.
    return (
        f"coalesce(CASE {kind} WHEN 'boolean' THEN {column} ->> {key} ELSE {kind} END, 'missing')"
    )


@compiles(_json_kind, "sqlite")
def _json_kind_sqlite(element: _json_kind, compiler: SQLCompiler, **kw: Any) -> str:
    (item,) = element.clauses
    # The key's own bind processor turns it into the JSON path '$."key"'.
    kind = f"json_type({compiler.process(item.left, **kw)}, {compiler.process(item.right, **kw)})"
    return (
        f"coalesce(CASE {kind} WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' "
        f"WHEN 'text' THEN 'string' ELSE {kind} END, 'missing')"
    )


Narrowing = Callable[[ColumnElement[Any]], ColumnElement[bool]]
"""Column of contact ids → a condition keeping only the contacts being re-evaluated."""


@dataclass(frozen=True)
class _Context:
    now: datetime
    segment_ids: Mapping[str, int]
    narrow: Narrowing | None
    conjunct: bool = True  # reached from the root through `all` only


def _like_escape(text: str) -> str:
    return "".join(ESCAPE + c if c in (ESCAPE, "%", "_") else c for c in text)


def _glob_pattern(glob: str) -> str:
    translated = {"*": "%", "?": "_"}
    return "".join(translated.get(c) or _like_escape(c) for c in glob)


def _ilike(column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
    """Case-insensitive LIKE that behaves the same on SQLite and PostgreSQL."""
    return func.lower(column).like(pattern.lower(), escape=ESCAPE)


def _contacts_with(
    ctx: _Context, contact_id: ColumnElement[Any], *conditions: Any, at_least: int = 1
) -> ColumnElement[bool]:
    """Contacts with at least `at_least` rows meeting `conditions` in `contact_id`'s table.

    As a plain conjunct, `IN (subquery)` becomes a semi-join that PostgreSQL hashes over
    the whole table. Under `any` or `not` it would become a subplan hashed only when it
    fits in work_mem, and rescanned for every contact when it does not; there a
    correlated EXISTS is used instead, which falls back to an index probe per contact.
    """
    where = [contact_id.is_not(None), *conditions]
    if ctx.narrow is not None:
        where.append(ctx.narrow(contact_id))
    if ctx.conjunct:
        query = select(contact_id).where(*where)
    else:
        query = select(contact_id).where(contact_id == contacts.c.id, *where)
    if at_least > 1:
        query = query.group_by(contact_id).having(func.count() >= at_least)
    if ctx.conjunct:
        return contacts.c.id.in_(query)
    return query.correlate(contacts).exists()


def _with_events(
    ctx: _Context, *conditions: Any, at_least: int = 1, within_days: int | None = None
) -> ColumnElement[bool]:
    where = [~events.c.is_bot, *conditions]
    if within_days is not None:
        where.append(events.c.occurred_at >= ctx.now - timedelta(days=within_days))
    return _contacts_with(ctx, events.c.contact_id, *where, at_least=at_least)


def _with_first_touch(ctx: _Context, *conditions: Any) -> ColumnElement[bool]:
    return _contacts_with(ctx, visitors.c.contact_id, ~visitors.c.is_bot, *conditions)


def _compile_visited(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    conditions = [events.c.type == "pageview", _ilike(events.c.path, _glob_pattern(spec["path"]))]
    if "site" in spec:
        conditions.append(events.c.site_id == spec["site"])
    return _with_events(
        ctx, *conditions, at_least=spec.get("at_least", 1), within_days=spec.get("within_days")
    )


def _compile_searched(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    pattern = f"%{_like_escape(spec['contains'])}%"
    return _with_events(
        ctx,
        events.c.type == "search",
        _ilike(events.c.query, pattern),
        within_days=spec.get("within_days"),
    )


def _compile_utm(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    table = visitors if spec.get("touch") == "first" else events
    conditions = [
        func.lower(table.c[f"utm_{key}"]) == spec[key].lower() for key in UTM_KEYS if key in spec
    ]
    if table is visitors:
        return _with_first_touch(ctx, *conditions)
    return _with_events(ctx, *conditions)


def _referrer_host(referrer: ColumnElement[Any]) -> tuple[ColumnElement[bool], ColumnElement[str]]:
    """Whether the URL has a scheme, and its host: after '://', up to '/', ':', '?' or '#'."""
    url = func.lower(referrer, type_=String)
    scheme_end = _position(url, "://")
    rest = func.substr(url, scheme_end + 3, type_=String)
    cut = rest
    for mark in ":?#":
        cut = func.replace(cut, mark, "/", type_=String)
    host = func.substr(rest, 1, _position(cut.concat("/"), "/") - 1, type_=String)
    return scheme_end > 0, host


def _compile_referrer_domain(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    domain = spec["is"]
    table = visitors if spec.get("touch") == "first" else events
    has_scheme, host = _referrer_host(table.c.referrer)
    conditions = [
        # A plain LIKE first, cheap, so the host is only cut out of likely referrers.
        _ilike(table.c.referrer, f"%{_like_escape(domain)}%"),
        has_scheme,
        or_(host == domain, host.like(f"%.{_like_escape(domain)}", escape=ESCAPE)),
    ]
    if table is visitors:
        return _with_first_touch(ctx, *conditions)
    return _with_events(ctx, *conditions)


def _trait_condition(name: str, operator: str, value: Any) -> ColumnElement[bool]:
    item = contacts.c.traits[name]
    kind = _json_kind(item)
    text = func.lower(item.as_string(), type_=String)
    number = case((kind == "number", item.as_float()))
    if operator == "exists":
        present = or_(
            kind.in_(["number", "true", "false", "object", "array"]),
            and_(kind == "string", item.as_string() != ""),
        )
        return present if value else not_(present)
    if operator == "equals" and isinstance(value, bool):
        return kind == ("true" if value else "false")
    if operator in ("equals", "in"):
        values = value if operator == "in" else [value]
        texts = [v.lower() for v in values if isinstance(v, str)]
        numbers = [v for v in values if not isinstance(v, str)]
        matches = []
        if texts:
            matches.append(and_(kind == "string", text.in_(texts)))
        if numbers:
            matches.append(and_(kind == "number", number.in_(numbers)))
        return or_(*matches)
    if operator == "contains":
        return and_(kind == "string", _ilike(item.as_string(), f"%{_like_escape(value)}%"))
    compare = number >= value if operator == "gte" else number <= value
    return and_(kind == "number", compare)


def _compile_field(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    name, operator, value = spec["name"], spec["operator"], spec["value"]
    if name not in TEXT_FIELDS and name not in NUMBER_FIELDS:
        return _trait_condition(name, operator, value)
    column = contacts.c[name]
    if name in NUMBER_FIELDS:
        return {
            "equals": lambda: column == value,
            "in": lambda: column.in_(value),
            "gte": lambda: column >= value,
            "lte": lambda: column <= value,
            "exists": lambda: column.is_not(None) if value else column.is_(None),
        }[operator]()
    # Every text comparison starts with IS NOT NULL so that a missing value gives false,
    # never NULL: `not` must include the contacts whose field is empty.
    present = column.is_not(None)
    if operator == "exists":
        filled = and_(present, column != "")
        return filled if value else not_(filled)
    if operator == "contains":
        return and_(present, _ilike(column, f"%{_like_escape(value)}%"))
    values = [v.lower() for v in (value if operator == "in" else [value])]
    return and_(present, func.lower(column).in_(values))


def _compile_tag(tag: str, ctx: _Context) -> ColumnElement[bool]:
    return _contacts_with(ctx, contact_tags.c.contact_id, contact_tags.c.tag == tag)


def _compile_score(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    column = contacts.c[SCORE_COLUMNS[spec["kind"]]]
    bounds = []
    if "gte" in spec:
        bounds.append(column >= spec["gte"])
    if "lte" in spec:
        bounds.append(column <= spec["lte"])
    return and_(*bounds)


def _compile_stage(stages: list[str], ctx: _Context) -> ColumnElement[bool]:
    return contacts.c.stage.in_(stages)


def _compile_email(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    conditions = [events.c.type == EMAIL_EVENTS[spec["action"]]]
    if "template" in spec:
        template = events.c.props["template_id"]
        is_number = _json_kind(template) == "number"
        conditions += [is_number, case((is_number, template.as_float())) == spec["template"]]
    return _with_events(ctx, *conditions, within_days=spec.get("within_days"))


def _compile_event(spec: dict, ctx: _Context) -> ColumnElement[bool]:
    return _with_events(
        ctx,
        events.c.type == "custom",
        events.c.name == spec["name"],
        at_least=spec.get("at_least", 1),
        within_days=spec.get("within_days"),
    )


def _compile_in_segment(name: str, ctx: _Context, path: str) -> ColumnElement[bool]:
    if name not in ctx.segment_ids:
        raise _fail(path, f"no segment named {name!r}; create it first or fix the name")
    segment_id = segment_members.c.segment_id == ctx.segment_ids[name]
    return _contacts_with(ctx, segment_members.c.contact_id, segment_id)


COMPILERS: dict[str, Callable[[Any, _Context], ColumnElement[bool]]] = {
    "visited": _compile_visited,
    "searched": _compile_searched,
    "utm": _compile_utm,
    "referrer_domain": _compile_referrer_domain,
    "field": _compile_field,
    "tag": _compile_tag,
    "score": _compile_score,
    "stage": _compile_stage,
    "email": _compile_email,
    "event": _compile_event,
}


def _compile(node: _Node, ctx: _Context) -> ColumnElement[bool]:
    if node.kind == "all":
        return and_(*(_compile(child, ctx) for child in node.spec))
    if node.kind == "any":
        nested = replace(ctx, conjunct=False)
        return or_(*(_compile(child, nested) for child in node.spec))
    if node.kind == "not":
        return not_(_compile(node.spec[0], replace(ctx, conjunct=False)))
    if node.kind == "in_segment":
        return _compile_in_segment(node.spec, ctx, node.path)
    return COMPILERS[node.kind](node.spec, ctx)


def compile_condition(
    tree: Any,
    now: datetime,
    segment_ids: Mapping[str, int],
    *,
    contact_ids: Collection[int] | None = None,
    narrow: Narrowing | None = None,
) -> ColumnElement[bool]:
    """The tree as one boolean SQL condition over `contacts`, for `select(...).where(...)`.

    `now` (timezone-aware) anchors every `within_days`; `segment_ids` maps the names
    `in_segment` uses to ids. With `contact_ids`, every subquery is narrowed to those
    contacts too, so re-evaluating a few touched contacts reads only their rows.
    `narrow` does the same with a condition of the caller's (say, `= ANY(:ids)` with
    one array parameter), leaving the outer query's own filter to the caller.
    Every leaf is true or false, never NULL, so `not` includes contacts without data.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    if contact_ids is not None:
        ids = list(contact_ids)
        narrow = lambda column: column.in_(ids)  # noqa: E731
    ctx = _Context(now.astimezone(UTC), segment_ids, narrow)
    condition = _compile(_parse(tree), ctx)
    if contact_ids is not None:
        condition = and_(contacts.c.id.in_(contact_ids), condition)
    return condition
