"""The sequence steps editor in Chromium: a marketer builds a three-step sequence with it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.conftest import make_user
from tests.tracker.test_admin_flows_browser import (  # noqa: F401
    PASSWORD,
    browser,
    log_in,
    new_page,
)
from tests.tracker.test_admin_sequence_editor import RULES, load
from tracker.db import db
from tracker.email_models import Sequence
from tracker.redis_conn import free_port

pytestmark = pytest.mark.browser


@pytest.fixture
def admin_up(app) -> Iterator[str]:
    """The tracker (and its admin) served on localhost."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{port}"
    server.shutdown()


def test_a_marketer_builds_a_three_step_sequence_in_the_form(
    app,
    admin_up,
    browser,  # noqa: F811
    tmp_path: Path,
):
    load(app, RULES)
    make_user(app, "marketer", password=PASSWORD)
    page, dialogs = new_page(browser)
    log_in(page, admin_up, "marketer@example.com")
    page.goto(f"{admin_up}/admin/sequences")
    page.click("text=New sequence")
    page.wait_for_url("**/admin/sequences/new/steps")

    page.fill("#name", "Developers nurture")
    page.select_option("#entry_segment", "developers")
    page.select_option("#step-0-template", "welcome")
    # Each button re-renders the form with the change; the typed fields stay as they were.
    page.select_option("select[name=step-0-add]", "wait")
    page.click("button[value='add:0']")
    page.wait_for_selector("#step-1-duration")
    assert page.input_value("#name") == "Developers nurture"
    page.fill("#step-1-duration", "2d")
    page.select_option("select[name=step-1-add]", "send")
    page.click("button[value='add:1']")
    page.wait_for_selector("#step-2-template")
    page.select_option("#step-2-template", "pricing")
    assert page.input_value("#step-1-duration") == "2d"
    with app.app_context():
        assert db.session.scalar(select(Sequence)) is None  # nothing saved yet
    page.screenshot(path=str(tmp_path / "sequence-steps.png"), full_page=True)

    page.click("#save")
    page.wait_for_url("**/admin/sequences/*/steps?saved=1")
    assert page.locator("#problems").count() == 0
    with app.app_context():
        sequence = db.session.scalar(select(Sequence))
        assert sequence.name == "Developers nurture"
        assert sequence.steps == [{"send": "welcome"}, {"wait": "2d"}, {"send": "pricing"}]
    page.goto(f"{admin_up}/admin/sequences")
    link = page.locator("main table a", has_text="Developers nurture")
    assert link.count() == 1
    link.click()
    page.wait_for_url("**/admin/sequences/*/steps")
    assert page.locator("#step-editor tbody tr").count() == 3
    assert dialogs == []
