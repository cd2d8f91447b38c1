"""Write one ingestion batch: visitors, identities and events, in one transaction.

Re-running the same batch changes nothing: events are keyed by their UUID,
visitors by (site, key) and contacts by normalised email.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    DateTime,
    Integer,
    String,
    any_,
    bindparam,
    case,
    func,
    select,
    update,
)

from automation.bulk import insert_rows, update_rows
from automation.machine import BURST_SECONDS, EarlierClick, EmailHit, classify
from automation.rows import identities, identity_token, visitor_touches
from tracker.email_models import Message
from tracker.models import Contact, Event, Visitor, as_utc, utcnow
from tracker.tokens import read_token

log = logging.getLogger(__name__)

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
    keys_by_site: dict[int, set[str]] = {}
    for touch in touches:
        keys_by_site.setdefault(touch.site_id, set()).add(touch.key)
    known: dict[tuple[int, str], tuple[int, int | None, datetime]] = {}
    columns = (table.c.id, table.c.site_id, table.c.key, table.c.contact_id, table.c.last_seen)
    # Per site, so that the (site_id, key) index finds each visitor: keys alone would scan
    # the whole table, comparing every row with every key of the batch.
    chunks = []
    for site_id, site_keys in sorted(keys_by_site.items()):
        keys = sorted(site_keys)
        if conn.dialect.name == "postgresql":
            # One array parameter: a long IN (…) list costs more to build and parse than to run.
            keys_param = bindparam(f"visitor_keys_{site_id}", keys, type_=ARRAY(String))
            chunks.append(
                select(*columns).where(table.c.site_id == site_id, table.c.key == any_(keys_param))
            )
        else:
            chunks += [
                select(*columns).where(
                    table.c.site_id == site_id, table.c.key.in_(keys[start : start + 1000])
                )
                for start in range(0, len(keys), 1000)
            ]
    for query in chunks:
        for id_, site_id, key, contact_id, last_seen in conn.execute(query).all():
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


def _clicked_identities(
    conn: Connection, rows: list[dict[str, Any]], token_key: bytes | None
) -> dict[tuple[int, str], dict[str, Any]]:
    """Per (site, visitor), the contact whose email link led to the page (its `cl_c` token).

    A token that does not verify, or names no message, is ignored.
    """
    if token_key is None:
        return {}
    tokens: dict[tuple[int, str], int] = {}
    for row in sorted(rows, key=lambda r: r["occurred_at"]):
        token = identity_token(row["url"])
        ref = read_token(token_key, "identify", token) if token else None
        if ref is not None:
            tokens[(row["site_id"], row["visitor_key"])] = ref.message_id
    if not tokens:
        return {}
    emails = dict(
        conn.execute(
            select(Message.id, Contact.email)
            .join(Contact, Contact.id == Message.contact_id)
            .where(Message.id.in_(sorted(set(tokens.values()))))
        ).all()
    )
    return {
        key: {"email": emails[message_id], "traits": {}}
        for key, message_id in tokens.items()
        if message_id in emails
    }


def _link_identities(
    conn: Connection,
    rows: list[dict[str, Any]],
    visitors: dict[tuple[int, str], tuple[int, int | None]],
    batch: StoredBatch,
    clicked: dict[tuple[int, str], dict[str, Any]] | None = None,
) -> None:
    """Tie identified visitors to their contact and give it their anonymous history.

    `clicked` are visitors who arrived through a tracked email link; an
    identify in the same batch says more and wins.
    """
    found = {**(clicked or {}), **identities(rows)}
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
    if links:
        # The linked visitors' events are read through their own index and the anonymous
        # ones picked here, then changed by primary key: a "contact_id IS NULL" term lets
        # the planner walk every anonymous event through the contact index instead (SQLite
        # always could; PostgreSQL does while a young table's statistics say it is tiny).
        # The visitor rows updated above are locked, so no other link of theirs interleaves.
        events = Event.__table__
        contact_of = {link["id"]: link["contact_id"] for link in links}
        history = conn.execute(
            select(events.c.id, events.c.visitor_id, events.c.contact_id).where(
                events.c.visitor_id.in_(sorted(contact_of))
            )
        ).all()
        relinked = [
            {"id": id_, "contact_id": contact_of[visitor_id]}
            for id_, visitor_id, contact_id in history
            if contact_id is None
        ]
        # The anonymous history about to be given to a contact is scored for it.
        batch.relinked_event_ids = [row["id"] for row in relinked]
        update_rows(conn, events, relinked, key="id")
    batch.identified_contacts.update(contact_ids.values())


@dataclass
class StoredBatch:
    """What storing a batch changed: the new events, whom identity touched, which emails
    a person opened or clicked (`human_email_messages`: message ids)."""

    new_event_ids: list[int] = field(default_factory=list)
    new_events: list[dict[str, Any]] = field(default_factory=list)
    """The rows of the new events as stored (with their ids): what rollups count."""
    relinked_event_ids: list[int] = field(default_factory=list)
    identified_contacts: set[int] = field(default_factory=set)
    human_email_messages: set[int] = field(default_factory=set)

    @property
    def stored(self) -> int:
        """How many events were new."""
        return len(self.new_event_ids)


def store_batch(
    conn: Connection,
    rows: list[dict[str, Any]],
    last_seen_resolution: timedelta = LAST_SEEN_RESOLUTION,
    token_key: bytes | None = None,
) -> StoredBatch:
    """Store a batch of event rows inside the caller's transaction.

    `token_key` (`tracker.tokens.signing_key`) lets a page reached through a
    tracked email link identify its visitor; without it such links are ignored.
    """
    batch = StoredBatch()
    email_rows = [row for row in rows if row["site_id"] is None]
    rows = [row for row in rows if row["site_id"] is not None]
    if email_rows:
        _store_email_events(conn, email_rows, batch)
    if not rows:
        return batch
    visitors = _upsert_visitors(conn, rows, last_seen_resolution)
    _link_identities(conn, rows, visitors, batch, _clicked_identities(conn, rows, token_key))
    now = utcnow()
    values = []
    for row in rows:
        visitor_id, contact_id = visitors[(row["site_id"], row["visitor_key"])]
        value = row.copy()  # the batch's rows stay as they were, for a retry one by one
        del value["visitor_key"]
        value.update(visitor_id=visitor_id, contact_id=contact_id, ingested_at=now)
        values.append(value)
    # RETURNING tells what was new: rowcount is -1 for these statements on psycopg.
    new = insert_rows(conn, Event.__table__, values, conflict=("uuid",), returning=("id", "uuid"))
    _note_new(batch, values, new)
    return batch


def _hex(value: Any) -> str:
    return value.hex if isinstance(value, uuid.UUID) else str(value).replace("-", "")


def _note_new(batch: StoredBatch, values: list[dict[str, Any]], new: list[Any]) -> None:
    """Record which of the rows written were new, by the (id, uuid) the insert returned."""
    # Compared as hex: SQLite's driver hands back the stored text, psycopg a UUID.
    ids = {_hex(event_uuid): id_ for id_, event_uuid in new}
    for value in values:
        id_ = ids.get(value["uuid"].hex)
        if id_ is not None:
            batch.new_event_ids.append(id_)
            batch.new_events.append({**value, "id": id_})


EMAIL_KEYS = ("visitor_key", "email_message", "email_link", "email_method")
"""Keys of an email event row that are not columns: resolved against the message first."""

_COUNTERS = {
    ("email_open", False): "opens",
    ("email_open", True): "machine_opens",
    ("email_click", False): "clicks",
    ("email_click", True): "machine_clicks",
}


def _earlier_clicks(
    conn: Connection, contact_ids: set[int], rows: list[dict[str, Any]]
) -> list[EarlierClick]:
    """Clicks already stored near this batch's, of the same contacts (for scanner bursts)."""
    clicks = [row for row in rows if row["type"] == "email_click"]
    if not clicks:
        return []
    events = Event.__table__
    window = timedelta(seconds=BURST_SECONDS)
    ours = {row["uuid"] for row in rows}
    query = select(events.c.uuid, events.c.props, events.c.occurred_at).where(
        events.c.contact_id.in_(sorted(contact_ids)),
        events.c.type == "email_click",
        events.c.occurred_at >= min(row["occurred_at"] for row in clicks) - window,
        events.c.occurred_at <= max(row["occurred_at"] for row in clicks) + window,
    )
    found = []
    for event_uuid, props, occurred_at in conn.execute(query):
        props = props or {}
        if event_uuid in ours or not isinstance(props.get("message_id"), int):
            continue
        found.append(EarlierClick(props["message_id"], props.get("link") or 0, as_utc(occurred_at)))
    return found


