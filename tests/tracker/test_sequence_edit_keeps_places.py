"""Editing a sequence's steps keeps everyone in it at the step they were at.

Through the steps form (rows carry their stored index), the YAML editor and
`automation load` (steps matched by content): positions, the step numbers of
messages already made, completions when no step is left, the flash message,
and the runner afterwards sending each step once.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import admin_login, post_form
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, EnrolmentLog, Message, Sequence
from tracker.models import Contact, utcnow

RULES = """
templates:
  - {name: intro, subject: Intro, html: <p>Intro</p>}
  - {name: welcome, subject: Welcome, html: <p>Welcome</p>}
  - {name: pricing, subject: Prices, html: <p>Prices</p>}
  - {name: case-study, subject: A case, html: <p>A case</p>}
sequences:
  - name: Drip
    steps:
      - send: welcome
      - wait: 2d
      - send: pricing
      - wait: 1d
      - send: case-study
"""
"""Drip's steps: 0 send welcome, 1 wait 2d, 2 send pricing, 3 wait 1d, 4 send case-study."""

ROWS = [
    {"kind": "send", "template": "welcome"},
    {"kind": "wait", "duration": "2d"},
    {"kind": "send", "template": "pricing"},
    {"kind": "wait", "duration": "1d"},
    {"kind": "send", "template": "case-study"},
]
"""Drip as rows of the steps form, in stored order (a row's index is its origin)."""


def load(app, text: str) -> None:
    from automation.config_file import parse
    from automation.config_store import apply

    with app.app_context(), db.engine.begin() as conn:
        apply(conn, parse(text, "test.yaml"), "test.yaml")


@pytest.fixture
def marketer(app, client):
    admin_login(app, client, role="marketer")
    load(app, RULES)
    return client


def drip_id(app) -> int:
    with app.app_context():
        return db.session.scalar(select(Sequence.id).where(Sequence.name == "Drip"))


def enrol(app, position: int, *, status: str = "active", sent: tuple[int, ...] = ()) -> int:
    """An enrolment in Drip standing at `position`, with a sent message per step in `sent`."""
    with app.app_context():
        contact = Contact(email=f"c{db.session.scalar(select(db.func.count(Contact.id)))}@x.test")
        db.session.add(contact)
        db.session.flush()
        enrolment = Enrolment(
            sequence_id=drip_id(app),
            contact_id=contact.id,
            position=position,
            status=status,
            cause="test",
            next_at=utcnow() + timedelta(days=1),
        )
        db.session.add(enrolment)
        db.session.flush()
        steps = db.session.scalar(select(Sequence.steps).where(Sequence.name == "Drip"))
        for step in sent:
            template = db.session.scalar(
                select(EmailTemplate).where(EmailTemplate.name == steps[step]["send"])
            )
            db.session.add(
                Message(
                    contact_id=contact.id,
                    template_id=template.id,
                    template_version_id=template.current_version_id,
                    variant="A",
                    kind="sequence",
                    enrolment_id=enrolment.id,
                    step=step,
                    to_addr=contact.email,
                    status="sent",
                    sent_at=utcnow(),
                )
            )
        db.session.commit()
        return enrolment.id


def state(app, enrolment_id: int) -> tuple[str, int]:
    with app.app_context():
        row = db.session.get(Enrolment, enrolment_id)
        return row.status, row.position


def message_steps(app, enrolment_id: int) -> list[tuple[str, int | None]]:
    """(template, step) of the enrolment's messages, oldest first."""
    with app.app_context():
        return [
            tuple(row)
            for row in db.session.execute(
                select(EmailTemplate.name, Message.step)
                .join(EmailTemplate, EmailTemplate.id == Message.template_id)
                .where(Message.enrolment_id == enrolment_id)
                .order_by(Message.id)
            )
        ]


def form_fields(page: str, rows: list[dict[str, Any]]) -> dict[str, str]:
    """The fields the steps form posts: `rows` (each with its "origin", if any) and Save."""
    based_on = re.search(r'name="based_on" value="([0-9a-f]{64})"', page)
    assert based_on, "the form carries the fingerprint of the stored steps"
    fields = {"enabled": "1", "reentry": "never", "op": "save", "based_on": based_on.group(1)}
    for i, row in enumerate(rows):
        for key, value in row.items():
            fields[f"step-{i}-{key}"] = str(value)
    return fields


def origins(*indices: int | None) -> list[dict[str, Any]]:
    """Drip's rows in a new order: an index is that stored row, None a new "send intro"."""
    return [
        {"kind": "send", "template": "intro"} if i is None else {**ROWS[i], "origin": i}
        for i in indices
    ]


def flashed(client, response) -> str:
    """The flash messages on the page a save redirected to."""
    assert response.status_code == 302, response.get_data(as_text=True)[:2000]
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    return " ".join(
        unescape(m) for m in re.findall(r'<p class="notice flash"[^>]*>(.*?)</p>', page)
    )


