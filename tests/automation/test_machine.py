"""Machine opens and scanner clicks: the pure classifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from automation.machine import (
    BURST_SECONDS,
    PREFETCH_SECONDS,
    SCANNER_FAST_SECONDS,
    EarlierClick,
    EmailHit,
    agent_reason,
    classify,
)

HUMAN = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0 Safari/537.36"
)
APPLE_MAIL = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def hit(kind: str = "open", at: float = 0.0, since: float | None = 3600.0, **fields) -> EmailHit:
    fields.setdefault("user_agent", HUMAN)
    return EmailHit(
        kind=kind,
        message_id=fields.pop("message_id", 1),
        at=T0 + timedelta(seconds=at),
        seconds_since_send=since,
        **fields,
    )


def test_a_person_opening_and_clicking_later_is_human() -> None:
    assert classify([hit("open"), hit("click", at=30, link=1)]) == [None, None]
    assert classify([hit("open", user_agent=APPLE_MAIL)]) == [None]


@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
            "(via ggpht.com GoogleImageProxy)",
            "image_proxy",
        ),
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "image_proxy"),
        ("Mozilla/5.0", "privacy_proxy"),
        ("Barracuda Sentinel (EE)", "security_gateway"),
        ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "security_gateway"),
        ("Proofpoint URL Defense", "security_gateway"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246",
            "security_gateway",
        ),
        ("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/130.0 Safari/537.36", "headless"),
        ("python-requests/2.32", "http_client"),
        (None, "no_user_agent"),
    ],
)
def test_known_machine_user_agents_are_named(user_agent: str | None, reason: str) -> None:
    assert agent_reason(user_agent) == reason
    assert classify([hit("open", user_agent=user_agent)]) == [reason]


def test_an_open_seconds_after_sending_is_a_prefetch() -> None:
    early, late = PREFETCH_SECONDS - 1, PREFETCH_SECONDS + 1
    assert classify([hit("open", since=early), hit("open", since=late)]) == ["prefetch", None]


def test_a_click_seconds_after_sending_is_a_scanner() -> None:
    early, late = SCANNER_FAST_SECONDS - 1, SCANNER_FAST_SECONDS + 1
    reasons = classify([hit("click", since=early, link=1), hit("click", at=60, since=late, link=1)])
    assert reasons == ["scanner_fast", None]


def test_a_head_request_is_a_scanner_whatever_it_claims_to_be() -> None:
    assert classify([hit("click", method="HEAD", link=1)]) == ["scanner_head"]


def test_every_link_at_once_is_a_burst_but_one_link_twice_is_not() -> None:
    burst = [hit("click", at=0.1 * n, link=n) for n in (1, 2, 3)]
    assert classify(burst) == ["scanner_burst"] * 3
    double_click = [hit("click", at=0, link=1), hit("click", at=0.3, link=1)]
    assert classify(double_click) == [None, None]
    apart = [hit("click", at=0, link=1), hit("click", at=BURST_SECONDS + 5, link=2)]
    assert classify(apart) == [None, None]


def test_bursts_are_per_message() -> None:
    hits = [hit("click", at=0, link=1, message_id=1), hit("click", at=0.2, link=2, message_id=2)]
    assert classify(hits) == [None, None]


def test_a_burst_can_start_in_an_earlier_batch() -> None:
    earlier = [EarlierClick(1, 1, T0)]
    assert classify([hit("click", at=0.4, link=2)], earlier) == ["scanner_burst"]
    assert classify([hit("click", at=0.4, link=2)], [EarlierClick(9, 1, T0)]) == [None]


def test_an_unsent_message_is_judged_by_its_user_agent_alone() -> None:
    assert classify([hit("open", since=None)]) == [None]
