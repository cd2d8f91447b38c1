"""Write one ingestion batch: visitors, identities and events, in one transaction.

Re-running the same batch changes nothing: events are keyed by their UUID,
visitors by (site, key) and contacts by normalised email.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from automation.bulk import insert_rows, update_rows
from automation.rows import identities, visitor_touches
from tracker.models import Contact, Event, Visitor, as_utc, utcnow

TRAIT_COLUMNS = {"first_name", "last_name", "company"}
LAST_SEEN_RESOLUTION = timedelta(minutes=1)
"""By default a known visitor's last_seen is rewritten only when it moves by more than this."""


def _trait(value: Any) -> str | None:
    return str(value)[:200] if value not in (None, "") else None


def _upsert_visitors(
    conn: Connection, rows: list[dict[str, Any]], resolution: timedelta
) -> dict[tuple[int, str], tuple[int, int | None]]:
    """Insert new visitors, move last_seen on known ones; return (id, contact_id) per key.

    Known visitors are read, and rewritten only when their last_seen moves by
    more than `resolution`: most batches then read their visitors instead of
    rewriting them. (An identify committed by another worker between this read
    and our commit leaves our events anonymous; `repair_identities` re-points
    them.)
    """
    table = Visitor.__table__
    touches = visitor_touches(rows)
    keys = sorted({t.key for t in touches})
    known: dict[tuple[int, str], tuple[int, int | None, datetime]] = {}
    for start in range(0, len(keys), 1000):
        query = select(
            table.c.id, table.c.site_id, table.c.key, table.c.contact_id, table.c.last_seen
        ).where(table.c.key.in_(keys[start : start + 1000]))
        for id_, site_id, key, contact_id, last_seen in conn.execute(query):
            known[(site_id, key)] = (id_, contact_id, as_utc(last_seen))
    found = {key: (id_, contact_id) for key, (id_, contact_id, _) in known.items()}
    update_rows(
        conn,
        table,
        [
            {
                "id": known[(t.site_id, t.key)][0],
                "last_seen": t.last_seen,
                "user_agent": t.user_agent,
            }
            for t in touches
            if (t.site_id, t.key) in known
            and t.last_seen - known[(t.site_id, t.key)][2] > resolution
        ],
        key="id",
    )
    new = [
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
        if (t.site_id, t.key) not in known
    ]
    # An upsert, not a plain insert: another worker may create the same visitor now.
    returned = insert_rows(
        conn,
        table,
        new,
        conflict=("site_id", "key"),
        update={"last_seen": "max", "user_agent": "new"},
        returning=("id", "site_id", "key", "contact_id"),
    )
    found.update({(site_id, key): (id_, cid) for id_, site_id, key, cid in returned})
    return found


