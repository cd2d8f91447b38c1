"""The snippet in a real browser: Debian's chromium, driven by Playwright.

The demo website is served from one origin and the tracker from another, as on
a customer's site; the test then reads what reached the database.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.conftest import ingest_all
from tracker.db import db
from tracker.demo import create_demo_app
from tracker.models import Contact, Event, Visitor
from tracker.redis_conn import free_port, get_redis

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def sites_up(app, site) -> Iterator[tuple[str, str]]:
    """The tracker on localhost:P, the demo website on 127.0.0.1:Q — two origins."""
    tracker_port, demo_port = free_port(), free_port()
    tracker = make_server("127.0.0.1", tracker_port, app, threaded=True)
    tracker_url = f"http://localhost:{tracker_port}"
    demo = make_server(
        "127.0.0.1", demo_port, create_demo_app(tracker_url, site.key), threaded=True
    )
    for server in (tracker, demo):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tracker_url, f"http://127.0.0.1:{demo_port}"
    tracker.shutdown()
    demo.shutdown()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def stored_events(app, until: Any, timeout: float = 20.0) -> list[Event]:
    """Ingest until `until(events)` holds (beacons are asynchronous), then return the events."""
    deadline = time.monotonic() + timeout
    while True:
        ingest_all(app)
        with app.app_context():
            events = db.session.scalars(select(Event).order_by(Event.occurred_at, Event.id)).all()
            db.session.expunge_all()
        if until(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def test_a_visit_is_recorded_end_to_end_and_tied_to_one_contact(app, sites_up, browser):
    _, demo_url = sites_up
    context = browser.new_context(accept_downloads=True)
    # The outbound link points off this machine; answer it locally.
    context.route("https://example.org/**", lambda route: route.fulfill(body="elsewhere"))
    page = context.new_page()

    page.goto(demo_url + "/")
    page.click("#track")  # closedloop('track', 'video_play', {video: 'intro'})
    with page.expect_download():
        page.click("#download")
    page.click("#outbound")
    page.wait_for_url("https://example.org/**")

    page.goto(demo_url + "/app")
    page.click("#step-2")  # pushState: a pageview without a page load
    page.wait_for_url("**/app/step-2")
    page.goto(demo_url + "/pricing?q=enterprise")
    page.wait_for_timeout(1200)  # the batch timer sends these; page hides send the rest

    page.goto(demo_url + "/contact")
    page.fill("input[name=first_name]", "Ada")
    page.fill("input[name=email]", "Ada@Example.com")
    page.fill("input[name=company]", "Analytical Engines")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/thanks")
    page.wait_for_timeout(1500)
    context.close()  # page hide: the snippet flushes what is left

    wanted_paths = {"/", "/app", "/app/step-2", "/pricing", "/contact", "/thanks"}
    wanted_kinds = {"custom", "download", "outbound", "identify", "search"}

    def missing(events: list[Event]) -> set[str]:
        paths = {e.path for e in events if e.type == "pageview"}
        kinds = {e.type for e in events}
        return {f"pageview {p}" for p in wanted_paths - paths} | (wanted_kinds - kinds)

    events = stored_events(app, lambda events: not missing(events))
    assert not missing(events), f"never stored: {sorted(missing(events))}"

    by_type = {e.type: e for e in events}
    assert by_type["custom"].name == "video_play" and by_type["custom"].props == {"video": "intro"}
    assert by_type["download"].target.endswith("/files/whitepaper.pdf")
    assert by_type["outbound"].target.startswith("https://example.org/widgets-review")
    assert by_type["search"].query == "enterprise"
    assert by_type["identify"].email == "ada@example.com"
    step = next(e for e in events if e.path == "/app/step-2")
    assert step.url == demo_url + "/app/step-2"

    with app.app_context():
        (contact,) = db.session.scalars(select(Contact)).all()
        (visitor,) = db.session.scalars(select(Visitor)).all()
    assert contact.email == "ada@example.com"
    assert (contact.first_name, contact.company) == ("Ada", "Analytical Engines")
    assert visitor.contact_id == contact.id
    assert visitor.landing_url == demo_url + "/"
    # Every event, including those before the form, belongs to the one contact.
    assert {e.contact_id for e in events} == {contact.id}
    assert {e.visitor_id for e in events} == {visitor.id}
    # The password field is never read.
    assert all(PASSWORD not in repr(vars(e)) for e in events)
    assert PASSWORD not in repr(contact.traits)


def test_consent_mode_stores_nothing_until_consent(app, sites_up, browser):
    _, demo_url = sites_up
    context = browser.new_context()
    page = context.new_page()
    page.goto(demo_url + "/?consent=required")
    page.wait_for_timeout(1500)
    assert context.cookies() == []
    assert page.evaluate("localStorage.length") == 0
    assert stored_events(app, lambda events: False, timeout=0.5) == []

    page.click("#consent")
    events = stored_events(app, lambda events: len(events) >= 1)
    assert [e.type for e in events] == ["pageview"]
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    with app.app_context():
        (visitor,) = db.session.scalars(select(Visitor)).all()
    assert cookies["_cl_vid"] == visitor.key
    assert page.evaluate("localStorage.getItem('_cl_vid')") == visitor.key
    context.close()


def test_do_not_track_sends_nothing_when_the_site_respects_it(app, sites_up, browser):
    tracker_url, demo_url = sites_up
    context = browser.new_context()
    context.add_init_script(
        "Object.defineProperty(navigator, 'globalPrivacyControl', {get: () => true})"
    )
    page = context.new_page()
    posts: list[str] = []
    page.on(
        "request", lambda r: posts.append(r.url) if r.url.startswith(tracker_url + "/e") else None
    )
    page.goto(demo_url + "/?dnt=respect")
    page.click("#track")
    page.wait_for_timeout(1500)
    context.close()
    assert posts == []
    assert get_redis(app).xlen(app.config["EVENT_STREAM"]) == 0
