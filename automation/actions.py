"""What a threshold crossing does: start its action runs, and run the ones that are local.

Every action of every firing gets one `action_runs` row, unique per (threshold,
contact, firing, position), so an action never runs twice. Local actions (stage,
tags, owner) run at once inside the scoring transaction; the others (notify the
owner, call a webhook, enrol in a sequence) stay queued for `automation.jobs`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select, update

from automation.bulk import insert_rows
from automation.thresholds import Firing
from tracker.automation_models import ActionRun, ContactTag, StageChange
from tracker.models import Contact, User

LOCAL = frozenset({"set_stage", "add_tag", "remove_tag", "assign_owner"})
FUNNEL = ("subscriber", "lead", "mql", "sql", "opportunity", "customer")


def start(conn: Connection, firing: Firing, contact: dict[str, Any], now: datetime) -> list[int]:
    """Record the firing's action runs, run the local ones; return the ids left queued."""
    runs = [
        {
            "threshold_id": firing.threshold.id,
            "contact_id": firing.contact_id,
            "firing": firing.number,
            "position": position,
            "type": action["type"],
            "status": "queued",
            "attempts": 0,
            "created_at": now,
        }
        for position, action in enumerate(firing.threshold.actions)
    ]
    created = insert_rows(
        conn,
        ActionRun.__table__,
        runs,
        conflict=("threshold_id", "contact_id", "firing", "position"),
        returning=("id", "position"),
    )
    queued = []
    cause = f"threshold {firing.threshold.name!r}"
    for run_id, position in sorted(created, key=lambda r: r[1]):
        action = firing.threshold.actions[position]
        if action["type"] not in LOCAL:
            queued.append(run_id)
            continue
        outcome = run_local(conn, action, contact, cause, now)
        conn.execute(
            update(ActionRun.__table__)
            .where(ActionRun.__table__.c.id == run_id)
            .values(status="done", attempts=1, done_at=now, last_error=outcome)
        )
    return queued


def run_local(
    conn: Connection, action: dict[str, Any], contact: dict[str, Any], cause: str, now: datetime
) -> str | None:
    """Run a local action on `contact` (kept up to date); return a note when it did nothing."""
    kind = action["type"]
    if kind == "set_stage":
        return set_stage(
            conn, contact, action["stage"], cause, now, force=action.get("force", False)
        )
    if kind == "add_tag":
        insert_rows(
            conn,
            ContactTag.__table__,
            [{"contact_id": contact["id"], "tag": action["tag"], "created_at": now}],
            conflict=("contact_id", "tag"),
        )
        return None
    if kind == "remove_tag":
        tags = ContactTag.__table__
        conn.execute(
            delete(tags).where(tags.c.contact_id == contact["id"], tags.c.tag == action["tag"])
        )
        return None
    return assign_owner(conn, contact, action, now)


def set_stage(
    conn: Connection,
    contact: dict[str, Any],
    stage: str,
    cause: str,
    now: datetime,
    force: bool = False,
) -> str | None:
    """Move the contact's lifecycle stage and log it; automatic moves only go forward."""
    current = contact["stage"]
    if current == stage:
        return "already at that stage"
    if (
        not force
        and current in FUNNEL
        and stage in FUNNEL
        and (FUNNEL.index(stage) < FUNNEL.index(current))
    ):
        return f"not moved back from {current}"
    contacts = Contact.__table__
    conn.execute(
        update(contacts).where(contacts.c.id == contact["id"]).values(stage=stage, updated_at=now)
    )
    conn.execute(
        StageChange.__table__.insert().values(
            contact_id=contact["id"],
            from_stage=current,
            to_stage=stage,
            cause=cause[:300],
            created_at=now,
        )
    )
    contact["stage"] = stage
    return None


def assign_owner(
    conn: Connection, contact: dict[str, Any], action: dict[str, Any], now: datetime
) -> str | None:
    """Give the contact an owner: the named salesperson, or the next one in turn."""
    if contact["owner_id"] is not None and not action.get("reassign"):
        return "already has an owner"
    users = User.__table__
    query = select(users.c.id).where(users.c.active, users.c.role == "sales")
    if action.get("owner"):
        query = query.where(users.c.email == str(action["owner"]).strip().lower())
    else:
        # Round robin: whoever was given a lead longest ago (or never) is next.
        query = query.order_by(
            users.c.last_assigned_at.is_not(None), users.c.last_assigned_at, users.c.id
        ).limit(1)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
    owner = conn.execute(query).scalar()
    if owner is None:
        return "no active salesperson to assign"
    conn.execute(update(users).where(users.c.id == owner).values(last_assigned_at=now))
    contacts = Contact.__table__
    conn.execute(
        update(contacts)
        .where(contacts.c.id == contact["id"])
        .values(owner_id=owner, updated_at=now)
    )
    contact["owner_id"] = owner
    return None