def _contacts_by_email(conn: Connection, wanted: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Make sure a contact exists for every email (never two), note what they told us,
    and return their ids."""
    contacts = Contact.__table__
    now = utcnow()
    emails = sorted(wanted)
    insert_rows(
        conn,
        contacts,
        [
            {
                "email": email,
                "traits": {},
                "stage": "lead",
                "score": 0,
                "created_at": now,
                "updated_at": now,
                **{k: _trait(wanted[email].get(k)) for k in sorted(TRAIT_COLUMNS)},
            }
            for email in emails
        ],
        conflict=("email",),
    )
    columns = [contacts.c[name] for name in ("id", "email", "traits", *sorted(TRAIT_COLUMNS))]
    found = conn.execute(select(*columns).where(contacts.c.email.in_(emails))).mappings().all()
    changes = []
    for contact in found:
        given = wanted[contact["email"]]
        if not given:
            continue
        traits = {
            **(contact["traits"] or {}),
            **{k: v for k, v in given.items() if k not in TRAIT_COLUMNS},
        }
        named = {k: _trait(given.get(k)) or contact[k] for k in sorted(TRAIT_COLUMNS)}
        changes.append({"id": contact["id"], "traits": traits, "updated_at": now, **named})
    update_rows(conn, contacts, changes, key="id")
    return {contact["email"]: contact["id"] for contact in found}


def _link_identities(
    conn: Connection,
    rows: list[dict[str, Any]],
    visitors: dict[tuple[int, str], tuple[int, int | None]],
    batch: StoredBatch,
) -> None:
    """Tie identified visitors to their contact and give it their anonymous history."""
    found = identities(rows)
    if not found:
        return
    wanted: dict[str, dict[str, Any]] = defaultdict(dict)
    for identity in found.values():
        wanted[identity["email"]].update(identity["traits"])
    contact_ids = _contacts_by_email(conn, wanted)
    links = []
    for key in sorted(found):
        visitor_id, current = visitors[key]
        contact_id = contact_ids[found[key]["email"]]
        if current != contact_id:
            links.append({"id": visitor_id, "contact_id": contact_id})
            visitors[key] = (visitor_id, contact_id)
    update_rows(conn, Visitor.__table__, links, key="id")
    events = Event.__table__
    if links:
        # The anonymous history about to be given to a contact is scored for it.
        linked = [link["id"] for link in links]
        batch.relinked_event_ids = list(
            conn.execute(
                select(events.c.id).where(
                    events.c.visitor_id.in_(linked), events.c.contact_id.is_(None)
                )
            ).scalars()
        )
    update_rows(
        conn,
        events,
        [{"visitor_id": link["id"], "contact_id": link["contact_id"]} for link in links],
        key="visitor_id",
        only_where_null="contact_id",
    )
    batch.identified_contacts.update(contact_ids.values())


@dataclass
class StoredBatch:
    """What storing a batch changed: the new events, and whom identity touched."""

    new_event_ids: list[int] = field(default_factory=list)
    relinked_event_ids: list[int] = field(default_factory=list)
    identified_contacts: set[int] = field(default_factory=set)

    @property
    def stored(self) -> int:
        """How many events were new."""
        return len(self.new_event_ids)


def store_batch(
    conn: Connection,
    rows: list[dict[str, Any]],
    last_seen_resolution: timedelta = LAST_SEEN_RESOLUTION,
) -> StoredBatch:
    """Store a batch of event rows inside the caller's transaction."""
    batch = StoredBatch()
    if not rows:
        return batch
    visitors = _upsert_visitors(conn, rows, last_seen_resolution)
    _link_identities(conn, rows, visitors, batch)
    now = utcnow()
    values = []
    for row in rows:
        visitor_id, contact_id = visitors[(row["site_id"], row["visitor_key"])]
        value = {k: v for k, v in row.items() if k != "visitor_key"}
        value.update(visitor_id=visitor_id, contact_id=contact_id, ingested_at=now)
        values.append(value)
    # RETURNING tells what was new: rowcount is -1 for these statements on psycopg.
    new = insert_rows(conn, Event.__table__, values, conflict=("uuid",), returning=("id",))
    batch.new_event_ids = [id_ for (id_,) in new]
    return batch


def repair_identities(conn: Connection, since: datetime) -> int:
    """Give identified visitors' anonymous events since `since` to their contact.

    Ingestion does this as it goes; this pass catches events a concurrent
    worker stored while another committed the identify. Returns events fixed.
    """
    events, visitors = Event.__table__, Visitor.__table__
    owner = (
        select(visitors.c.contact_id).where(visitors.c.id == events.c.visitor_id).scalar_subquery()
    )
    result = conn.execute(
        update(events)
        .where(
            events.c.contact_id.is_(None),
            events.c.occurred_at >= since,
            events.c.visitor_id.in_(
                select(visitors.c.id).where(visitors.c.contact_id.is_not(None))
            ),
        )
        .values(contact_id=owner)
        .execution_options(synchronize_session=False)
    )
    return max(result.rowcount, 0)
