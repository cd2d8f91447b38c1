"""Hand mail over: to the SMTP server at SMTP_URL, or, without one, into the outbox table.

One SMTP connection per worker process and server is kept open across
messages and jobs, and reopened when the server dropped it. Failures come
out as `SendFailed`, sorted into what to retry (4xx replies, connection
trouble), what not to (other 5xx) and invalid recipients (the contact bounces).
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import Connection, insert

from tracker.email_models import OutboxMessage
from tracker.errors import ConfigError
from tracker.models import utcnow

SMTP_TIMEOUT_SECONDS = 30
"""How long one SMTP command may take before the attempt counts as a temporary failure."""

IDLE_CHECK_SECONDS = 30
"""A connection idle this long is checked (NOOP) before use; servers drop idle clients."""

INVALID_RECIPIENT_CODES = frozenset({550, 551, 553})
"""Replies to RCPT that mean the address does not exist (with 5.1.x enhanced codes)."""


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


def server_name(smtp_url: str) -> str:
    """host:port of the SMTP server (what the rate limit is kept per); "outbox" without one."""
    if not smtp_url:
        return "outbox"
    settings = parse_smtp_url(smtp_url)
    return f"{settings['host']}:{settings['port']}"


class SendFailed(Exception):
    """The server did not take a message; whether to retry, and whether the address is bad."""

    def __init__(
        self, text: str, temporary: bool, invalid_recipient: bool = False, code: int | None = None
    ) -> None:
        super().__init__(text)
        self.text = text
        self.temporary = temporary
        self.invalid_recipient = invalid_recipient
        self.code = code


_ENHANCED = re.compile(rb"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def classify(code: int, reply: bytes | str, at_recipient: bool) -> SendFailed:
    """Turn an SMTP reply into a SendFailed: 4xx temporary, 5xx permanent, bad address apart."""
    raw = reply if isinstance(reply, bytes) else str(reply).encode()
    text = f"{code} {raw.decode(errors='replace').strip()}"
    if 400 <= code < 500:
        return SendFailed(text, temporary=True, code=code)
    enhanced = _ENHANCED.match(raw)
    bad_address = code in INVALID_RECIPIENT_CODES or (
        enhanced is not None and enhanced.group(1) == b"5" and enhanced.group(2) == b"1"
    )
    return SendFailed(
        text, temporary=False, invalid_recipient=at_recipient and bad_address, code=code
    )


class SmtpSender:
    """One kept-open connection to one SMTP server."""

    def __init__(self, smtp_url: str) -> None:
        self.settings = parse_smtp_url(smtp_url)
        self.smtp: smtplib.SMTP | None = None
        self.last_used = 0.0

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        context = ssl.create_default_context()
        if s["tls"]:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                s["host"], s["port"], timeout=SMTP_TIMEOUT_SECONDS, context=context
            )
        else:
            smtp = smtplib.SMTP(s["host"], s["port"], timeout=SMTP_TIMEOUT_SECONDS)
        try:
            if s["starttls"]:
                smtp.starttls(context=context)
            if s["user"]:
                smtp.login(s["user"], s["password"] or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def close(self) -> None:
        """Say goodbye to the server (or just drop the socket when it is gone)."""
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError):
                self.smtp.close()
            self.smtp = None

    def _ready(self) -> smtplib.SMTP:
        if self.smtp is not None and time.monotonic() - self.last_used > IDLE_CHECK_SECONDS:
            try:
                if self.smtp.noop()[0] != 250:
                    raise smtplib.SMTPServerDisconnected("NOOP refused")
            except (smtplib.SMTPException, OSError):
                self.smtp.close()
                self.smtp = None
        if self.smtp is None:
            self.smtp = self._connect()
        return self.smtp

    def send(self, sender: str, recipient: str, raw: bytes) -> None:
        """Send one message; raise SendFailed when the server did not take it."""
        try:
            smtp = self._ready()
            smtp.sendmail(sender, [recipient], raw)
        except smtplib.SMTPRecipientsRefused as e:
            code, reply = next(iter(e.recipients.values()))
            raise self._after(classify(code, reply, at_recipient=True)) from e
        except smtplib.SMTPSenderRefused as e:
            raise self._after(classify(e.smtp_code, e.smtp_error, at_recipient=False)) from e
        except smtplib.SMTPDataError as e:
            raise self._after(classify(e.smtp_code, e.smtp_error, at_recipient=False)) from e
        except smtplib.SMTPResponseException as e:
            # Greeting, EHLO, STARTTLS or login refused: about the server, not this message.
            self._drop()
            failed = classify(e.smtp_code, e.smtp_error, at_recipient=False)
            raise SendFailed(
                f"server refused the session: {failed.text}", True, code=e.smtp_code
            ) from e
        except (smtplib.SMTPException, OSError) as e:
            self._drop()
            raise SendFailed(f"connection failed: {type(e).__name__}: {e}", temporary=True) from e
        finally:
            self.last_used = time.monotonic()

    def send_message(self, message: EmailMessage) -> None:
        """Send a ready-made message; smtplib's errors propagate (the caller retries)."""
        sender = parseaddr(str(message["From"]))[1]
        try:
            self._ready().send_message(message, sender, [parseaddr(str(message["To"]))[1]])
        except (smtplib.SMTPException, OSError):
            self._drop()
            raise
        finally:
            self.last_used = time.monotonic()

    def _after(self, failed: SendFailed) -> SendFailed:
        if failed.code == 421:  # the server is closing the connection
            self._drop()
        return failed

    def _drop(self) -> None:
        if self.smtp is not None:
            self.smtp.close()
            self.smtp = None


_SENDERS: dict[str, SmtpSender] = {}


def smtp_sender(smtp_url: str) -> SmtpSender:
    """This process's connection to the server at `smtp_url`, kept across messages and jobs."""
    sender = _SENDERS.get(smtp_url)
    if sender is None:
        sender = _SENDERS[smtp_url] = SmtpSender(smtp_url)
    return sender


def close_all() -> None:
    """Close every kept connection (tests, and a worker shutting down)."""
    while _SENDERS:
        _SENDERS.popitem()[1].close()


def keep_in_outbox(
    conn: Connection, raw: bytes | str, to_addr: str, subject: str, message_id: int | None = None
) -> int:
    """Store a message in the outbox table instead of sending it; return the outbox id."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return conn.execute(
        insert(OutboxMessage.__table__).values(
            message_id=message_id,
            to_addr=to_addr[:320],
            subject=subject[:500],
            raw=text,
            created_at=utcnow(),
        )
    ).inserted_primary_key[0]


def send(message: EmailMessage, smtp_url: str | None, conn: Connection | None = None) -> str:
    """Send a ready-made message (a notification) now; return its Message-ID.

    Without `smtp_url` it goes to the outbox table, through `conn` or, when
    none is given, a transaction of its own on the app's database.
    """
    if not message["Message-ID"]:
        _, address = parseaddr(str(message["From"] or ""))
        message["Message-ID"] = make_msgid(domain=address.rpartition("@")[2] or "localhost")
    if not smtp_url:
        raw, to, subject = message.as_bytes(), str(message["To"]), str(message["Subject"] or "")
        if conn is not None:
            keep_in_outbox(conn, raw, to, subject)
        else:
            from tracker.db import db

            with db.engine.begin() as own:
                keep_in_outbox(own, raw, to, subject)
        return message["Message-ID"]
    smtp_sender(smtp_url).send_message(message)
    return message["Message-ID"]
