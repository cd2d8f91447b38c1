"""Move events from the Redis stream (and the spool) into the database, exactly once.

Entries are read through a consumer group, stored in one transaction and
acknowledged only after the commit. Entries left pending by a worker that died
are taken over with XAUTOCLAIM once they have been idle long enough.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from flask import current_app
from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import DataError, IntegrityError

from automation.attribution_store import mark_touched
from automation.bulk import planned_each_time
from automation.dispatch import enqueue_action_runs
from automation.points import load_rulebook, run_thresholds, score_batch
from automation.rollups import add_facts, facts_of
from automation.rows import MalformedEntry, event_row
from automation.segments import load_segments, refresh
from automation.sequence_runner import enrol_joined, wake_branches
from automation.store import repair_identities, store_batch
from tracker.db import db
from tracker.models import EventSpool, utcnow
from tracker.redis_conn import get_redis
from tracker.stream import FIELD
from tracker.tokens import signing_key

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ":dead"
"""Entries that can never be stored go to `<stream>:dead`, for an operator to inspect."""

CONSUMER_IDLE_MS = 600_000
"""Consumers idle this long with nothing pending are removed from the group."""

Entry = tuple[bytes, dict[bytes, bytes]]
FIELD_KEY = FIELD.encode()


@dataclass
class BatchResult:
    """What one pass did: entries read, events newly stored, entries dead-lettered."""

    read: int = 0
    stored: int = 0
    dead: int = 0


def consumer_name() -> str:
    """A name unique to this process, so its pending entries are its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.monotonic_ns()}"


