"""Keyset paging for admin lists: the rows after (or before) a row's place in the sort order.

A page link carries the sort key of the row it continues from ("after" or
"before"), not an offset, so a queue worked from the top (leads leaving it as
they are decided) neither skips nor repeats rows when the next page is opened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, func, literal, select, tuple_

from tracker.db import db
from tracker.models import as_utc

PER_PAGE = 50
"""Rows one page of a paged admin list shows."""

MAX_CURSOR = 200
"""Longest page cursor accepted from a URL, in characters."""

_BIGGEST = 2**63
"""Ints beyond a 64-bit column are no row's key (and would overflow the database driver)."""

Kind = Literal["int", "time", "date"]


class BadCursor(ValueError):
    """A page link's cursor that is not a key of this list (edited or truncated by hand)."""


@dataclass(frozen=True)
class SortKey:
    """One term of a list's sort order: never NULL, and how its value reads in a URL."""

    expression: ColumnElement[Any]
    kind: Kind


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after (or before) the row whose key is `values`."""

    direction: Literal["after", "before"]
    values: tuple[Any, ...]


def _format(value: Any, kind: Kind) -> str:
    if kind == "time":
        return as_utc(value).isoformat()
    if kind == "date":
        return value.isoformat()
    return str(int(value))


def _parse(text: str, kind: Kind) -> Any:
    if kind == "time":
        moment = datetime.fromisoformat(text)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if kind == "date":
        return date.fromisoformat(text)
    number = int(text)
    if not -_BIGGEST < number < _BIGGEST:
        raise ValueError(f"{number} is out of range")
    return number


def read_cursor(args: Mapping[str, str], kinds: Sequence[Kind], prefix: str = "") -> Cursor | None:
    """The cursor in `{prefix}after` or `{prefix}before`, or None for the first page.

    `kinds` are those of the list's sort keys, in order. Raises BadCursor, naming
    the argument, when the cursor is not a position in such a list.
    """
    found = [(d, args.get(f"{prefix}{d}") or "") for d in ("after", "before")]
    given = [(d, raw) for d, raw in found if raw]
    if not given:
        return None
    if len(given) > 1:
        raise BadCursor(f"give {prefix}after or {prefix}before, not both")
    direction, raw = given[0]
    name = f"{prefix}{direction}"
    parts = raw.split(",")
    if len(raw) > MAX_CURSOR or len(parts) != len(kinds):
        raise BadCursor(f"{name!r} is not a position in this list; start again from the first page")
    try:
        values = tuple(_parse(part, kind) for part, kind in zip(parts, kinds, strict=True))
    except (ValueError, OverflowError) as e:
        raise BadCursor(
            f"{name!r} is not a position in this list ({e}); start again from the first page"
        ) from e
    return Cursor(direction, values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows, how many rows the list has, and where this page sits."""

    rows: list[Any]
    total: int
    first: int
    """Position of the first row in the whole list, from 1 (0 when the page is empty)."""
    previous: str | None
    """Cursor for the page before this one, or None on the first page."""
    next: str | None
    """Cursor for the page after this one, or None on the last page."""
    prefix: str = ""

    @property
    def last(self) -> int:
        """Position of the last row in the whole list."""
        return self.first + len(self.rows) - 1 if self.rows else 0

    def previous_args(self, keep: Mapping[str, Any]) -> dict[str, Any]:
        """URL arguments of the page before: `keep` (the filters) and its cursor."""
        return _link(keep, self.prefix, "before", self.previous)

    def next_args(self, keep: Mapping[str, Any]) -> dict[str, Any]:
        """URL arguments of the page after: `keep` (the filters) and its cursor."""
        return _link(keep, self.prefix, "after", self.next)


def _link(
    keep: Mapping[str, Any], prefix: str, direction: str, cursor: str | None
) -> dict[str, Any]:
    # An empty value stays: it can mean "everyone" where leaving it out means "mine".
    args = {k: v for k, v in keep.items() if v is not None}
    args.pop(f"{prefix}after", None)
    args.pop(f"{prefix}before", None)
    if cursor is not None:
        args[f"{prefix}{direction}"] = cursor
    return args


def _count(query: Select[Any]) -> int:
    return db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0


def _key(keys: Sequence[SortKey]) -> Any:
    return tuple_(*(key.expression for key in keys))


def _bound(keys: Sequence[SortKey], values: Sequence[Any]) -> Any:
    """`values` as a row value, each bound as its key's type (how SQLite stores it, say)."""
    return tuple_(
        *(literal(value, key.expression.type) for value, key in zip(values, keys, strict=True))
    )


def _cursor_text(keys: Sequence[SortKey], values: Sequence[Any]) -> str:
    return ",".join(_format(value, key.kind) for value, key in zip(values, keys, strict=True))


def _comes_before(keys: Sequence[SortKey], values: Sequence[Any], descending: bool) -> Any:
    """Rows that sort before the row whose key is `values`."""
    return _key(keys) > _bound(keys, values) if descending else _key(keys) < _bound(keys, values)


def _comes_after(keys: Sequence[SortKey], values: Sequence[Any], descending: bool) -> Any:
    """Rows that sort after the row whose key is `values`."""
    return _key(keys) < _bound(keys, values) if descending else _key(keys) > _bound(keys, values)


def keyset_page(
    query: Select[Any],
    keys: Sequence[SortKey],
    cursor: Cursor | None,
    per_page: int = PER_PAGE,
    prefix: str = "",
    descending: bool = False,
) -> Page:
    """The page of `query`'s rows that `cursor` points at, in the order of `keys`.

    `query` has no ORDER BY and no LIMIT; the last key must make the order total
    (a primary key). All keys sort one way: ascending, or all `descending`.
    A "before" page that reaches the top is the first page.
    """
    width = len(keys)
    columns = [key.expression for key in keys]
    forwards = [e.desc() if descending else e.asc() for e in columns]
    backwards = [e.asc() if descending else e.desc() for e in columns]
    keyed = query.add_columns(*(e.label(f"page_key_{i}") for i, e in enumerate(columns)))
    if cursor is None:
        found = db.session.execute(keyed.order_by(*forwards).limit(per_page)).all()
    elif cursor.direction == "after":
        after = keyed.where(_comes_after(keys, cursor.values, descending))
        found = db.session.execute(after.order_by(*forwards).limit(per_page)).all()
    else:
        before = keyed.where(_comes_before(keys, cursor.values, descending))
        found = db.session.execute(before.order_by(*backwards).limit(per_page)).all()
        found.reverse()
    total = _count(query)
    above = 0
    if found:
        above = _count(query.where(_comes_before(keys, tuple(found[0][-width:]), descending)))
    if cursor is not None and cursor.direction == "before" and above == 0:
        # Back at the top: a full first page rather than the few rows left above the cursor.
        return keyset_page(query, keys, None, per_page, prefix, descending)
    previous = following = None
    if found:
        if above:
            previous = _cursor_text(keys, found[0][-width:])
        if above + len(found) < total:
            following = _cursor_text(keys, found[-1][-width:])
    elif cursor is not None and total:
        # Every row after the cursor went meanwhile (decided, say): offer the way back.
        previous = _cursor_text(keys, cursor.values)
    return Page(
        [tuple(row[:-width]) for row in found],
        total,
        above + 1 if found else 0,
        previous,
        following,
        prefix,
    )
