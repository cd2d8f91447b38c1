"""Send mail: over SMTP when SMTP_URL is set, else into a local outbox folder."""

from __future__ import annotations

import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tracker.errors import ConfigError


def parse_smtp_url(url: str) -> dict[str, object]:
    """Read smtp://user:pass@host:port[?starttls=1] or smtps://… into connection settings."""
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ConfigError(
            f"SMTP_URL={url!r} is not smtp://[user:password@]host[:port][?starttls=1] or smtps://…"
        )
    query = parse_qs(parts.query)
    return {
        "host": parts.hostname,
        "port": parts.port or (465 if parts.scheme == "smtps" else 25),
        "tls": parts.scheme == "smtps",
        "starttls": query.get("starttls", ["0"])[0] in {"1", "true", "yes"},
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


def send(message: EmailMessage, smtp_url: str | None, outbox: Path) -> str:
    """Send `message`; return its Message-ID."""
    if not message["Message-ID"]:
        message["Message-ID"] = make_msgid(domain="closedloop.local")
    if not smtp_url:
        outbox.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}.eml"
        (outbox / name).write_bytes(message.as_bytes())
        return message["Message-ID"]
    settings = parse_smtp_url(smtp_url)
    context = ssl.create_default_context()
    smtp_class = smtplib.SMTP_SSL if settings["tls"] else smtplib.SMTP
    kwargs = {"context": context} if settings["tls"] else {}
    with smtp_class(settings["host"], settings["port"], timeout=30, **kwargs) as smtp:
        if settings["starttls"]:
            smtp.starttls(context=context)
        if settings["user"]:
            smtp.login(settings["user"], settings["password"] or "")
        smtp.send_message(message)
    return message["Message-ID"]
