"""The email that tells a salesperson a lead is theirs, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Any


@dataclass(frozen=True)
class Reason:
    """One interaction that earned points."""

    rule: str
    delta: int
    event_type: str | None
    detail: str | None
    at: datetime


def _one_line(text: str) -> str:
    """Visitor-typed text made safe for a header or a line: no control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def owner_notification(
    contact: dict[str, Any],
    owner: dict[str, Any],
    threshold: str,
    reasons: Sequence[Reason],
    sender: str,
    base_url: str,
) -> EmailMessage:
    """A plain-text message: who the lead is, their scores, and what earned the points."""
    name = _one_line(
        " ".join(p for p in (contact.get("first_name"), contact.get("last_name")) if p)
    )
    email = _one_line(contact["email"])
    who = f"{name} <{email}>" if name else email
    total = contact["engagement_score"] + contact["fit_score"]
    lines = [
        f"Hello {owner['name']},",
        "",
        f"{who} crossed the threshold {threshold!r} and is now yours.",
        "",
        f"Company:    {_one_line(contact.get('company') or '-')}",
        f"Stage:      {contact['stage']}",
        f"Score:      {total} (engagement {contact['engagement_score']}, "
        f"fit {contact['fit_score']})",
        "",
        "What earned the points, most recent first:",
    ]
    for reason in reasons:
        what = _one_line(" ".join(p for p in (reason.event_type, reason.detail) if p))
        lines.append(
            f"  {reason.delta:+d}  {reason.rule}  ({what}, {reason.at:%Y-%m-%d %H:%M} UTC)"
        )
    if not reasons:
        lines.append("  (no interactions recorded yet)")
    lines += [
        "",
        f"Full history: flask --app wsgi contacts show {contact['email']}",
        f"Closed Loop · {base_url}",
    ]
    message = EmailMessage()
    message["Subject"] = f"New lead for you: {who} (score {total})"
    message["From"] = sender
    message["To"] = owner["email"]
    message.set_content("\n".join(lines))
    return message
