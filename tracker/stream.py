"""Hand accepted events on: one XADD each to the Redis stream, else the database spool."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
import redis
from sqlalchemy.exc import SQLAlchemyError

from tracker.db import db
from tracker.errors import BadEvent, StorageUnavailable
from tracker.models import EventSpool

log = logging.getLogger(__name__)

FIELD = "d"
"""The one field of a stream entry: the stamped event as compact JSON."""

REDIS_RETRY_SECONDS = 2.0
"""After Redis fails, collection writes to the spool for this long before trying it again."""


def encode(event: dict[str, Any]) -> bytes:
    """Serialise a stamped event as compact UTF-8 JSON."""
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError as e:
        raise BadEvent("a string in the event is not valid Unicode", "invalid_utf8") from e


class EventSink:
    """Appends events to the stream, falling back to the database spool when Redis is down.

    Each web thread keeps one Redis connection of its own and writes its XADDs
    to it in one go: on the hot path a pool checkout and a pipeline object cost
    more than the round trip.
    """

    def __init__(self, client: redis.Redis, stream: str) -> None:
        self._redis = client
        self._stream = stream
        self._redis_down_until = 0.0
        self._local = threading.local()
        # `XADD <stream> * d <entry>` in Redis's wire format, up to the entry: built
        # once, as packing each command through redis-py costs more than the write.
        name = stream.encode()
        self._xadd_head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\n%s\r\n" % (
            len(name),
            name,
            FIELD.encode(),
        )

    def append(self, encoded: list[bytes]) -> str:
        """Store the encoded events durably; return "redis" or "spool" for where they went."""
        if time.monotonic() >= self._redis_down_until:
            try:
                self._xadd(encoded)
                return "redis"
            except redis.RedisError as e:
                log.warning(
                    "Redis refused %d events, spooling to the database: %s", len(encoded), e
                )
                self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
        self._spool(encoded)
        return "spool"

    def _xadd(self, encoded: list[bytes]) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._redis.connection_pool.make_connection()
        head = self._xadd_head
        try:
            connection.send_packed_command(
                [b"".join(head + b"$%d\r\n%s\r\n" % (len(entry), entry) for entry in encoded)]
            )
            for _ in encoded:
                connection.read_response()
        except redis.RedisError:
            # The connection may be out of step with its replies: never reuse it.
            connection.disconnect()
            self._local.connection = None
            raise

    def _spool(self, encoded: list[bytes]) -> None:
        payload = b"[" + b",".join(encoded) + b"]"
        try:
            db.session.add(EventSpool(payload=payload.decode("utf-8")))
            db.session.commit()
        except SQLAlchemyError as e:
            db.session.rollback()
            raise StorageUnavailable(
                "neither Redis nor the database accepted the events; try again shortly"
            ) from e
        finally:
            db.session.remove()
