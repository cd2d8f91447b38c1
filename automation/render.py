"""Per-recipient rendering: personalise, track links, add the pixel and unsubscribe, build MIME.

Pure: everything comes in as plain values (the compiled version, the
contact's fields, the settings); nothing here touches the database, Redis or
the app. Templates are compiled once per version and kept for the life of
the worker (versions never change). Links are found with a regular
expression on the rendered output, not an HTML parser per recipient.
"""

from __future__ import annotations

import binascii
import html as htmllib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr
from typing import Any

from jinja2 import meta

from automation.template_source import HTML_ENV, TEXT_ENV, compile_part
from tracker.tokens import make_token


@dataclass(frozen=True)
class CompiledVariant:
    """One variant's parts, compiled, and whether each places the unsubscribe link itself."""

    subject: Any
    html: Any
    text: Any
    html_unsubscribe: bool
    text_unsubscribe: bool


@dataclass(frozen=True)
class CompiledVersion:
    """A template version ready to render many times."""

    version_id: int
    sender: str | None
    reply_to: str | None
    preheader: Any
    variants: dict[str, CompiledVariant]


def _uses(env: Any, source: str, name: str) -> bool:
    return name in meta.find_undeclared_variables(env.parse(source))


def compile_version(
    version_id: int,
    sender: str | None,
    reply_to: str | None,
    preheader: str | None,
    variants: list[dict[str, str]],
) -> CompiledVersion:
    """Compile a stored version (as checked and inlined at save time)."""
    compiled = {
        v["name"]: CompiledVariant(
            subject=compile_part(TEXT_ENV, v["subject"], "subject"),
            html=compile_part(HTML_ENV, v["html"], "html"),
            text=compile_part(TEXT_ENV, v["text"], "text"),
            html_unsubscribe=_uses(HTML_ENV, v["html"], "unsubscribe_url"),
            text_unsubscribe=_uses(TEXT_ENV, v["text"], "unsubscribe_url"),
        )
        for v in variants
    }
    return CompiledVersion(
        version_id,
        sender,
        reply_to,
        compile_part(HTML_ENV, preheader, "preheader") if preheader else None,
        compiled,
    )


_VERSIONS: dict[int, CompiledVersion] = {}
VERSION_CACHE_SIZE = 200
"""Compiled template versions a worker keeps; older ones are compiled again when needed."""


def cached_version(version_id: int, load: Callable[[int], dict[str, Any]]) -> CompiledVersion:
    """The compiled version, from this process's cache or compiled from `load(version_id)`.

    `load` returns the version's sender, reply_to, preheader and variants.
    """
    found = _VERSIONS.get(version_id)
    if found is None:
        row = load(version_id)
        found = compile_version(
            version_id, row["sender"], row["reply_to"], row["preheader"], row["variants"]
        )
        if len(_VERSIONS) >= VERSION_CACHE_SIZE:
            _VERSIONS.pop(next(iter(_VERSIONS)))
        _VERSIONS[version_id] = found
    return found


def forget_versions() -> None:
    """Empty this process's cache of compiled versions (a database emptied under it: tests)."""
    _VERSIONS.clear()


@dataclass(frozen=True)
class RenderSettings:
    """What rendering needs from the configuration."""

    base_url: str
    key: bytes
    default_sender: str
    unsubscribe_mailto: str = ""


@dataclass(frozen=True)
class Rendered:
    """A message ready for SMTP or the outbox."""

    raw: bytes
    subject: str
    links: list[str]
    message_id: str
    sender_address: str


def template_context(
    contact: dict[str, Any], traits: dict[str, Any] | None, owner: dict[str, Any] | None
) -> dict[str, Any]:
    """What templates see as `contact` and `owner`; absent values are left out (render empty)."""
    fields = {k: v for k, v in (traits or {}).items() if v is not None}
    fields.update({k: v for k, v in contact.items() if v is not None})
    result: dict[str, Any] = {"contact": fields}
    if owner:
        result["owner"] = {k: v for k, v in owner.items() if v is not None}
    return result


_HREF = re.compile(r"""(\bhref\s*=\s*)(["'])\s*(https?://[^"'<>\s]+)\s*\2""", re.I)
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+")
_TRAILING = ".,;:!?"
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.I)


class _LinkTracker:
    """Numbers each distinct URL once and turns it into a signed click URL."""

    def __init__(self, settings: RenderSettings, message_id: int, skip: tuple[str, ...]) -> None:
        self.settings = settings
        self.message_id = message_id
        self.skip = skip
        self.tracked: dict[str, str] = {}  # original URL → its click URL, in link order
        self.click = f"{settings.base_url}/c/"

    def url(self, original: str) -> str | None:
        if original.startswith(self.skip):
            return None
        tracked = self.tracked.get(original)
        if tracked is None:
            position = len(self.tracked) + 1
            token = make_token(self.settings.key, "click", self.message_id, position)
            tracked = self.tracked[original] = self.click + token
        return tracked

    def html(self, body: str) -> str:
        def swap(match: re.Match[str]) -> str:
            raw = match.group(3)
            tracked = self.url(htmllib.unescape(raw) if "&" in raw else raw)
            if tracked is None:
                return match.group(0)
            return f"{match.group(1)}{match.group(2)}{tracked}{match.group(2)}"

        return _HREF.sub(swap, body)

    def text(self, body: str) -> str:
        def swap(match: re.Match[str]) -> str:
            found = match.group(0)
            url = found.rstrip(_TRAILING)
            tracked = self.url(url)
            return found if tracked is None else tracked + found[len(url) :]

        return _TEXT_URL.sub(swap, body)