def _store_email_events(conn: Connection, rows: list[dict[str, Any]], batch: StoredBatch) -> None:
    """Store email opens and clicks: resolve their message, flag machines, count per message."""
    messages = Message.__table__
    wanted = sorted({row["email_message"] for row in rows})
    found: dict[int, Any] = {}
    for start in range(0, len(wanted), 1000):
        query = select(
            messages.c.id,
            messages.c.contact_id,
            messages.c.template_id,
            messages.c.variant,
            messages.c.sent_at,
        ).where(messages.c.id.in_(wanted[start : start + 1000]))
        found.update((message.id, message) for message in conn.execute(query))
    known = []
    for row in rows:
        if row["email_message"] in found:
            known.append(row)
        else:
            # Only a deleted message (or a database restored from before it) gets here.
            log.warning(
                "skipping %s of message %s: no such message", row["type"], row["email_message"]
            )
    if not known:
        return
    hits = []
    for row in known:
        message = found[row["email_message"]]
        sent_at = as_utc(message.sent_at) if message.sent_at else None
        since = (row["occurred_at"] - sent_at).total_seconds() if sent_at else None
        row["seconds"] = max(0, round(since)) if since is not None else None
        hits.append(
            EmailHit(
                "open" if row["type"] == "email_open" else "click",
                message.id,
                row["occurred_at"],
                row["user_agent"],
                since,
                row["email_method"],
                row["email_link"],
            )
        )
    contact_ids = {found[row["email_message"]].contact_id for row in known}
    reasons = classify(hits, _earlier_clicks(conn, contact_ids, known))
    now = utcnow()
    values = []
    for row, reason in zip(known, reasons, strict=True):
        message = found[row["email_message"]]
        value = {k: v for k, v in row.items() if k not in EMAIL_KEYS}
        value.update(
            visitor_id=None,
            contact_id=message.contact_id,
            ingested_at=now,
            is_bot=reason is not None,
            bot_reason=reason,
            props={
                "message_id": message.id,
                "template_id": message.template_id,
                "variant": message.variant,
                "link": row["email_link"] or None,
            },
        )
        values.append(value)
    new = insert_rows(conn, Event.__table__, values, conflict=("uuid",), returning=("id", "uuid"))
    _note_new(batch, values, new)
    fresh = {uuid.UUID(str(event_uuid)) for _, event_uuid in new}
    _count(conn, [value for value in values if value["uuid"] in fresh], batch)


