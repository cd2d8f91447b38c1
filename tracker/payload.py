"""Parse and validate what the snippet (or anyone) posts to the collection endpoints.

Pure functions: bytes in, plain dicts out, `BadEvent` for anything off-contract.
Nothing here touches the request, the database or Redis.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from tracker.errors import BadEvent

EVENT_TYPES = frozenset(
    {"pageview", "engage", "outbound", "download", "search", "custom", "identify"}
)
MAX_URL = 2048
MAX_TITLE = 300
MAX_NAME = 200
MAX_QUERY = 300
MAX_VALUE = 500
MAX_PROPS = 20
MAX_KEY = 64
MAX_EMAIL = 320
MAX_ENGAGED_SECONDS = 86400
VISITOR_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
SITE_RE = re.compile(r"[A-Za-z0-9_-]{4,40}")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class Batch:
    """A validated request: who sent it and the events, not yet stamped."""

    site_key: str
    visitor: str
    dnt: bool
    events: list[dict[str, Any]]


def _clean(text: str) -> str:
    # PostgreSQL text and JSONB refuse NUL, so it never gets past the door.
    return text.replace("\x00", "") if "\x00" in text else text


def _string(event: dict[str, Any], field: str, cap: int, *, required: bool = False) -> str | None:
    value = event.get(field)
    if value is None or value == "":
        if required:
            raise BadEvent(f"event field {field!r} is required for type {event['type']!r}")
        return None
    if not isinstance(value, str):
        raise BadEvent(f"event field {field!r} must be a string, not {type(value).__name__}")
    return _clean(value[:cap])


def _url(
    event: dict[str, Any], field: str, *, required: bool = False, web: bool = True
) -> str | None:
    value = event.get(field)
    if value is None or value == "":
        if required:
            raise BadEvent(f"event field {field!r} is required for type {event['type']!r}")
        return None
    if not isinstance(value, str):
        raise BadEvent(f"event field {field!r} must be a URL string")
    if len(value) > MAX_URL:
        raise BadEvent(f"event field {field!r} is longer than {MAX_URL} characters", "url_too_long")
    value = _clean(value)
    try:
        parts = urlsplit(value)
    except ValueError as e:
        raise BadEvent(f"event field {field!r} is not a valid URL", "bad_url") from e
    if web and (parts.scheme not in {"http", "https"} or not parts.hostname):
        raise BadEvent(f"event field {field!r} must be an absolute http(s) URL", "bad_url")
    return value


def _flat_object(event: dict[str, Any], field: str) -> dict[str, Any] | None:
    value = event.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadEvent(f"event field {field!r} must be an object of simple values")
    if len(value) > MAX_PROPS:
        raise BadEvent(f"event field {field!r} has more than {MAX_PROPS} keys")
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if len(key) > MAX_KEY:
            raise BadEvent(f"{field} key {key[:20]!r}… is longer than {MAX_KEY} characters")
        if isinstance(item, str):
            item = _clean(item[:MAX_VALUE])
        elif item is not None and not isinstance(item, bool | int | float):
            raise BadEvent(f"{field}[{key!r}] must be a string, number, boolean or null")
        flat[_clean(key)] = item
    return flat


def normalise_email(value: str) -> str:
    """Return the address as contacts are keyed: trimmed and lower-cased."""
    return value.strip().lower()


def parse_event(raw: Any) -> dict[str, Any]:
    """Validate one event object and return it with only known, capped fields."""
    if not isinstance(raw, dict):
        raise BadEvent("each event must be a JSON object")
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        allowed = ", ".join(sorted(EVENT_TYPES))
        raise BadEvent(f"event type {str(kind)[:40]!r} is not one of: {allowed}", "bad_type")
    event: dict[str, Any] = {"type": kind}
    raw_id = raw.get("id")
    if raw_id is None:
        event["id"] = str(uuid.uuid4())
    elif isinstance(raw_id, str) and UUID_RE.fullmatch(raw_id):
        event["id"] = raw_id  # the snippet's own, canonical form: no need to parse it
    else:
        try:
            event["id"] = str(uuid.UUID(str(raw_id)))
        except ValueError as e:
            raise BadEvent("event field 'id' must be a UUID", "bad_id") from e
    ts = raw.get("ts")
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise BadEvent("event field 'ts' must be a number of milliseconds")
        event["ts"] = int(ts)
    event["url"] = _url(raw, "url", required=True)
    event["referrer"] = _url(raw, "referrer", web=False)
    event["title"] = _string(raw, "title", MAX_TITLE)
    if kind == "custom":
        name = raw.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            raise BadEvent(f"custom events need a 'name' string of 1 to {MAX_NAME} characters")
        event["name"] = _clean(name)
        event["props"] = _flat_object(raw, "props")
    elif kind in {"outbound", "download"}:
        event["target"] = _url(raw, "target", required=True, web=False)
    elif kind == "search":
        event["query"] = _string(raw, "query", MAX_QUERY, required=True)
    elif kind == "engage":
        seconds = raw.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds <= MAX_ENGAGED_SECONDS
        ):
            raise BadEvent(f"engage events need 'seconds' between 0 and {MAX_ENGAGED_SECONDS}")
        event["seconds"] = int(seconds)
    elif kind == "identify":
        email = raw.get("email")
        if (
            not isinstance(email, str)
            or len(email) > MAX_EMAIL
            or not EMAIL_RE.fullmatch(email.strip())
        ):
            raise BadEvent("identify events need a valid 'email'", "bad_email")
        event["email"] = normalise_email(_clean(email))
        event["traits"] = _flat_object(raw, "traits")
    return {k: v for k, v in event.items() if v is not None}


def parse_batch(body: bytes, max_events: int) -> Batch:
    """Decode and validate a `POST /e` body: one event, or an envelope with `events`."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        # orjson checks the UTF-8 too, lone surrogate escapes included.
        if "UTF-8" in str(e) or "surrogate" in str(e):
            raise BadEvent("the body is not valid UTF-8", "invalid_utf8") from e
        raise BadEvent("the body is not valid JSON", "bad_json") from e
    if not isinstance(document, dict):
        raise BadEvent("the body must be a JSON object")
    site_key = document.get("site")
    if not isinstance(site_key, str) or not SITE_RE.fullmatch(site_key):
        raise BadEvent("'site' must be the site key from `sites create`", "bad_site")
    visitor = document.get("visitor")
    if not isinstance(visitor, str) or not VISITOR_RE.fullmatch(visitor):
        raise BadEvent(
            "'visitor' must be 8 to 64 characters of A-Z, a-z, 0-9, _ or -", "bad_visitor"
        )
    raw_events = document.get("events")
    if raw_events is None:
        raw_events = [document]
    if not isinstance(raw_events, list) or not raw_events:
        raise BadEvent("'events' must be a non-empty list")
    if len(raw_events) > max_events:
        raise BadEvent(f"a batch holds at most {max_events} events", "too_many_events", 413)
    events = [parse_event(raw) for raw in raw_events]
    return Batch(site_key, visitor, document.get("dnt") is True, events)
