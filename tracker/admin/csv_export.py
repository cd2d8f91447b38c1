"""Admin tables as CSV downloads: `?format=csv` on a list's own URL, streamed in chunks.

The cells are written by `automation.report_tables.csv_lines`, as the reports'
CSVs are: raw numbers, text guarded against formula injection, no BOM. Lists
are read in keyset chunks so a long one never sits in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from flask import Response, request, stream_with_context
from sqlalchemy import Select, literal, tuple_

from tracker.db import db
from tracker.models import as_utc, utcnow
from tracker.paging import SortKey

CHUNK_ROWS = 1000
"""Rows one database query of an export reads; the response is written chunk by chunk."""

FLUSH_CHARS = 64 * 1024
"""Characters of CSV gathered before they are handed to the server as one piece."""


def wants_csv() -> bool:
    """Whether the request asks for the table as CSV (`?format=csv`)."""
    return request.args.get("format") == "csv"


def today() -> str:
    """Today's date (UTC) for a download's name."""
    return utcnow().date().isoformat()


_AS_IS = (str, int, Decimal, Fraction)
"""Cell types `csv_lines` writes as they are (checked first: an export has millions of cells)."""


def cell(value: Any) -> Any:
    """A value as a CSV cell: times in UTC as `YYYY-MM-DD HH:MM:SS`, dates ISO, numbers raw.

    Floats become fractions so that `machine` rounds them like the reports' ratios.
    """
    if value is None or type(value) in _AS_IS:
        return value
    if isinstance(value, datetime):
        return as_utc(value).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return Fraction(value)
    return value


def _pieces(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The CSV document in pieces of about FLUSH_CHARS (one write per line is slow)."""
    from automation.report_tables import csv_lines

    buffered: list[str] = []
    size = 0
    for line in csv_lines(header, ([cell(v) for v in row] for row in rows)):
        buffered.append(line)
        size += len(line)
        if size >= FLUSH_CHARS:
            yield "".join(buffered)
            buffered, size = [], 0
    if buffered:
        yield "".join(buffered)


def csv_response(name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    """A streamed CSV download called `name`.csv; `rows` may be a generator reading the
    database (it runs inside the request's context while the response is sent)."""
    return Response(
        stream_with_context(_pieces(header, rows)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


def keyset_chunks(
    query: Select[Any],
    keys: Sequence[SortKey],
    descending: bool = False,
    size: int | None = None,
) -> Iterator[list[tuple[Any, ...]]]:
    """All of `query`'s rows in the order of `keys`, `size` at a time.

    As `tracker.paging.keyset_page`: `query` has no ORDER BY and no LIMIT, the
    last key makes the order total, and all keys sort one way. Each chunk starts
    after the last row of the one before, so no query reads past what it returns.
    `size` defaults to CHUNK_ROWS.
    """
    size = size or CHUNK_ROWS
    width = len(keys)
    columns = [key.expression for key in keys]
    order = [c.desc() if descending else c.asc() for c in columns]
    keyed = query.add_columns(*(c.label(f"export_key_{i}") for i, c in enumerate(columns)))
    last: tuple[Any, ...] | None = None
    while True:
        chunk = keyed
        if last is not None:
            # Bound as the keys' types, as paging does (how SQLite stores times, say).
            bound = tuple_(
                *(literal(v, k.expression.type) for v, k in zip(last, keys, strict=True))
            )
            position = tuple_(*columns)
            chunk = keyed.where(position < bound if descending else position > bound)
        found = db.session.execute(chunk.order_by(*order).limit(size)).all()
        if not found:
            return
        yield [tuple(row[:-width]) for row in found]
        if len(found) < size:
            return
        last = tuple(found[-1][-width:])


def keyset_rows(
    query: Select[Any], keys: Sequence[SortKey], descending: bool = False
) -> Iterator[tuple[Any, ...]]:
    """All of `query`'s rows in the order of `keys`, read in chunks (see `keyset_chunks`)."""
    for chunk in keyset_chunks(query, keys, descending):
        yield from chunk