def _counting_statement() -> Any:
    """One UPDATE for every message a batch touched (run as executemany): counters added in
    SQL, so two workers counting one message add up; first-human times only move earlier."""
    messages = Message.__table__
    values: dict[str, Any] = {
        column: messages.c[column] + bindparam(f"_{column}", type_=Integer)
        for column in sorted(set(_COUNTERS.values()))
    }
    for column in ("opened_at", "clicked_at"):
        current, first = messages.c[column], bindparam(f"_{column}", type_=DateTime(timezone=True))
        # NULL-safe "earliest of the two" that PostgreSQL and SQLite agree on.
        values[column] = func.coalesce(
            case((first < current, first), else_=current), current, first
        )
    return update(messages).where(messages.c.id == bindparam("_id")).values(values)


_COUNTING = _counting_statement()


def _count(conn: Connection, stored: list[dict[str, Any]], batch: StoredBatch) -> None:
    """Add the new events to their messages' human and machine counters.

    opened_at/clicked_at are the first HUMAN open and click; a human click
    also proves an open (images may be blocked).
    """
    changes: dict[int, dict[str, Any]] = {}
    for value in stored:
        message_id = value["props"]["message_id"]
        change = changes.get(message_id)
        if change is None:
            change = changes[message_id] = {
                "_id": message_id,
                **{f"_{column}": 0 for column in set(_COUNTERS.values())},
                "_opened_at": None,
                "_clicked_at": None,
            }
        change[f"_{_COUNTERS[(value['type'], value['is_bot'])]}"] += 1
        if value["is_bot"]:
            continue
        batch.human_email_messages.add(message_id)
        at = value["occurred_at"]
        columns = ("opened_at", "clicked_at") if value["type"] == "email_click" else ("opened_at",)
        for column in columns:
            if change[f"_{column}"] is None or at < change[f"_{column}"]:
                change[f"_{column}"] = at
    if changes:
        # In id order, so concurrent batches lock messages in the same order.
        conn.execute(_COUNTING, [changes[message_id] for message_id in sorted(changes)])


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
