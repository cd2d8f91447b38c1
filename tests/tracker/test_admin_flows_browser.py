"""The whole loop through the admin in Chromium, with screenshots of the main pages.

A marketer configures scoring, a threshold, a segment, a template, a sequence
and a campaign through the admin's forms; a visitor arrives on the demo site
with the campaign's UTM code and identifies through the real snippet; the
contact joins the segment, is enrolled and mailed, crosses the MQL threshold
and is assigned to a salesperson, who accepts, converts and wins it; the ROI
report then shows the revenue. A second test stores script in everything a
visitor or marketer can type and proves no page of the admin runs it.

Screenshots go to `tmp_path/screenshots`, and also to the directory named by
CLOSEDLOOP_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.conftest import BROWSER_UA, event, ingest_all, make_user, post_events
from tests.tracker.test_snippet_browser import CHROMIUM, CHROMIUM_ARGS, sites_up  # noqa: F401
from tracker.automation_models import Segment
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, Message
from tracker.models import Contact, Event
from tracker.redis_conn import free_port
from tracker.sales_models import Campaign, ContactNote, Opportunity

pytestmark = pytest.mark.browser

PASSWORD = "correct horse 9"
TIMEOUT_MS = 60_000
"""Generous waits: two shared cores run the server, the browser and the test."""

RULE = "name: Visited pricing\nevent: pageview\nwhen:\n  path: /pricing\npoints: 30\n"
THRESHOLD = (
    "name: Marketing qualified\nat_least: 50\nactions:\n  - set_stage: mql\n"
    "  - assign_owner: sales@example.com\n"
)
SEGMENT = (
    "name: Engaged leads\nmatch:\n  all:\n    - stage: {in: [lead, mql]}\n"
    "    - score: {kind: total, gte: 20}\n"
)
SEQUENCE = "name: Welcome series\nentry:\n  segment: Engaged leads\nsteps:\n  - send: welcome\n"
CODE = "spring-launch"


class Screenshots:
    """Full-page screenshots kept under tmp_path, copied to $CLOSEDLOOP_SCREENSHOTS if set."""

    def __init__(self, tmp_path: Path) -> None:
        self.directory = tmp_path / "screenshots"
        self.directory.mkdir()
        extra = os.environ.get("CLOSEDLOOP_SCREENSHOTS")
        self.copy_to = Path(extra) if extra else None
        if self.copy_to is not None:
            self.copy_to.mkdir(parents=True, exist_ok=True)
        self.taken: list[str] = []

    def take(self, page: Any, name: str) -> None:
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0
        if self.copy_to is not None:
            shutil.copy(path, self.copy_to / path.name)
        self.taken.append(name)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Chromium that says it is a desktop browser everywhere.

    HeadlessChrome is rightly flagged as a bot, and a context's user agent
    override does not reach the beacons a page sends while it unloads.
    """
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = [*CHROMIUM_ARGS, f"--user-agent={BROWSER_UA}"]
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path: Path) -> Screenshots:
    return Screenshots(tmp_path)


def new_page(browser: Any) -> tuple[Any, list[str]]:
    """A page in a fresh context, with every dialog recorded (and dismissed)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    return page, dialogs


def log_in(page: Any, base: str, email: str) -> None:
    page.goto(f"{base}/admin/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/admin/")


def log_out(page: Any, base: str) -> None:
    page.click("header button:has-text('Log out')")
    page.wait_for_url(f"{base}/admin/login")


def save_yaml(page: Any, base: str, path: str, text: str, saved_url: str) -> None:
    """Type an item's YAML on a configuration page and save it."""
    page.goto(base + path)
    page.fill("#item", text)
    page.click("button[value=save]")
    page.wait_for_url(saved_url)
    assert page.locator("#problems").count() == 0


def wait_until(app: Any, check: Callable[[], Any], timeout: float = 60.0) -> None:
    """Ingest what the snippet sent until `check()` is true (beacons arrive when they arrive).

    `check` returns something true when done, else something false that says what it sees.
    """
    deadline = time.monotonic() + timeout
    while True:
        ingest_all(app)
        with app.app_context():
            seen = check()
            db.session.remove()
        if seen is True:
            return
        assert time.monotonic() < deadline, f"never got there; last seen: {seen!r}"
        time.sleep(0.2)


