"""Tell machine opens and scanner clicks from people reading an email.

Pure: what one batch of email events says (and the message's clicks seen
before) in, a reason or None per event out. Flagged events are stored and
counted apart, never dropped; they earn no points and take no branches.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from automation.bots import bot_reason

PREFETCH_SECONDS = 5.0
"""An open this soon after sending was fetched on delivery by a proxy or client, not read."""

SCANNER_FAST_SECONDS = 10.0
"""A click this soon after sending comes from a link scanner: a person must open and read first."""

BURST_SECONDS = 1.0
"""Clicks of different links of one message closer together than this are one scan."""

BURST_LINKS = 2
"""How many different links clicked within `BURST_SECONDS` make a scanner burst."""

# Whoever fetched these is a proxy that fetches images for a mailbox, whether or not
# the person reads: Gmail's and Yahoo's image proxies, Outlook.com's, Apple Mail
# Privacy Protection (which fetches every image as a bare "Mozilla/5.0").
_PROXIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "image_proxy",
        re.compile(
            r"GoogleImageProxy|ggpht\.com|YahooMailProxy|"
            r"OutlookProxy|Outlook-Proxy|Microsoft\.Exchange\.Imaging",
            re.I,
        ),
    ),
    ("privacy_proxy", re.compile(r"^Mozilla/5\.0$|AppleMailPrivacy|icloud-mpp", re.I)),
)

_GATEWAYS = re.compile(
    r"Barracuda|Mimecast|Proofpoint|pphosted|SafeLinks|Safe Links|Microsoft Defender|"
    r"Edge/12\.246|Symantec|Broadcom|MessageLabs|Trend ?Micro|IronPort|Cisco Secure Email|"
    r"FireEye|Trellix|Forcepoint|Sophos|Zscaler|Forti(Guard|Mail|net)|Check ?Point|"
    r"Avanan|Abnormal|Vade ?Secure|SpamTitan|Hornet ?Security|Cloudmark|Agari|Ironscales",
    re.I,
)


@dataclass(frozen=True)
class EmailHit:
    """One open or click as the tracker recorded it, with the time since the message went out."""

    kind: str  # "open" | "click"
    message_id: int
    at: datetime
    user_agent: str | None
    seconds_since_send: float | None = None
    method: str = "GET"
    link: int = 0


@dataclass(frozen=True)
class EarlierClick:
    """A click of a message stored before this batch (for bursts spread over two batches)."""

    message_id: int
    link: int
    at: datetime


@lru_cache(maxsize=4096)
def agent_reason(user_agent: str | None) -> str | None:
    """Why this user agent is a machine's (gateway, proxy, bot), or None for a mail client."""
    agent = (user_agent or "").strip()
    if agent and _GATEWAYS.search(agent):
        return "security_gateway"
    for reason, pattern in _PROXIES:
        if agent and pattern.search(agent):
            return reason
    return bot_reason(user_agent or None)


def hit_reason(hit: EmailHit) -> str | None:
    """What this one event says by itself: method, user agent, time since send."""
    if hit.kind == "click" and hit.method.upper() == "HEAD":
        return "scanner_head"
    reason = agent_reason(hit.user_agent)
    if reason is not None:
        return reason
    if hit.seconds_since_send is not None:
        if hit.kind == "open" and hit.seconds_since_send < PREFETCH_SECONDS:
            return "prefetch"
        if hit.kind == "click" and hit.seconds_since_send < SCANNER_FAST_SECONDS:
            return "scanner_fast"
    return None


def _bursts(hits: Sequence[EmailHit], earlier: Sequence[EarlierClick]) -> set[int]:
    """Indexes of the batch's clicks that fall in a burst of different links of one message."""
    clicks: dict[int, list[tuple[datetime, int, int | None]]] = defaultdict(list)
    for index, hit in enumerate(hits):
        if hit.kind == "click":
            clicks[hit.message_id].append((hit.at, hit.link, index))
    for click in earlier:
        if click.message_id in clicks:
            clicks[click.message_id].append((click.at, click.link, None))
    flagged: set[int] = set()
    for found in clicks.values():
        if len({link for _, link, _ in found}) < BURST_LINKS:
            continue
        for at, _, index in found:
            if index is None:
                continue
            near = {
                link
                for other, link, _ in found
                if abs((other - at).total_seconds()) <= BURST_SECONDS
            }
            if len(near) >= BURST_LINKS:
                flagged.add(index)
    return flagged


def classify(hits: Sequence[EmailHit], earlier: Sequence[EarlierClick] = ()) -> list[str | None]:
    """Return, for each hit in order, why it is a machine's (a bot_reason), or None for a person."""
    reasons = [hit_reason(hit) for hit in hits]
    for index in _bursts(hits, earlier):
        if reasons[index] is None:
            reasons[index] = "scanner_burst"
    return reasons