# ---------------------------------------------------------------- the steps form


def test_the_form_keeps_people_at_their_step_when_steps_are_inserted_and_removed(app, marketer):
    at_welcome = enrol(app, 0)
    before_pricing = [enrol(app, 2, sent=(0,)), enrol(app, 2, sent=(0,))]
    before_case = enrol(app, 4, sent=(0, 2))
    done = enrol(app, 5, status="completed", sent=(0, 2, 4))
    path = f"/admin/sequences/{drip_id(app)}/steps"
    page = marketer.get(path).get_data(as_text=True)
    assert 'name="step-2-origin" value="2"' in page
    assert "Active enrolments stay at the step they stand at" in page
    # A new send first, pricing removed: welcome, wait 2d, wait 1d and the case study stay.
    response = post_form(marketer, path, form_fields(page, origins(None, 0, 1, 3, 4)))
    assert flashed(marketer, response) == (
        "2 people in this sequence kept their place; "
        "2 at a removed step moved on to step 4 (wait 1d)."
    )
    with app.app_context():
        assert db.session.scalar(select(Sequence.steps).where(Sequence.id == drip_id(app))) == [
            {"send": "intro"},
            {"send": "welcome"},
            {"wait": "2d"},
            {"wait": "1d"},
            {"send": "case-study"},
        ]
    assert state(app, at_welcome) == ("active", 1)
    assert [state(app, e) for e in before_pricing] == [("active", 3)] * 2
    assert state(app, before_case) == ("active", 4)
    # Messages follow their step; the removed step's message stays, under no step.
    assert message_steps(app, before_case) == [("welcome", 1), ("pricing", None)]
    # What is over is history: a completed enrolment and its messages keep their numbers.
    assert state(app, done) == ("completed", 5)
    assert message_steps(app, done) == [("welcome", 0), ("pricing", 2), ("case-study", 4)]


def test_the_form_moves_rows_and_the_people_with_them(app, marketer):
    # Sent welcome and pricing; waiting a day before the case study.
    waiting = enrol(app, 4, sent=(0, 2))
    at_pricing = enrol(app, 2, sent=(0,))
    path = f"/admin/sequences/{drip_id(app)}/steps"
    page = marketer.get(path).get_data(as_text=True)
    # Welcome and pricing change places: their messages' step numbers swap too.
    response = post_form(marketer, path, form_fields(page, origins(2, 1, 0, 3, 4)))
    assert flashed(marketer, response) == "2 people in this sequence kept their place."
    assert state(app, waiting) == ("active", 4)
    assert state(app, at_pricing) == ("active", 0)
    assert message_steps(app, waiting) == [("welcome", 2), ("pricing", 0)]


def test_removing_the_last_step_completes_those_waiting_for_it(app, marketer):
    waiting = enrol(app, 4, sent=(0, 2))
    at_pricing = enrol(app, 2, sent=(0,))
    path = f"/admin/sequences/{drip_id(app)}/steps"
    page = marketer.get(path).get_data(as_text=True)
    response = post_form(marketer, path, form_fields(page, origins(0, 1, 2, 3)))
    assert flashed(marketer, response) == (
        "1 person in this sequence kept their place; "
        "1 at a removed step completed, as no step is left after it."
    )
    assert state(app, at_pricing) == ("active", 2)
    assert state(app, waiting) == ("completed", 4)
    with app.app_context():
        row = db.session.get(Enrolment, waiting)
        assert row.exit_reason == "step removed" and row.ended_at is not None
        last = db.session.execute(
            select(EnrolmentLog.position, EnrolmentLog.action, EnrolmentLog.detail)
            .where(EnrolmentLog.enrolment_id == waiting)
            .order_by(EnrolmentLog.id.desc())
        ).first()
        assert tuple(last) == (4, "completed", "step removed")


def test_a_form_opened_before_someone_elses_save_is_matched_by_content(app, marketer):
    at_pricing = enrol(app, 2, sent=(0,))
    path = f"/admin/sequences/{drip_id(app)}/steps"
    stale = marketer.get(path).get_data(as_text=True)
    # Meanwhile a rules file puts a send first: the person at pricing is at 3 now.
    load(app, RULES.replace("      - send: welcome", "      - send: intro\n      - send: welcome"))
    assert state(app, at_pricing) == ("active", 3)
    # The old form saves Drip as it was: its row numbers index the old steps, so they are
    # not trusted; matching the steps still finds pricing.
    response = post_form(marketer, path, form_fields(stale, origins(0, 1, 2, 3, 4)))
    assert flashed(marketer, response) == "1 person in this sequence kept their place."
    assert state(app, at_pricing) == ("active", 2)
    assert message_steps(app, at_pricing) == [("welcome", 0)]