def roi_row(page: Any, base: str, name: str) -> dict[str, str]:
    """The ROI table's row of a campaign (first-touch model), as header → cell text."""
    page.goto(f"{base}/admin/reports/roi?model=first")
    headers = [h.strip() for h in page.locator("#roi thead th").all_inner_texts()]
    row = page.locator("#roi tbody tr", has_text=name)
    assert row.count() == 1
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    return dict(zip(headers, cells, strict=True))


def test_the_loop_from_configuration_to_revenue_in_chromium(
    app,
    site,
    sites_up,  # noqa: F811
    browser,
    shots,
):
    base, demo = sites_up
    make_user(app, "marketer", password=PASSWORD)
    make_user(app, "sales", password=PASSWORD)
    page, dialogs = new_page(browser)

    # The marketer sets the loop up through the admin's forms.
    log_in(page, base, "marketer@example.com")
    shots.take(page, "home")
    page.goto(f"{base}/admin/configure")
    shots.take(page, "configure")
    save_yaml(page, base, "/admin/configure/rules/new", RULE, "**/configure/rules/*?saved=1")
    save_yaml(page, base, "/admin/configure/thresholds/new", THRESHOLD, "**/thresholds/*?saved=1")

    page.goto(f"{base}/admin/segments/new")
    page.fill("#item", SEGMENT)
    page.click("button[value=preview]")
    page.wait_for_selector("#preview")
    assert "0 contacts match now" in page.inner_text("#preview")
    page.click("button[value=save]")
    page.wait_for_url("**/admin/segments/*?saved=1")
    segment_url = page.url.split("?")[0]

    page.goto(f"{base}/admin/templates/new")
    page.fill("#name", "welcome")
    page.fill("#subjects", "Welcome, {{ contact.first_name }}")
    page.fill(
        "#html",
        '<p>Hi {{ contact.first_name }}, see <a href="https://example.com/pricing">prices</a>.</p>',
    )
    page.click("button:has-text('Save')")
    page.wait_for_url("**/admin/templates/*?saved=1")
    template_url = page.url.split("?")[0]
    page.wait_for_selector("iframe[title='Rendered HTML']")
    assert page.inner_text("#preview-subject").startswith("Welcome, ")

    save_yaml(page, base, "/admin/sequences/new", SEQUENCE, "**/admin/sequences/*?saved=1")
    sequence_url = page.url.split("?")[0]

    today = date.today()
    page.goto(f"{base}/admin/campaigns/new")
    page.fill("#name", "Spring launch")
    page.select_option("#channel", "email")
    page.fill("#utm_campaigns", CODE)
    page.select_option("#template_ids", label="welcome")
    page.fill("#starts_on", (today - timedelta(days=10)).isoformat())
    page.fill("#ends_on", (today + timedelta(days=19)).isoformat())
    page.fill("#cost", "1000")
    page.click("form button:has-text('Save')")
    page.wait_for_url("**/admin/campaigns/*?saved=1")
    assert page.locator(".error").count() == 0

    # A visitor arrives from the campaign on the demo site, reads the prices, identifies.
    visitor = browser.new_context()
    visit = visitor.new_page()
    visit.set_default_timeout(TIMEOUT_MS)
    visit.goto(f"{demo}/?utm_source=newsletter&utm_medium=email&utm_campaign={CODE}")
    visit.goto(f"{demo}/pricing")
    visit.goto(f"{demo}/contact")
    visit.fill("input[name=first_name]", "Ada")
    visit.fill("input[name=email]", "ada@example.com")
    visit.fill("input[name=company]", "Analytical Engines")
    visit.click("button[type=submit]")
    visit.wait_for_url("**/thanks")
    visit.goto(f"{demo}/pricing")
    visit.goto(f"{demo}/")
    visitor.close()  # page hide: the snippet sends what is left

    def qualified() -> Any:
        contact = db.session.scalar(select(Contact).where(Contact.email == "ada@example.com"))
        if contact is not None and contact.stage == "mql" and contact.owner_id is not None:
            return True
        events = db.session.execute(select(Event.type, Event.path, Event.bot_reason)).all()
        return contact and (contact.stage, contact.score), [tuple(e) for e in events]

    wait_until(app, qualified)
    with app.app_context():
        from automation import jobs

        contact = db.session.scalar(select(Contact).where(Contact.email == "ada@example.com"))
        contact_id, score = contact.id, contact.score
        enrolment = db.session.scalar(select(Enrolment).where(Enrolment.contact_id == contact_id))
        assert enrolment is not None, "joining the segment enrols the contact in the sequence"
        assert jobs.run_enrolments([enrolment.id])["messages"] == 1
        queued = db.session.scalars(
            select(Message.id).where(Message.contact_id == contact_id)
        ).all()
        assert jobs.send_messages(list(queued))["sent"] == 1
    assert score >= 50

    # The marketer sees the contact, its timeline, the segment and the sequence at work.
    page.goto(f"{base}/admin/contacts")
    assert "ada@example.com" in page.inner_text("#contacts")
    shots.take(page, "contacts")
    page.click("#contacts a:has-text('ada@example.com')")
    page.wait_for_url(f"{base}/admin/contacts/{contact_id}")
    facts = page.inner_text("dl.facts")
    assert f"{score} (engagement" in facts and "Engaged leads" in facts and "Sales" in facts
    assert f"utm_campaign={CODE}" in facts
    timeline = page.locator("ol.timeline")
    assert "Welcome series" in timeline.locator("li[data-kind=enrolment]").first.inner_text()
    assert timeline.locator("li[data-kind=score]").count() >= 2
    assert "Welcome, Ada" in timeline.locator("li[data-kind=email]").first.inner_text()
    assert "Stage" in timeline.locator("li[data-kind=stage]").first.inner_text()
    shots.take(page, "contact")

    page.goto(segment_url)
    assert "1 members now" in page.inner_text("main")
    page.click("button[value=preview]")
    page.wait_for_selector("#preview")
    assert "1 contacts match now" in page.inner_text("#preview")
    assert "ada@example.com" in page.inner_text("#preview")
    shots.take(page, "segment")

    page.goto(sequence_url)
    step = page.locator("#steps tr").nth(1).locator("td").all_inner_texts()
    assert step[2:4] == ["1", "1"]  # reached, sent
    shots.take(page, "sequence")

    page.goto(f"{template_url}?contact=ada@example.com")
    assert page.inner_text("#preview-subject") == "Welcome, Ada"
    page.fill("#test-to", "marketer@example.com")
    page.fill("#test-contact", "ada@example.com")
    # Enter submits the form: a click right after scrolling to the button sometimes lands in
    # the preview's sandboxed iframe (its own frame process) instead.
    page.press("#test-contact", "Enter")
    page.wait_for_selector("#sent, .error")
    assert page.locator("#sent").count() == 1, page.inner_text("main")
    shots.take(page, "template")

    page.goto(f"{base}/admin/outbox")
    assert page.locator("text=Welcome, Ada").count() >= 2  # the sequence's mail and the test
    shots.take(page, "outbox")

    page.goto(f"{base}/admin/reports/email")
    assert "welcome" in page.inner_text("main")
    shots.take(page, "email-report")

    page.goto(f"{base}/admin/campaigns")
    assert CODE in page.inner_text("main")
    shots.take(page, "campaigns")

    before = roi_row(page, base, "Spring launch")
    assert (before["Visitors"], before["Leads"], before["MQLs"]) == ("1", "1", "1")
    assert before["Revenue (won)"] == "0" and before["Cost"] != "0"
    log_out(page, base)

    # Sales: the lead is in the queue, with why; accept, convert, win.
    log_in(page, base, "sales@example.com")
    page.goto(f"{base}/admin/leads")
    waiting = page.inner_text("#waiting")
    assert "ada@example.com" in waiting and "Marketing qualified" in waiting
    shots.take(page, "leads")
    page.click("#waiting a:has-text('ada@example.com')")
    page.wait_for_url(f"{base}/admin/leads/{contact_id}")
    page.click("#accept-form button")
    page.wait_for_url(f"**/admin/leads/{contact_id}?done=accept")
    assert page.inner_text("#stage") == "sql"
    shots.take(page, "lead")
    page.fill("#convert-form #name", "Analytical rollout")
    page.fill("#convert-form #amount", "4200")
    page.click("#convert-form button")
    page.wait_for_url("**/admin/opportunities/*?saved=1")
    # Attributed from the UTM code the visitor came with.
    assert "Campaign: Spring launch (auto)" in page.inner_text("main")
    page.select_option("#stage", "won")
    page.click("form button:has-text('Save')")
    page.wait_for_url("**/admin/opportunities/*?saved=1")
    shots.take(page, "opportunity")
    page.goto(f"{base}/admin/opportunities")
    assert "Analytical rollout" in page.inner_text("main")
    shots.take(page, "opportunities")
    page.goto(f"{base}/admin/leads/health")
    shots.take(page, "follow-up-health")
    log_out(page, base)

    # The marketer sees the revenue the campaign brought.
    log_in(page, base, "marketer@example.com")
    after = roi_row(page, base, "Spring launch")
    assert after["Revenue (won)"] == "4,200"
    assert after["Opportunities"] == "1" and after["Converted leads"] == "1"
    shots.take(page, "roi")
    page.goto(f"{base}/admin/reports/calibration")
    shots.take(page, "calibration")
    if "admin.dashboard" in app.view_functions:
        page.goto(f"{base}/admin/dashboard")
        shots.take(page, "dashboard")

    assert dialogs == []
    with app.app_context():
        deal = db.session.scalar(select(Opportunity))
        assert (deal.stage, deal.amount) == ("won", Decimal("4200"))
        assert db.session.get(Contact, contact_id).stage == "customer"
    for name in ("home", "contacts", "contact", "leads", "opportunities", "campaigns", "roi"):
        assert name in shots.taken
    for name in ("email-report", "configure", "segment", "sequence", "template", "outbox"):
        assert name in shots.taken