PREHEADER_STYLE = (
    "display:none;font-size:1px;color:#ffffff;line-height:1px;max-height:0;max-width:0;"
    "opacity:0;overflow:hidden;mso-hide:all"
)
"""Hides the preheader in the body; inbox lists still show it next to the subject."""

FOOTER_HTML = (
    '<p style="font-size:12px;color:#888888;text-align:center;margin:24px 0 0">'
    'Don\'t want these emails? <a href="{url}" style="color:#888888">Unsubscribe</a></p>'
)
"""The unsubscribe footer added to HTML bodies that do not place `{{ unsubscribe_url }}`."""

FOOTER_TEXT = "\n\n--\nDon't want these emails? Unsubscribe: {url}\n"
"""The unsubscribe footer added to text bodies that do not place `{{ unsubscribe_url }}`."""


def _insert_after_body_open(html: str, fragment: str) -> str:
    match = _BODY_OPEN.search(html)
    if match is None:
        return fragment + html
    return html[: match.end()] + fragment + html[match.end() :]


def _insert_before_body_close(html: str, fragment: str) -> str:
    at = html.rfind("</body>")
    if at < 0:
        at = html.lower().rfind("</body>")
    return html + fragment if at < 0 else html[:at] + fragment + html[at:]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _header(text: str) -> str:
    """A header value: ASCII as is, anything else RFC 2047-encoded."""
    if text.isascii():
        return text
    return Header(text, "utf-8", maxlinelen=76).encode(linesep="\r\n")


_FROM_HEADERS: dict[str, tuple[str, str]] = {}


def _address_header(value: str) -> tuple[str, str]:
    """(header value, bare address) of "Name <addr>", the name encoded when not ASCII."""
    found = _FROM_HEADERS.get(value)
    if found is None:
        name, address = parseaddr(value)
        found = (formataddr((name, address)) if name else address, address)
        if len(_FROM_HEADERS) < 1000:
            _FROM_HEADERS[value] = found
    return found


def _recipient_header(to_addr: str) -> str:
    """A contact's (normalised) address as is; anything fancier through the parser."""
    if to_addr.isascii() and to_addr.isprintable() and not set(to_addr) & set('<>"(), '):
        return to_addr
    return _address_header(_one_line(to_addr))[0]


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _qp(text: str) -> bytes:
    encoded = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n")


def render_message(
    version: CompiledVersion,
    variant: str,
    *,
    message_id: int,
    to_addr: str,
    context: dict[str, Any],
    settings: RenderSettings,
    track: bool = True,
) -> Rendered:
    """Render one message for one recipient: subject, both bodies, tracking and headers.

    `context` is `template_context(...)`. With `track`, every http(s) link goes
    through `/c/<token>` (its URL kept, by position, in `links`) and the open
    pixel is added; without it (a preview) links stay as written.
    """
    parts = version.variants[variant]
    base = settings.base_url
    unsubscribe_token = make_token(settings.key, "unsubscribe", message_id)
    unsubscribe_url = f"{base}/u/{unsubscribe_token}"
    values = {**context, "unsubscribe_url": unsubscribe_url}

    subject = _one_line(parts.subject.render(values))
    html = parts.html.render(values)
    text = parts.text.render(values)
    if not parts.html_unsubscribe:
        html = _insert_before_body_close(html, FOOTER_HTML.format(url=unsubscribe_url))
    if not parts.text_unsubscribe:
        text = text.rstrip("\n") + FOOTER_TEXT.format(url=unsubscribe_url)
    if version.preheader is not None:
        preheader = version.preheader.render(values).strip()
        if preheader:
            html = _insert_after_body_open(
                html, f'<div style="{PREHEADER_STYLE}">{preheader}</div>'
            )

    links: list[str] = []
    if track:
        tracker = _LinkTracker(settings, message_id, (f"{base}/u/", f"{base}/c/", f"{base}/o/"))
        html = tracker.html(html)
        text = tracker.text(text)
        links = list(tracker.tracked)
        pixel = make_token(settings.key, "open", message_id)
        html = _insert_before_body_close(
            html,
            f'<img src="{base}/o/{pixel}.gif" width="1" height="1" alt="" '
            'style="display:block;border:0;width:1px;height:1px">',
        )

    from_header, sender_address = _address_header(version.sender or settings.default_sender)
    domain = sender_address.rpartition("@")[2].strip("<> ") or "localhost"
    mid = f"<cl.{message_id}.{secrets.token_hex(6)}@{domain}>"
    mailto = _address_header(settings.unsubscribe_mailto or settings.default_sender)[1]
    boundary = f"=_cl_{secrets.token_hex(12)}"
    headers = [
        f"From: {from_header}",
        f"To: {_recipient_header(to_addr)}",
        f"Subject: {_header(subject)}",
        f"Date: {_date()}",
        f"Message-ID: {mid}",
    ]
    if version.reply_to:
        headers.append(f"Reply-To: {_address_header(version.reply_to)[0]}")
    headers += [
        f"List-Unsubscribe: <{unsubscribe_url}>, "
        f"<mailto:{mailto}?subject=unsubscribe-{unsubscribe_token}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    raw = b"".join(
        (
            "\r\n".join(headers).encode(),
            b"\r\n\r\n",
            f"--{boundary}\r\n".encode(),
            b'Content-Type: text/plain; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(text),
            f"\r\n--{boundary}\r\n".encode(),
            b'Content-Type: text/html; charset="utf-8"\r\n',
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n",
            _qp(html),
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    return Rendered(raw, subject, links, mid, sender_address)
