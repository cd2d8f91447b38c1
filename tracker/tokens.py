"""Signed tokens in email links: which message (and which of its links) a request is about.

A token is the message id and link position, packed small, followed by a
truncated HMAC-SHA256 that also covers what the token is for, so an open
token cannot be replayed as an unsubscribe token. Nothing in a token is
secret; it only cannot be forged or altered without SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

PURPOSES = frozenset({"open", "click", "unsubscribe", "identify"})
"""What a token may be used for; each purpose signs differently."""

IDENTIFY_PARAM = "cl_c"
"""Query parameter a tracked email link adds to the page it leads to: an identify token,
which ingestion reads from the page's URL to link the browser to the message's contact."""

SIGNATURE_BYTES = 12
"""96 bits of HMAC: forging one token takes ~2^96 tries."""

_SIGNATURE_CHARS = 16  # base64 of 12 bytes, unpadded
_MAX_TOKEN = 64


@dataclass(frozen=True)
class MessageRef:
    """What a valid token names: a message, and a link of it (0 when not a click)."""

    message_id: int
    link: int = 0


def signing_key(secret_key: str) -> bytes:
    """The key email tokens are signed with, derived from SECRET_KEY."""
    return hmac.new(secret_key.encode(), b"closedloop email tokens", hashlib.sha256).digest()


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _read_varints(data: bytes) -> list[int]:
    numbers, value, shift = [], 0, 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise ValueError("number too large")
        if not byte & 0x80:
            numbers.append(value)
            value, shift = 0, 0
    if shift:
        raise ValueError("truncated number")
    return numbers


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signature(key: bytes, purpose: str, payload: bytes) -> bytes:
    return hmac.new(key, purpose.encode() + b":" + payload, hashlib.sha256).digest()[
        :SIGNATURE_BYTES
    ]


def make_token(key: bytes, purpose: str, message_id: int, link: int = 0) -> str:
    """Return the URL-safe token for `purpose` on this message (and link)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    payload = _varint(message_id) + (_varint(link) if link else b"")
    return _b64(payload) + _b64(_signature(key, purpose, payload))


def read_token(key: bytes, purpose: str, token: str) -> MessageRef | None:
    """Return what a token names, or None when it is malformed, altered or for another use."""
    if purpose not in PURPOSES or not 17 <= len(token) <= _MAX_TOKEN:
        return None
    body, signature = token[:-_SIGNATURE_CHARS], token[-_SIGNATURE_CHARS:]
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        numbers = _read_varints(payload)
    except (ValueError, UnicodeEncodeError):
        return None
    if _b64(payload) != body or not hmac.compare_digest(given, _signature(key, purpose, payload)):
        return None
    if len(numbers) == 1:
        return MessageRef(numbers[0])
    if len(numbers) == 2 and numbers[1]:
        return MessageRef(numbers[0], numbers[1])
    return None