# ---------------------------------------------------------------- stored XSS

SCRIPT = "<script>window.__xss=1</script>"
IMG = '"><img src=x onerror=window.__xss=1>'
XSS = SCRIPT + IMG


def seed_hostile_data(app, client, site) -> dict[str, int]:
    """Script in every typed field: page titles, URLs, UTM values, traits, names and notes."""
    from tests.conftest import admin_login, post_form

    admin_login(app, client, role="admin")
    visitor = "visitor-hostile-1"
    quoted = "%3Cscript%3Ewindow.__xss%3D1%3C%2Fscript%3E"
    response = post_events(
        client,
        site.key,
        [
            event(
                url=f"https://example.com/?utm_campaign={quoted}&utm_source={quoted}&q={XSS}",
                title=XSS,
                referrer=f"https://example.com/{XSS}",
            ),
            event("search", url="https://example.com/search", query=XSS),
            event("custom", name=XSS, props={"label": XSS}),
            event(
                "identify",
                email="hostile@example.com",
                traits={"first_name": XSS, "last_name": IMG, "company": XSS, "role": XSS},
            ),
            event(url=f"https://example.com/pricing?utm_campaign={quoted}", title=XSS),
            event("outbound", target=f"https://example.org/{XSS}"),
        ],
        visitor=visitor,
    )
    assert response.status_code in (200, 202, 204), response.get_data(as_text=True)
    ingest_all(app)
    with app.app_context():
        contact = db.session.scalar(select(Contact).where(Contact.email == "hostile@example.com"))
        assert contact is not None
        contact_id = contact.id

    segment = (
        f"name: '{XSS.replace(chr(39), chr(39) * 2)}'\nmatch: {{stage: {{in: [lead, mql]}}}}\n"
    )
    response = post_form(client, "/admin/segments/new", {"item": segment, "action": "save"})
    assert response.status_code == 302, response.get_data(as_text=True)
    template = {
        "name": XSS,
        "subjects": f"Hi {XSS}" + " {{ contact.first_name }}",
        "preheader": XSS,
        "html": "<p>Hi {{ contact.first_name }} {{ contact.company }}</p>",
        "text": "",
        "from": "",
        "reply_to": "",
        "variants": "",
    }
    assert post_form(client, "/admin/templates/new", template).status_code == 302
    campaign = {
        "name": XSS,
        "channel": "email",
        "utm_campaigns": "<script>window.__xss=1</script>",
        "starts_on": "",
        "ends_on": "",
        "cost": "",
    }
    response = post_form(client, "/admin/campaigns/new", campaign)
    assert response.status_code == 302, response.get_data(as_text=True)
    response = post_form(
        client,
        f"/admin/contacts/{contact_id}/notes",
        {"body": XSS},
        page=f"/admin/contacts/{contact_id}",
    )
    assert response.status_code == 302
    response = post_form(
        client,
        f"/admin/opportunities/new?contact={contact_id}",
        {"name": XSS, "amount": "10", "expected_close": "", "stage": "open"},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    with app.app_context():
        ids = {
            "contact": contact_id,
            "segment": db.session.scalar(select(Segment.id)),
            "template": db.session.scalar(select(EmailTemplate.id)),
            "campaign": db.session.scalar(select(Campaign.id)),
            "opportunity": db.session.scalar(select(Opportunity.id)),
        }
        assert db.session.scalar(select(ContactNote.body)) == XSS
    return ids


def test_script_typed_anywhere_is_shown_as_text_on_every_admin_page(
    app,
    site,
    client,
    browser,
    shots,
):
    ids = seed_hostile_data(app, client, site)
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        page, dialogs = new_page(browser)
        log_in(page, base, "admin@example.com")
        # A test send puts the hostile contact's data through rendering into the outbox.
        page.goto(f"{base}/admin/templates/{ids['template']}")
        page.fill("#test-to", "hostile@example.com")
        page.press("#test-to", "Enter")  # not a click: see the loop test
        page.wait_for_selector("#sent")
        paths = [
            "/admin/",
            "/admin/contacts",
            "/admin/contacts?q=hostile",
            f"/admin/contacts/{ids['contact']}",
            "/admin/leads",
            f"/admin/leads/{ids['contact']}",
            "/admin/leads/health",
            "/admin/opportunities",
            f"/admin/opportunities/{ids['opportunity']}",
            "/admin/campaigns",
            f"/admin/campaigns/{ids['campaign']}",
            "/admin/reports/roi?model=linear",
            "/admin/reports/email",
            "/admin/reports/calibration",
            "/admin/configure",
            "/admin/segments",
            f"/admin/segments/{ids['segment']}",
            "/admin/templates",
            f"/admin/templates/{ids['template']}",
            f"/admin/templates/{ids['template']}?contact=hostile@example.com",
            "/admin/sequences",
            "/admin/outbox",
            "/admin/users",
            "/admin/sites",
        ]
        if "admin.dashboard" in app.view_functions:
            paths.append("/admin/dashboard")
        for path in paths:
            page.goto(base + path)
            assert page.evaluate("typeof window.__xss") == "undefined", path
            assert page.locator("img[src=x]").count() == 0, path
            assert page.evaluate("document.querySelectorAll('main script').length") == 0, path
        page.goto(f"{base}/admin/contacts/{ids['contact']}")
        assert SCRIPT in page.inner_text("ol.timeline")  # shown, as text
        assert IMG in page.inner_text("dl.facts")
        # Long typed URLs wrap inside the facts box instead of running off the page.
        facts_fit = "e => e.scrollWidth <= e.clientWidth"
        assert page.locator("dl.facts").evaluate(facts_fit)
        shots.take(page, "xss-contact")
        page.goto(f"{base}/admin/outbox")
        page.click("main a:has-text('Hi ')")
        page.wait_for_selector("main")
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("img[src=x]").count() == 0
        shots.take(page, "xss-outbox-message")
        assert dialogs == []
    finally:
        server.shutdown()