def test_a_refused_save_moves_nobody(app, marketer):
    at_pricing = enrol(app, 2, sent=(0,))
    path = f"/admin/sequences/{drip_id(app)}/steps"
    page = marketer.get(path).get_data(as_text=True)
    rows = origins(None, 0, 1, 2, 3, 4)
    rows[3]["template"] = "missing"
    response = post_form(marketer, path, form_fields(page, rows))
    assert response.status_code == 400
    assert state(app, at_pricing) == ("active", 2)
    assert message_steps(app, at_pricing) == [("welcome", 0)]
    # The form shown again still carries the fingerprint it was opened with.
    assert re.search(r'name="based_on" value="[0-9a-f]{64}"', response.get_data(as_text=True))


# ---------------------------------------------------------------- YAML and rules files


def drip_yaml(*steps: str) -> str:
    return "name: Drip\nsteps:\n" + "".join(f"  - {step}\n" for step in steps)


def test_the_yaml_editor_matches_steps_by_content(app, marketer):
    at_welcome = enrol(app, 0)
    at_pricing = enrol(app, 2, sent=(0,))
    before_case = enrol(app, 4, sent=(0, 2))
    path = f"/admin/sequences/{drip_id(app)}"
    text = drip_yaml("send: intro", "send: welcome", "wait: 2d", "wait: 1d", "send: case-study")
    response = post_form(marketer, path, {"item": text})
    assert flashed(marketer, response) == (
        "2 people in this sequence kept their place; "
        "1 at a removed step moved on to step 4 (wait 1d)."
    )
    assert [state(app, e)[1] for e in (at_welcome, at_pricing, before_case)] == [1, 3, 4]
    assert message_steps(app, before_case) == [("welcome", 1), ("pricing", None)]
    # A step changed in place is the same step: those waiting for it still get it.
    text = drip_yaml("send: intro", "send: welcome", "wait: 3d", "wait: 1d", "send: pricing")
    response = post_form(marketer, path, {"item": text})
    assert flashed(marketer, response) == "3 people in this sequence kept their place."
    assert [state(app, e)[1] for e in (at_welcome, at_pricing, before_case)] == [1, 3, 4]


def test_a_yaml_save_that_is_refused_moves_nobody_and_says_nothing_of_places(app, marketer):
    at_pricing = enrol(app, 2)
    path = f"/admin/sequences/{drip_id(app)}"
    response = post_form(marketer, path, {"item": drip_yaml("send: intro", "send: missing")})
    assert response.status_code == 400
    assert "kept their place" not in response.get_data(as_text=True)
    assert state(app, at_pricing) == ("active", 2)


def test_automation_load_keeps_places(app, marketer, tmp_path):
    at_pricing = enrol(app, 2, sent=(0,))
    at_case = enrol(app, 4, sent=(0, 2))
    rules = tmp_path / "rules.yaml"
    # The waits swap round and the welcome goes: pricing and the case study are still there.
    rules.write_text(
        "sequences:\n  - name: Drip\n    steps:\n"
        "      - wait: 1d\n      - send: pricing\n      - wait: 2d\n      - send: case-study\n"
    )
    result = app.test_cli_runner().invoke(args=["automation", "load", str(rules)])
    assert result.exit_code == 0, result.output
    assert state(app, at_pricing) == ("active", 1)
    assert state(app, at_case) == ("active", 3)
    assert message_steps(app, at_case) == [("welcome", None), ("pricing", 1)]


# ---------------------------------------------------------------- and then the runner


def test_after_an_edit_the_runner_sends_each_step_once(app, marketer):
    from automation.sequence_runner import enrol as enrol_contacts
    from automation.sequence_runner import load_sequence, run_due
    from automation.sequence_steps import Caps

    now = utcnow()
    with app.app_context():
        contact = Contact(email="ada@x.test")
        db.session.add(contact)
        db.session.commit()
        with db.engine.begin() as conn:
            (enrolment_id,) = enrol_contacts(
                conn, [contact.id], load_sequence(conn, "Drip"), "test", now
            )
        run_due([enrolment_id], now, Caps())
    assert state(app, enrolment_id) == ("active", 2)  # welcome sent, two days to wait
    path = f"/admin/sequences/{drip_id(app)}/steps"
    page = marketer.get(path).get_data(as_text=True)
    # Two new sends before pricing, which moves from step 3 to step 5.
    response = post_form(marketer, path, form_fields(page, origins(0, None, None, 1, 2, 3, 4)))
    assert response.status_code == 302
    assert state(app, enrolment_id) == ("active", 4)
    with app.app_context():
        run_due([enrolment_id], now + timedelta(days=2, minutes=1), Caps())
        run_due([enrolment_id], now + timedelta(days=3, minutes=2), Caps())
    # Welcome once, no intro (added behind the person), then pricing and the case study.
    assert message_steps(app, enrolment_id) == [("welcome", 0), ("pricing", 4), ("case-study", 6)]
    assert state(app, enrolment_id) == ("completed", 7)
