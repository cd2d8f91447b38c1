"""Insert or update many rows in one statement, the fastest way each database offers.

PostgreSQL gets one `INSERT … SELECT … FROM jsonb_to_recordset(:rows)`: a short,
constant SQL text and a single parameter, the rows as one JSON document, whatever
the row count. (Long multi-row VALUES lists cost more to build and parse than to
insert, and array parameters are escaped element by element in Python.)
SQLite gets multi-row VALUES statements, one SQL text per chunk size (cached),
sent straight to the driver with the values converted by SQLAlchemy's own bind
processors: the same rows SQLAlchemy would write, without its per-row overhead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Connection, Table, case, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError


def _dumps(rows: Sequence[dict[str, Any]]) -> str:
    # orjson writes datetimes as RFC 3339 and UUIDs as text: literals PostgreSQL reads
    # back exactly. Anything else falls back to its str().
    return orjson.dumps(rows, default=str).decode()


@lru_cache(maxsize=64)
def _recordset(table: Table, columns: tuple[str, ...], dialect: Any) -> str:
    types = ", ".join(f'"{c}" {table.c[c].type.compile(dialect=dialect)}' for c in columns)
    return f"jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({types})"


def dialect_insert(conn: Connection, table: Table) -> Any:
    """`INSERT` in the connection's dialect, which offers `on_conflict_do_…`."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def insert_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str],
    update: dict[str, str] | None = None,
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert `rows` (all with the same keys); on a `conflict` key do nothing, or `update`.

    `update` maps a column to "new" (take the inserted value), "max" (keep the
    larger) or "add" (add the inserted value to the stored one). No `conflict`
    columns: plain inserts. Returns the `returning` columns of the rows inserted
    or updated.
    """
    if not rows:
        return []
    columns = tuple(rows[0])
    if conn.dialect.name == "postgresql":
        return _insert_postgresql(conn, table, rows, columns, conflict, update, returning)
    if not update:
        return _insert_sqlite(conn, table, rows, columns, conflict, returning)
    stmt = sqlite.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(conflict),
        set_={c: _sqlite_value(stmt, table, c, how) for c, how in update.items()},
    )
    if returning:
        return conn.execute(stmt.returning(*(table.c[c] for c in returning)), list(rows)).all()
    conn.execute(stmt, list(rows))
    return []


SQLITE_MAX_VARIABLES = 32766
"""SQLite's limit on bound parameters per statement (3.32 and later)."""


@lru_cache(maxsize=64)
def _processors(table: Table, columns: tuple[str, ...], dialect: Any) -> tuple[Any, ...]:
    return tuple(table.c[c].type.bind_processor(dialect) for c in columns)


@lru_cache(maxsize=64)
def _dialect_processors(table: Table, columns: tuple[str, ...], dialect: Any) -> tuple[Any, ...]:
    # The dialect's own types: values written exactly as SQLAlchemy's executemany would.
    return tuple(table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns)


@lru_cache(maxsize=256)
def _values_sql(table: Table, columns: tuple[str, ...], count: int, tail: str) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    group = "(" + ", ".join("?" * len(columns)) + ")"
    return f'INSERT INTO "{table.name}" ({names}) VALUES {", ".join([group] * count)} {tail}'


