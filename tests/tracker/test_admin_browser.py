"""The contacts admin in a real browser: log in, search, open the timeline, add a note; what
visitors typed (titles, UTM values, names) shows as text and no script of theirs runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.conftest import make_user
from tests.tracker.test_admin_contacts import XSS, _event, at, seed_contact
from tests.tracker.test_snippet_browser import browser  # noqa: F401
from tracker.db import db
from tracker.models import Visitor
from tracker.redis_conn import free_port
from tracker.sales_models import ContactNote

pytestmark = pytest.mark.browser


@pytest.fixture
def admin_up(app) -> Iterator[str]:
    """The app served on a free port of 127.0.0.1."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


def test_search_timeline_and_note_in_chromium_with_script_shown_as_text(
    app,
    admin_up,
    browser,  # noqa: F811
    tmp_path,
):
    contact_id = seed_contact(app, email="evil@acme.test", first_name=XSS, company=XSS)
    with app.app_context():
        visitor = db.session.scalars(select(Visitor)).one()
        visitor.utm_campaign = XSS
        db.session.add(
            _event(
                contact_id,
                visitor.id,
                visitor.site_id,
                type="pageview",
                title=XSS,
                url="https://acme.test/?utm_campaign=x",
                utm_campaign=XSS,
                occurred_at=at(40),
            )
        )
        db.session.commit()
    make_user(app, "marketer", password="correct horse 9")

    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(admin_up + "/admin/contacts")
    assert "/admin/login" in page.url
    page.fill("#email", "marketer@example.com")
    page.fill("#password", "correct horse 9")
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/contacts")

    page.fill("#q", "EVIL@")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**q=EVIL%40*")
    rows = page.locator("#contacts tbody tr")
    assert rows.count() == 1
    assert XSS in rows.first.inner_text()  # the name and company, as text
    page.screenshot(path=str(tmp_path / "contacts.png"), full_page=True)

    page.click("#contacts tbody a")
    page.wait_for_url(f"**/admin/contacts/{contact_id}")
    timeline = page.locator("ol.timeline")
    assert f"Page view: {XSS}" in timeline.inner_text()
    assert f"utm_campaign={XSS}" in timeline.inner_text()
    assert page.locator("ol.timeline li.machine").count() == 2  # the crawler and the machine open

    page.fill("#note-body", f"Asked for a demo {XSS}")
    page.click("text=Save note")
    page.wait_for_url(f"**/admin/contacts/{contact_id}#timeline")
    first = page.locator("ol.timeline li").first
    assert first.get_attribute("data-kind") == "note"
    assert f"Asked for a demo {XSS}" in first.inner_text()
    page.screenshot(path=str(tmp_path / "contact.png"), full_page=True)

    # Nothing a visitor typed ran as script: no dialog, no injected element.
    assert dialogs == []
    assert page.evaluate("document.querySelectorAll('main script').length") == 0
    assert (tmp_path / "contact.png").stat().st_size > 0
    with app.app_context():
        assert (
            db.session.scalars(select(ContactNote.body).order_by(ContactNote.id)).all()[-1]
            == f"Asked for a demo {XSS}"
        )
