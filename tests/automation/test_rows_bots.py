"""The pure parts of ingestion: campaign fields from URLs, bot reasons, visitor touches."""

from __future__ import annotations

import uuid

import pytest

from automation.bots import bot_reason
from automation.rows import MalformedEntry, campaign_fields, event_row, visitor_touches


def test_campaign_fields_read_utm_and_the_first_click_id():
    url = (
        "https://acme.test/?utm_source=Google&UTM_MEDIUM=cpc&utm_campaign=fall%20sale"
        "&fbclid=fb1&gclid=g1"
    )
    assert campaign_fields(url) == {
        "utm_source": "Google",
        "utm_medium": "cpc",
        "utm_campaign": "fall sale",
        "click_id": "fbclid:fb1",
    }
    assert campaign_fields("https://acme.test/pricing") == {}
    assert campaign_fields("https://acme.test/?q=utm_") == {}
    assert campaign_fields(None) == {}


@pytest.mark.parametrize(
    "agent,reason",
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/130.0.0.0 Safari/537.36",
            None,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            None,
        ),
        ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "crawler"),
        ("facebookexternalhit/1.1", "crawler"),
        ("Mozilla/5.0 HeadlessChrome/120.0", "headless"),
        ("python-requests/2.31", "http_client"),
        ("Mozilla/5.0 (compatible; UptimeRobot/2.0)", "monitor"),
        ("", "no_user_agent"),
        (None, "no_user_agent"),
        ("SomethingCustom/1.0 (no browser token)", "not_a_browser"),
    ],
)
def test_bot_reason(agent, reason):
    assert bot_reason(agent) == reason


def stamped(**fields):
    entry = {
        "id": str(uuid.uuid4()),
        "type": "pageview",
        "url": "https://acme.test/",
        "site": 1,
        "visitor": "v-00000001",
        "at": 1_700_000_000.0,
        "ua": "Mozilla/5.0 Chrome/130",
        "ip": "203.0.113.1",
    }
    entry.update(fields)
    return entry


@pytest.mark.parametrize(
    "broken", [{"id": "nope"}, {"at": "yesterday"}, {"site": None}, {"visitor": None, "type": None}]
)
def test_event_row_refuses_entries_it_cannot_store(broken):
    entry = {k: v for k, v in stamped(**broken).items() if v is not None}
    with pytest.raises(MalformedEntry):
        event_row(entry)


def test_visitor_touch_keeps_the_earliest_event_as_first_touch():
    later = event_row(stamped(at=1_700_000_100.0, url="https://acme.test/b?utm_source=late"))
    earlier = event_row(stamped(at=1_700_000_000.0, url="https://acme.test/a?utm_source=early"))
    (touch,) = visitor_touches([later, earlier])
    assert touch.landing["landing_url"] == "https://acme.test/a?utm_source=early"
    assert touch.landing["utm_source"] == "early"
    assert touch.last_seen > touch.first_seen


def test_visitor_typed_text_cannot_break_out_of_a_header_or_a_terminal():
    from datetime import UTC, datetime

    from automation.notify import Reason, owner_notification
    from tracker.cli import printable

    contact = {
        "email": "ada@example.com",
        "first_name": "Ada\r\nBcc: all@evil.test",
        "last_name": None,
        "company": "\x1b[31mAcme",
        "stage": "mql",
        "engagement_score": 40,
        "fit_score": 10,
    }
    message = owner_notification(
        contact,
        {"name": "Sam", "email": "sam@acme.test"},
        "MQL",
        [Reason("Pricing", 10, "pageview", "/pricing\x1b[2J", datetime(2026, 1, 1, tzinfo=UTC))],
        "Closed Loop <cl@acme.test>",
        "https://cl.acme.test",
    )
    assert message["Bcc"] is None
    assert "\r" not in message["Subject"] and "\n" not in message["Subject"]
    assert "\x1b" not in message.get_content()
    assert printable("visit \x1b[2J/pricing\r") == "visit ?[2J/pricing?"
