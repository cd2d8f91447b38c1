"""The unbound extensions: the database handle and migrations."""

from __future__ import annotations

import sqlite3

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Connection, MetaData, event
from sqlalchemy.engine import Engine

# Named constraints keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING))
migrate = Migrate()


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Make SQLite behave like a server database: enforced foreign keys, WAL, waiting on locks."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")  # the web and workers read while one writes
    # FULL: a commit survives power loss, since ingestion acks the stream after it.
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA busy_timeout = 10000")
    cursor.close()


def take_write_lock(conn: Connection) -> None:
    """On SQLite, take the database's write lock now, before the transaction reads anything.

    pysqlite opens a transaction only at the first INSERT or UPDATE, so a
    read-then-write would read outside any transaction: another writer could
    commit between the read and the write, and the write would act on what it
    replaced. Taken first, nobody commits in between, and no read snapshot can
    go stale before the write (SQLITE_BUSY_SNAPSHOT); SQLite writes one at a
    time anyway. PostgreSQL needs nothing here: callers lock the rows they read.
    """
    if conn.dialect.name == "sqlite" and not conn.connection.driver_connection.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
