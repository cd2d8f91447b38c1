"""Call a webhook: JSON body, HMAC-SHA256 signature, a clear verdict on failure."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 10
"""How long one webhook call may take."""

DISABLE_AFTER_FAILURES = 10
"""Consecutive failed calls after which a webhook is switched off."""

SIGNATURE_HEADER = "X-ClosedLoop-Signature"
TIMESTAMP_HEADER = "X-ClosedLoop-Timestamp"


class WebhookFailed(Exception):
    """The endpoint did not answer 2xx; the message says what it did."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: HMAC-SHA256 of "<timestamp>.<body>" with the secret.

    Receivers recompute it, compare in constant time, and refuse old timestamps.
    """
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def deliver(url: str, secret: str, payload: dict[str, Any], event_id: str) -> int:
    """POST the payload; return the status, or raise WebhookFailed."""
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "ClosedLoop-Webhook/1",
            "X-ClosedLoop-Delivery": event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as e:
        raise WebhookFailed(f"{url} answered {e.code}") from e
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise WebhookFailed(f"{url} could not be reached: {e}") from e