def _insert_sqlite(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    columns: tuple[str, ...],
    conflict: Sequence[str],
    returning: Sequence[str],
) -> list[Any]:
    tail = "ON CONFLICT ({}) DO NOTHING".format(", ".join(f'"{c}"' for c in conflict))
    if not conflict:
        tail = ""
    if returning:
        tail += " RETURNING " + ", ".join(f'"{c}"' for c in returning)
    width = len(columns)
    values: list[Any] = [row[column] for row in rows for column in columns]
    for offset, process in enumerate(_processors(table, columns, conn.dialect)):
        if process is not None:
            for i in range(offset, len(values), width):
                if values[i] is not None:
                    values[i] = process(values[i])
    per_statement = max(1, SQLITE_MAX_VARIABLES // width)
    cursor = conn.connection.driver_connection.cursor()
    found: list[Any] = []
    try:
        for start in range(0, len(rows), per_statement):
            count = min(per_statement, len(rows) - start)
            chunk = values[start * width : (start + count) * width]
            sql = _values_sql(table, columns, count, tail)
            try:
                cursor.execute(sql, chunk)
            except conn.dialect.loaded_dbapi.Error as e:
                # Raise what SQLAlchemy would: IntegrityError, OperationalError, …
                raise DBAPIError.instance(sql, None, e, conn.dialect.loaded_dbapi.Error) from e
            found.extend(cursor.fetchall())
    finally:
        cursor.close()
    return found


def _sqlite_value(stmt: Any, table: Table, column: str, how: str) -> Any:
    new, old = stmt.excluded[column], table.c[column]
    if how == "max":  # like PostgreSQL's GREATEST: NULL loses
        return case((old.is_(None), new), (new > old, new), else_=old)
    if how == "new":
        return new
    if how == "add":
        return old + new
    raise ValueError(f"unknown update rule {how!r} for {column}")


def _insert_postgresql(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    columns: tuple[str, ...],
    conflict: Sequence[str],
    update: dict[str, str] | None,
    returning: Sequence[str],
) -> list[Row[Any]]:
    names = ", ".join(f'"{c}"' for c in columns)
    target = ", ".join(f'"{c}"' for c in conflict)
    if update:
        sets = ", ".join(_postgresql_set(table, c, how) for c, how in update.items())
        tail = f"ON CONFLICT ({target}) DO UPDATE SET {sets}"
    elif conflict:
        tail = f"ON CONFLICT ({target}) DO NOTHING"
    else:
        tail = ""
    if returning:
        tail += " RETURNING " + ", ".join(f'"{c}"' for c in returning)
    source = _recordset(table, columns, conn.dialect)
    sql = f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM {source} {tail}'
    result = conn.execute(text(sql), {"rows": _dumps(rows)})
    return result.all() if returning else []


def _postgresql_set(table: Table, column: str, how: str) -> str:
    stored = f'"{table.name}"."{column}"'
    if how == "max":
        return f'"{column}" = GREATEST({stored}, EXCLUDED."{column}")'
    if how == "add":
        return f'"{column}" = {stored} + EXCLUDED."{column}"'
    if how == "new":
        return f'"{column}" = EXCLUDED."{column}"'
    raise ValueError(f"unknown update rule {how!r} for {column}")


def update_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: str,
) -> None:
    """Set each row's other columns on the table rows whose `key` column equals the row's."""
    if not rows:
        return
    columns = tuple(rows[0])
    if conn.dialect.name == "postgresql":
        sets = ", ".join(f'"{c}" = r."{c}"' for c in columns if c != key)
        source = _recordset(table, columns, conn.dialect)
        sql = f'UPDATE "{table.name}" AS t SET {sets} FROM {source} WHERE t."{key}" = r."{key}"'
        conn.execute(text(sql), {"rows": _dumps(rows)})
        return
    # Straight to the driver, values converted by SQLAlchemy's own bind processors:
    # its executemany builds parameters row by row, which costs more than the update.
    sets = [c for c in columns if c != key]
    sql = (
        f'UPDATE "{table.name}" SET '
        + ", ".join(f'"{c}" = ?' for c in sets)
        + f' WHERE "{key}" = ?'
    )
    order = (*sets, key)
    processors = _dialect_processors(table, order, conn.dialect)
    params = [
        tuple(
            process(row[c]) if process is not None and row[c] is not None else row[c]
            for c, process in zip(order, processors, strict=True)
        )
        for row in rows
    ]
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.executemany(sql, params)
    except conn.dialect.loaded_dbapi.Error as e:
        raise DBAPIError.instance(sql, None, e, conn.dialect.loaded_dbapi.Error) from e
    finally:
        cursor.close()


@contextmanager
def planned_each_time(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, plan every statement of the block with its own parameters.

    psycopg prepares a statement after a few runs, and PostgreSQL may then keep a
    generic plan made when a table was small: ingestion's first batches on a new
    installation would freeze "scan the visitors table" for the visitor lookup,
    which then compares every row with every key of each batch as the table grows
    (117 ms a batch at 6,000 visitors, against 6 ms planned each time). A batch
    statement handles a thousand rows: planning it each time costs nothing that
    shows.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    driver = conn.connection.dbapi_connection
    threshold = driver.prepare_threshold
    driver.prepare_threshold = None
    try:
        yield
    finally:
        driver.prepare_threshold = threshold
