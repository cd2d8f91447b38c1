"""Retention in the admin: admins count old events in the request, and purge them in a job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rq import Queue

from automation.worker import run_worker
from tests.automation.test_retention import build, remaining
from tests.conftest import admin_login, csrf_of, post_form
from tracker.models import utcnow
from tracker.redis_conn import get_redis

PAGE = "/admin/retention"


def queued(app) -> int:
    return Queue("maintenance", connection=get_redis(app)).count


def test_only_admins_open_the_page_and_it_is_in_their_menu(app, client):
    anonymous = client.get(PAGE)
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/admin/login")
    for role in ("marketer", "sales"):
        with app.test_client() as other:
            admin_login(app, other, role)
            assert other.get(PAGE).status_code == 403
            token = csrf_of(other, "/admin/")
            refused = other.post(
                PAGE, data={"months": "1", "action": "purge", "confirm": "1", "csrf_token": token}
            )
            assert refused.status_code == 403
            assert f'href="{PAGE}"' not in other.get("/admin/").get_data(as_text=True)
    assert queued(app) == 0
    admin_login(app, client)
    home = client.get("/admin/").get_data(as_text=True)
    assert f'href="{PAGE}">Retention</a>' in home


def test_the_page_shows_the_setting_and_uses_it_as_the_default(app, client):
    admin_login(app, client)
    page = client.get(PAGE).get_data(as_text=True)
    assert "<strong>0</strong>: raw events are kept forever" in page
    assert 'name="months" value=""' in page
    app.config["RETENTION_MONTHS"] = 6
    page = client.get(PAGE).get_data(as_text=True)
    assert "older than 6 months" in page and 'name="months" value="6"' in page


def test_a_post_without_the_csrf_token_does_nothing(app, client):
    ids = build(app, utcnow())
    admin_login(app, client)
    refused = client.post(PAGE, data={"months": "3", "action": "purge", "confirm": "1"})
    assert refused.status_code == 400 and b"the form expired" in refused.data
    assert queued(app) == 0 and remaining(app)[0] == set(ids.values())


@pytest.mark.parametrize(
    "months", ["", "0", "-1", "1.5", "three", "٣", "1201", "9" * 40, "<b>x</b>"]
)
def test_bad_months_are_refused_next_to_the_field_and_nothing_is_done(app, client, months):
    ids = build(app, utcnow())
    admin_login(app, client)
    for action in ("count", "purge"):
        answer = post_form(client, PAGE, {"months": months, "action": action, "confirm": "1"})
        page = answer.get_data(as_text=True)
        assert answer.status_code == 400, (months, action)
        assert 'id="error-months"' in page and "whole number from 1 to 1200" in page
        assert "<b>x</b>" not in page and 'id="count"' not in page
    assert queued(app) == 0 and remaining(app)[0] == set(ids.values())


def test_purge_needs_the_confirmation_and_an_action(app, client):
    ids = build(app, utcnow())
    admin_login(app, client)
    answer = post_form(client, PAGE, {"months": "3", "action": "purge"})
    assert answer.status_code == 400
    assert 'id="error-confirm"' in answer.get_data(as_text=True)
    assert post_form(client, PAGE, {"months": "3", "action": "drop"}).status_code == 400
    assert post_form(client, PAGE, {"months": "3"}).status_code == 400
    assert queued(app) == 0 and remaining(app)[0] == set(ids.values())


def test_count_tells_the_cutoff_the_events_and_the_days_kept_and_deletes_nothing(app, client):
    now = utcnow()
    ids = build(app, now)
    admin_login(app, client)
    answer = post_form(client, PAGE, {"months": "3", "action": "count"})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    # The two old events of the rolled-up day go; the touch, the day without rollups and
    # yesterday's event stay.
    assert "2 events from before" in page and "would be deleted" in page
    not_rolled_up = (now - timedelta(days=199)).date().isoformat()
    assert "The events of 1 days the daily rollups do not hold would be kept" in page
    assert not_rolled_up in page.split('id="count"')[1]
    assert 'name="months" value="3"' in page
    assert queued(app) == 0 and remaining(app)[0] == set(ids.values())
    # Further back than the oldest event: nothing would go.
    later = post_form(client, PAGE, {"months": "12", "action": "count"}).get_data(as_text=True)
    assert "0 events from before" in later


def test_purge_queues_a_job_that_deletes_exactly_the_expected_events(app, client):
    ids = build(app, utcnow())
    admin_login(app, client)
    answer = post_form(client, PAGE, {"months": "3", "action": "purge", "confirm": "1"})
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(f"{PAGE}?job=retention-purge-")
    assert queued(app) == 1 and remaining(app)[0] == set(ids.values())  # not in the request
    waiting = client.get(location).get_data(as_text=True)
    assert "Queued: a worker deletes the events older than 3 months" in waiting
    assert "The purge is queued" in waiting

    run_worker(app, ["maintenance"], burst=True)
    events, points = remaining(app)
    assert events == {ids["old_touch"], ids["not_rolled_up"], ids["recent"]}
    assert points == [None, ids["recent"]]  # the deleted event's points stay, detached
    done = client.get(location).get_data(as_text=True)
    assert "The purge finished: 2 events from before" in done
    assert "1 points keep their score" in done and "the events of 1 days" in done


def test_a_job_id_not_of_this_page_is_refused_and_a_forgotten_one_said(app, client):
    admin_login(app, client)
    bad = client.get(f"{PAGE}?job=rebuild-segments")
    assert bad.status_code == 400 and b"not a purge job of this page" in bad.data
    gone = client.get(f"{PAGE}?job=retention-purge-{'0' * 32}").get_data(as_text=True)
    assert "is no longer known" in gone
