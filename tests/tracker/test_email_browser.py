"""A rendered email in a real browser: the pixel records a human open, a link leads to the
stored URL on a tracked site, and the visitor there becomes the contact.

Debian's chromium, driven by Playwright; the tracker and the demo website are
served from two origins, as in tests/tracker/test_snippet_browser.py.
"""

from __future__ import annotations

from email import message_from_bytes
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from automation.render import RenderSettings, compile_version, render_message, template_context
from tests.automation.conftest import store_template
from tests.conftest import BROWSER_UA
from tests.tracker.test_email_links import email_message, message_row
from tests.tracker.test_snippet_browser import browser, sites_up, stored_events  # noqa: F401
from tracker.db import db
from tracker.email_models import Message, TemplateVersion
from tracker.models import Contact, Event, Visitor
from tracker.tokens import signing_key

pytestmark = pytest.mark.browser

HTML = """\
<html><body>
<p>Hi {{ contact.first_name }}, our prices changed:
<a id="pricing" href="DEMO/pricing?from=email">see pricing</a></p>
</body></html>"""


def render(app, message_id: int, tracker_url: str, demo_url: str) -> str:
    """Render the message as a send job would and keep its links; return the HTML part."""
    with app.app_context():
        store_template(
            "welcome",
            variants=[
                {
                    "name": "A",
                    "subject": "Prices",
                    "html": HTML.replace("DEMO", demo_url),
                    "text": "Hi {{ contact.first_name }}",
                }
            ],
        )
        message = db.session.get(Message, message_id)
        version = db.session.scalar(
            select(TemplateVersion).order_by(TemplateVersion.id.desc()).limit(1)
        )
        contact = db.session.get(Contact, message.contact_id)
        compiled = compile_version(
            version.id, version.sender, version.reply_to, version.preheader, version.variants
        )
        settings = RenderSettings(
            base_url=tracker_url,
            key=signing_key(app.config["SECRET_KEY"]),
            default_sender="news@example.com",
        )
        rendered = render_message(
            compiled,
            "A",
            message_id=message.id,
            to_addr=contact.email,
            context=template_context({"first_name": contact.first_name}, contact.traits, None),
            settings=settings,
        )
        message.template_version_id = version.id
        message.links = rendered.links
        db.session.commit()
    parsed = message_from_bytes(rendered.raw)
    [html] = [p for p in parsed.walk() if p.get_content_type() == "text/html"]
    return html.get_payload(decode=True).decode()


def test_a_rendered_email_opened_and_clicked_in_chromium(app, sites_up, browser):  # noqa: F811
    tracker_url, demo_url = sites_up
    # Sent an hour ago: an open now is a person reading, not a prefetch on delivery.
    message_id = email_message(app, links=[], sent_ago=3600)
    html = render(app, message_id, tracker_url, demo_url)
    assert f"{tracker_url}/o/" in html and f"{tracker_url}/c/" in html

    # The default HeadlessChrome user agent is rightly flagged as a bot: be a desktop browser.
    context = browser.new_context(user_agent=BROWSER_UA)
    page = context.new_page()
    with page.expect_response(lambda r: "/o/" in r.url) as pixel:
        page.set_content(html)
    assert pixel.value.status == 200

    page.click("#pricing")
    page.wait_for_url(f"{demo_url}/pricing?**")
    landed = urlsplit(page.url)
    assert landed.path == "/pricing" and "from=email" in landed.query and "cl_c=" in landed.query
    page.wait_for_timeout(1200)  # the snippet's batch timer
    context.close()

    def done(events: list[Event]) -> bool:
        kinds = {e.type for e in events}
        return {"email_open", "email_click", "pageview"} <= kinds

    events = stored_events(app, done)
    assert done(events), f"stored only {sorted({e.type for e in events})}"
    with app.app_context():
        contact_id = db.session.scalar(select(Contact.id))
        visitor = db.session.scalars(select(Visitor)).one()
    opened = next(e for e in events if e.type == "email_open")
    clicked = next(e for e in events if e.type == "email_click")
    assert (opened.is_bot, opened.bot_reason, opened.contact_id) == (False, None, contact_id)
    assert (clicked.is_bot, clicked.contact_id) == (False, contact_id)
    assert clicked.target == f"{demo_url}/pricing?from=email"
    message = message_row(app, message_id)
    assert (message.opens, message.clicks) == (1, 1)
    assert message.opened_at is not None and message.clicked_at is not None

    # The browser that followed the link is the contact now, and so is its pageview.
    pageview = next(e for e in events if e.type == "pageview")
    assert pageview.path == "/pricing" and pageview.contact_id == contact_id
    assert visitor.contact_id == contact_id
