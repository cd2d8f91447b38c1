"""Turn stamped events from the stream into table rows. Pure: dicts in, dicts out."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from automation.bots import bot_reason
from tracker.tokens import IDENTIFY_PARAM

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
CLICK_IDS = (
    "gclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "msclkid",
    "li_fat_id",
    "ttclid",
    "twclid",
    "dclid",
    "yclid",
    "mc_cid",
)
MAX_TAG = 200


class MalformedEntry(ValueError):
    """A stream entry that cannot become a row; it is dead-lettered, not retried forever."""


def campaign_fields(url: str | None) -> dict[str, str]:
    """Return the UTM parameters and the first ad click id found in `url`'s query."""
    if not url or "?" not in url:
        return {}
    try:
        query = urlsplit(url).query
    except ValueError:
        return {}
    if "utm_" not in query and "clid" not in query and "_id" not in query and "braid" not in query:
        return {}
    found: dict[str, str] = {}
    for name, value in parse_qsl(query):
        name = name.lower()
        if name in UTM_FIELDS and name not in found and value:
            found[name] = value[:MAX_TAG]
        elif name in CLICK_IDS and "click_id" not in found and value:
            found["click_id"] = f"{name}:{value}"[:300]
    return found


def _path(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).path or "/"
    except ValueError:
        return None


@dataclass
class VisitorTouch:
    """What one batch says about one visitor: first and last sighting, and the first touch."""

    site_id: int
    key: str
    first_seen: datetime
    last_seen: datetime
    landing: dict[str, Any] = field(default_factory=dict)
    user_agent: str | None = None
    is_bot: bool = False


EMAIL_TYPES = frozenset({"email_open", "email_click"})
"""Entry types the email link endpoints write: they name a message, not a site and visitor."""


def email_row(entry: dict[str, Any]) -> dict[str, Any]:
    """Return the `events` row for an email open or click; ingestion fills in the message's part.

    The row's `email_message`, `email_link` and `email_method` keys are not
    columns: storing resolves them against the message and removes them.
    """
    try:
        user_agent = entry.get("ua") or None
        row = {
            "uuid": uuid.UUID(entry["id"]),
            "site_id": None,
            "visitor_key": None,
            "type": entry["type"],
            "target": entry.get("target") if entry["type"] == "email_click" else None,
            "ip": entry.get("ip") or None,
            "user_agent": user_agent,
            "occurred_at": datetime.fromtimestamp(float(entry["at"]), UTC),
            "email_message": int(entry["message"]),
            "email_link": int(entry.get("link") or 0),
            "email_method": str(entry.get("method") or "GET"),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise MalformedEntry(f"email entry cannot be stored: {e!r}") from e
    for name in ("name", "url", "path", "title", "referrer", "query", "seconds", "email", "props"):
        row[name] = None
    for name in (*UTM_FIELDS, "click_id", "bot_reason"):
        row[name] = None
    row["is_bot"] = False
    return row


def identity_token(url: str | None) -> str | None:
    """Return the `cl_c` identify token in a page URL's query, if there is one."""
    if not url or IDENTIFY_PARAM + "=" not in url:
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    for name, value in parse_qsl(query):
        if name == IDENTIFY_PARAM and value:
            return value
    return None


def event_row(entry: dict[str, Any]) -> dict[str, Any]:
    """Return the `events` row for one stamped event (contact and visitor ids filled later)."""
    if isinstance(entry, dict) and entry.get("type") in EMAIL_TYPES:
        return email_row(entry)
    try:
        kind = entry["type"]
        url = entry.get("url")
        user_agent = entry.get("ua") or None
        reason = bot_reason(user_agent)
        props = entry.get("props") if kind != "identify" else entry.get("traits")
        row = {
            "uuid": uuid.UUID(entry["id"]),
            "site_id": int(entry["site"]),
            "visitor_key": str(entry["visitor"]),
            "type": kind,
            "name": entry.get("name"),
            "url": url,
            "path": _path(url),
            "title": entry.get("title"),
            "referrer": entry.get("referrer"),
            "target": entry.get("target"),
            "query": entry.get("query"),
            "seconds": entry.get("seconds"),
            "email": entry.get("email"),
            "props": props,
            "ip": entry.get("ip") or None,
            "user_agent": user_agent,
            "is_bot": reason is not None,
            "bot_reason": reason,
            "occurred_at": datetime.fromtimestamp(float(entry["at"]), UTC),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise MalformedEntry(f"stream entry cannot be stored: {e!r}") from e
    for name in (*UTM_FIELDS, "click_id"):
        row[name] = None
    row.update(campaign_fields(url))
    return row


def visitor_touches(rows: list[dict[str, Any]]) -> list[VisitorTouch]:
    """Fold a batch's event rows into one touch per (site, visitor), sorted for stable locking."""
    touches: dict[tuple[int, str], VisitorTouch] = {}
    for row in rows:
        if row["site_id"] is None:  # email events have no visitor
            continue
        key = (row["site_id"], row["visitor_key"])
        at = row["occurred_at"]
        touch = touches.get(key)
        if touch is None or at < touch.first_seen:
            landing = {
                "landing_url": row["url"],
                "referrer": row["referrer"],
                "click_id": row["click_id"],
                **{name: row[name] for name in UTM_FIELDS},
            }
            if touch is None:
                touches[key] = VisitorTouch(
                    row["site_id"],
                    row["visitor_key"],
                    at,
                    at,
                    landing,
                    row["user_agent"],
                    row["is_bot"],
                )
                continue
            touch.first_seen, touch.landing = at, landing
        if at >= touch.last_seen:
            touch.last_seen, touch.user_agent = at, row["user_agent"]
        touch.is_bot = touch.is_bot or row["is_bot"]
    return [touches[k] for k in sorted(touches)]


def identities(rows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """Return, per (site, visitor), the last identify in the batch: email and traits."""
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["occurred_at"]):
        if row["type"] == "identify" and row["email"]:
            found[(row["site_id"], row["visitor_key"])] = {
                "email": row["email"],
                "traits": row["props"] or {},
            }
    return found
