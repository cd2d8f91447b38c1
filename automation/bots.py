"""Tell automated traffic from people, from what the request said about itself.

Pure: a user agent in, a reason or None out.
Flagged events are stored and marked, never dropped, and never earn points.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Ordered: the first matching pattern names the reason.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "headless",
        re.compile(r"headless|phantomjs|slimerjs|electron/|puppeteer|playwright|selenium", re.I),
    ),
    (
        "monitor",
        re.compile(
            r"pingdom|uptimerobot|statuscake|site24x7|newrelicpinger|"
            r"lighthouse|gtmetrix|pagespeed|datadog",
            re.I,
        ),
    ),
    (
        "crawler",
        re.compile(
            r"bot\b|bot/|crawl|spider|slurp|archiver|facebookexternalhit|"
            r"bingpreview|embedly|quora link preview|whatsapp|telegrambot|"
            r"slack-imgproxy|discordbot|yandex|baiduspider|duckduckgo-favicons",
            re.I,
        ),
    ),
    (
        "http_client",
        re.compile(
            r"^(curl|wget|python-requests|python-urllib|python-httpx|aiohttp|"
            r"go-http-client|java/|okhttp|axios|node-fetch|undici|libwww-perl|"
            r"httpclient|apache-httpclient|scrapy|ruby|php)",
            re.I,
        ),
    ),
)


@lru_cache(maxsize=4096)
def bot_reason(user_agent: str | None) -> str | None:
    """Return why this looks automated ("headless", "crawler", …), or None for a person."""
    if not user_agent or len(user_agent) < 10:
        return "no_user_agent"
    for reason, pattern in _PATTERNS:
        if pattern.search(user_agent):
            return reason
    if "Mozilla/" not in user_agent and "Opera/" not in user_agent:
        return "not_a_browser"
    return None
