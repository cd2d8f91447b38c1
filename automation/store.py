"""Write one ingestion batch: visitors, identities and events, in one transaction.

Re-running the same batch changes nothing: events are keyed by their UUID,
visitors by (site, key) and contacts by normalised email.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Connection, case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from automation.rows import identities, visitor_touches
from tracker.models import Contact, Event, Visitor, utcnow

TRAIT_COLUMNS = {"first_name", "last_name", "company"}
CHUNK = 500
"""Rows per multi-row INSERT; keeps SQLite under its bound-parameter limit."""


def _insert(conn: Connection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def _upsert_visitors(
    conn: Connection, rows: list[dict[str, Any]]
) -> dict[tuple[int, str], tuple[int, int | None]]:
    """Insert new visitors, move last_seen on known ones; return (id, contact_id) per key."""
    touches = visitor_touches(rows)
    values = [
        {
            "site_id": t.site_id,
            "key": t.key,
            "first_seen": t.first_seen,
            "last_seen": t.last_seen,
            "user_agent": t.user_agent,
            "is_bot": t.is_bot,
            **t.landing,
        }
        for t in touches
    ]
    found: dict[tuple[int, str], tuple[int, int | None]] = {}
    table = Visitor.__table__
    for start in range(0, len(values), CHUNK):
        stmt = _insert(conn, table).values(values[start : start + CHUNK])
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.site_id, table.c.key],
            set_={
                "last_seen": case(
                    (stmt.excluded.last_seen > table.c.last_seen, stmt.excluded.last_seen),
                    else_=table.c.last_seen,
                ),
                "user_agent": stmt.excluded.user_agent,
            },
        ).returning(table.c.id, table.c.site_id, table.c.key, table.c.contact_id)
        for id_, site_id, key, contact_id in conn.execute(stmt):
            found[(site_id, key)] = (id_, contact_id)
    return found


def _contacts_by_email(conn: Connection, wanted: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Make sure a contact exists for every email (never two); return their ids."""
    contacts = Contact.__table__
    now = utcnow()
    emails = sorted(wanted)
    new = [
        {
            "email": email,
            "traits": {},
            "stage": "lead",
            "score": 0,
            "created_at": now,
            "updated_at": now,
            **{k: str(v)[:200] for k, v in wanted[email].items() if k in TRAIT_COLUMNS and v},
        }
        for email in emails
    ]
    conn.execute(
        _insert(conn, contacts).values(new).on_conflict_do_nothing(index_elements=["email"])
    )
    rows = conn.execute(
        select(contacts.c.id, contacts.c.email, contacts.c.traits).where(
            contacts.c.email.in_(emails)
        )
    ).all()
    for id_, email, traits in rows:
        given = wanted[email]
        if not given:
            continue
        merged = {**(traits or {}), **{k: v for k, v in given.items() if k not in TRAIT_COLUMNS}}
        columns = {k: str(v)[:200] for k, v in given.items() if k in TRAIT_COLUMNS and v}
        conn.execute(
            update(contacts)
            .where(contacts.c.id == id_)
            .values(traits=merged, updated_at=now, **columns)
        )
    return {email: id_ for id_, email, _ in rows}


def _link_identities(
    conn: Connection,
    rows: list[dict[str, Any]],
    visitors: dict[tuple[int, str], tuple[int, int | None]],
) -> None:
    """Tie identified visitors to their contact and give it their anonymous history."""
    found = identities(rows)
    if not found:
        return
    wanted: dict[str, dict[str, Any]] = defaultdict(dict)
    for identity in found.values():
        wanted[identity["email"]].update(identity["traits"])
    contact_ids = _contacts_by_email(conn, wanted)
    visitor_table, event_table = Visitor.__table__, Event.__table__
    for key in sorted(found):
        visitor_id, current = visitors[key]
        contact_id = contact_ids[found[key]["email"]]
        if current == contact_id:
            continue
        conn.execute(
            update(visitor_table)
            .where(visitor_table.c.id == visitor_id)
            .values(contact_id=contact_id)
        )
        conn.execute(
            update(event_table)
            .where(event_table.c.visitor_id == visitor_id, event_table.c.contact_id.is_(None))
            .values(contact_id=contact_id)
        )
        visitors[key] = (visitor_id, contact_id)


def store_batch(conn: Connection, rows: list[dict[str, Any]]) -> int:
    """Store a batch of event rows inside the caller's transaction; return how many were new."""
    if not rows:
        return 0
    visitors = _upsert_visitors(conn, rows)
    _link_identities(conn, rows, visitors)
    now = utcnow()
    values = []
    for row in rows:
        visitor_id, contact_id = visitors[(row["site_id"], row["visitor_key"])]
        value = {k: v for k, v in row.items() if k != "visitor_key"}
        value.update(visitor_id=visitor_id, contact_id=contact_id, ingested_at=now)
        values.append(value)
    inserted = 0
    table = Event.__table__
    for start in range(0, len(values), CHUNK):
        stmt = _insert(conn, table).values(values[start : start + CHUNK])
        # RETURNING counts what was new: rowcount is -1 for this statement on psycopg.
        stmt = stmt.on_conflict_do_nothing(index_elements=["uuid"]).returning(table.c.id)
        inserted += len(conn.execute(stmt).all())
    return inserted