class StreamIngestor:
    """Reads the event stream through a consumer group and stores what it reads."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str | None = None,
        batch: int = 1000,
        block_ms: int = 500,
        claim_idle_ms: int = 30000,
    ) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or consumer_name()
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._claim_cursor = "0-0"

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist yet."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def prune_consumers(self, idle_ms: int = CONSUMER_IDLE_MS) -> int:
        """Forget consumers of ended jobs: idle for long and holding nothing pending."""
        pruned = 0
        for info in self.redis.xinfo_consumers(self.stream, self.group):
            name = info["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if name != self.consumer and info["pending"] == 0 and info["idle"] > idle_ms:
                self.redis.xgroup_delconsumer(self.stream, self.group, name)
                pruned += 1
        return pruned

    def claim(self) -> list[Entry]:
        """Take over entries another consumer left pending for longer than `claim_idle_ms`."""
        cursor, entries, *_ = self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.batch,
        )
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else cursor
        # Entries deleted after being read show up as None; they are acked below.
        return [(entry_id, fields or {}) for entry_id, fields in entries]

    def read(self, wait: bool = True) -> list[Entry]:
        """Return up to `batch` entries: claimed ones first, else new ones.

        With `wait`, an idle stream is watched for up to `block_ms` before giving up.
        """
        claimed = self.claim()
        if claimed:
            return claimed
        response = self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch,
            block=self.block_ms if wait else None,
        )
        return list(response[0][1]) if response else []

    def ack(self, ids: list[bytes]) -> None:
        """Acknowledge stored entries and delete them, so the stream stays small."""
        if ids:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, *ids)
            pipe.xdel(self.stream, *ids)
            pipe.execute()

    def dead_letter(self, entries: list[Entry], reason: str) -> None:
        """Park entries that can never be stored, with the reason, and acknowledge them."""
        pipe = self.redis.pipeline(transaction=True)
        for entry_id, fields in entries:
            pipe.xadd(
                self.stream + DEAD_LETTER_SUFFIX,
                {FIELD: fields.get(FIELD_KEY, b""), "reason": reason[:500], "entry": entry_id},
            )
        pipe.execute()
        self.ack([entry_id for entry_id, _ in entries])

    def process(self, entries: list[Entry]) -> BatchResult:
        """Store the entries' events in one transaction, then acknowledge them."""
        result = BatchResult(read=len(entries))
        rows: list[dict[str, Any]] = []
        parsed: list[tuple[Entry, dict[str, Any]]] = []
        for entry in entries:
            try:
                row = _row(entry)
            except MalformedEntry as e:
                self.dead_letter([entry], str(e))
                result.dead += 1
                continue
            rows.append(row)
            parsed.append((entry, row))
        try:
            result.stored = store_rows(rows)
        except (IntegrityError, DataError) as e:
            # One row the database refuses must not hold the whole stream up: store
            # the batch one entry at a time and park the ones that still fail.
            log.warning("batch refused (%s); retrying entry by entry", type(e).__name__)
            for entry, row in parsed:
                try:
                    result.stored += store_rows([row])
                except (IntegrityError, DataError) as error:
                    self.dead_letter([entry], repr(error))
                    result.dead += 1
                    continue
                self.ack([entry[0]])
            return result
        self.ack([entry_id for (entry_id, _), _ in parsed])
        return result

    def run_once(self, wait: bool = True) -> BatchResult:
        """Read one batch and store it; an empty result means the stream was idle."""
        entries = self.read(wait)
        if not entries:
            return BatchResult()
        return self.process(entries)

    def run(
        self,
        seconds: float,
        on_batch: Callable[[BatchResult], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> BatchResult:
        """Keep ingesting for `seconds`, draining the spool now and then; return the totals.

        The stream is read first: a job that takes over from another must not make
        the events that arrived meanwhile wait for its housekeeping.
        """
        self.ensure_group()
        total = BatchResult()
        started = time.monotonic()
        deadline = started + seconds
        housekeeping = started + HOUSEKEEPING_DELAY_SECONDS
        next_spool_check = housekeeping
        while time.monotonic() < deadline and not should_stop():
            if time.monotonic() >= next_spool_check:
                if next_spool_check == housekeeping:
                    self.prune_consumers()
                total.stored += drain_spool()
                next_spool_check = time.monotonic() + SPOOL_CHECK_SECONDS
            result = self.run_once()
            total.read += result.read
            total.stored += result.stored
            total.dead += result.dead
            if on_batch and result.read:
                on_batch(result)
        # Leave no trace when nothing is pending on us; otherwise a live consumer claims it.
        if self.redis.xpending_range(self.stream, self.group, "-", "+", 1, self.consumer) == []:
            self.redis.xgroup_delconsumer(self.stream, self.group, self.consumer)
        return total


SETTLE_ROUNDS = 3
"""Rounds of segments-then-thresholds per batch, as actions feed back into segments."""

SPOOL_CHECK_SECONDS = 5.0
"""How often a running ingestion job looks for batches spooled while Redis was down."""

HOUSEKEEPING_DELAY_SECONDS = 2.0
"""A new ingestion job reads for this long before it prunes consumers and drains the spool."""

REPAIR_WINDOW = timedelta(hours=1)
"""How far back that repair looks."""


def repair_recent_identities() -> int:
    """Re-point the last hour's anonymous events of identified visitors; return how many."""
    try:
        with db.engine.begin() as conn:
            return repair_identities(conn, datetime.now(UTC) - REPAIR_WINDOW)
    finally:
        db.session.remove()


def _row(entry: Entry) -> dict[str, Any]:
    try:
        return event_row(orjson.loads(entry[1][FIELD_KEY]))
    except (KeyError, ValueError) as e:  # orjson's decode errors are ValueErrors
        raise MalformedEntry(f"stream entry {entry[0]!r} is not a stamped event: {e!r}") from e


def _last_seen_resolution() -> timedelta:
    return timedelta(seconds=current_app.config["VISITOR_LAST_SEEN_SECONDS"])


def _store_and_score(conn: Connection, rows: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """Store rows, then score, move segments and run thresholds, in the caller's transaction.

    Returns how many events were new and the action runs left for workers.
    """
    stored = store_batch(
        conn, rows, _last_seen_resolution(), signing_key(current_app.config["SECRET_KEY"])
    )
    # A human open or click decides a branch waiting on that message now, not at its deadline.
    wake_branches(conn, stored.human_email_messages, utcnow())
    # The dashboard's day counters move with the events that were new here, never twice.
    facts = add_facts(conn, facts_of(stored.new_events))
    # Campaign credit moves with new touches and with visitors newly tied to a contact.
    mark_touched(conn, facts, stored.identified_contacts)
    rulebook = load_rulebook(conn)
    segments = load_segments(conn)
    if rulebook.empty and not segments:
        return stored.stored, []
    scored = score_batch(
        conn,
        stored.new_event_ids + stored.relinked_event_ids,
        refit=stored.identified_contacts,
        rulebook=rulebook,
    )
    now = utcnow()
    touched, rescore = scored.touched, scored.changed
    # Actions change what segments look at (stage, tags): settle in a few rounds.
    for _ in range(SETTLE_ROUNDS):
        moved = refresh(conn, now, touched=touched, segments=segments) if segments else None
        if moved:
            enrol_joined(conn, moved.joined, now)  # sequences whose entry is joining a segment
        regrouped = moved.contacts if moved else set()
        touched = run_thresholds(conn, rulebook, rescore | regrouped, now, scored)
        rescore = set()
        if not touched:
            break
    return stored.stored, scored.queued_runs


def store_rows(rows: list[dict[str, Any]]) -> int:
    """Store and score event rows in one committed transaction; return how many were new."""
    if not rows:
        return 0
    try:
        with db.engine.begin() as conn, planned_each_time(conn):
            stored, queued = _store_and_score(conn, rows)
    finally:
        db.session.remove()
    enqueue_action_runs(get_redis(), queued)
    return stored


def drain_spool(limit: int = 200) -> int:
    """Store batches that collection spooled to the database while Redis was down."""
    stored = 0
    while True:
        with db.engine.begin() as conn, planned_each_time(conn):
            query = select(EventSpool.id, EventSpool.payload).order_by(EventSpool.id).limit(limit)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            spooled = conn.execute(query).all()
            if not spooled:
                return stored
            rows = [event_row(event) for _, payload in spooled for event in json.loads(payload)]
            new, queued = _store_and_score(conn, rows)
            conn.execute(delete(EventSpool).where(EventSpool.id.in_([id_ for id_, _ in spooled])))
        stored += new
        enqueue_action_runs(get_redis(), queued)
