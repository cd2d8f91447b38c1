"""The sequence steps editor and deleting a sequence.

The form's logic (fields to item and back, row buttons) is tested on its own;
the pages are tested end to end: the form saves through the same parser as
the YAML editor (same messages, 400 and nothing changed when refused), the
row buttons change the form only, and a sequence with history is never
deleted.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from sqlalchemy import func, select
from werkzeug.datastructures import MultiDict

from tests.conftest import admin_login, csrf_of, post_form
from tracker.admin.sequence_form import (
    MAX_STEPS,
    FormRefused,
    SequenceForm,
    StepRow,
    apply_op,
    form_of,
    form_problems,
    read_form,
    sequence_item,
    step_item,
)
from tracker.automation_models import Segment, Threshold
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, Message, Sequence
from tracker.models import Contact, utcnow
from tracker.sales_models import Campaign

XSS = '<script>alert("x")</script>'

STORED = {
    "name": "nurture-developers",
    "entry": {"segment": "developers", "not_ready": True},
    "reentry": {"after_days": 30},
    "send_window": {"days": ["mon", "tue", "fri"], "hours": "09:00-17:00"},
    "exit": {
        "stage_at_least": "sql",
        "score_at_least": 80,
        "left_segment": True,
        "goal": {"event": "custom", "name": "demo_booked"},
    },
    "steps": [
        {"send": "welcome"},
        {"wait": "2d"},
        {"branch": {"if": "clicked", "within": "3d", "then": "hot", "else": "next"}},
        {"wait": {"until": {"weekday": "tue", "hour": 10, "minute": 0}}},
        {"wait": {"until": {"hour": 9, "minute": 30}}},
        "end",
        {"name": "hot", "send": "pricing"},
        {"name": "stop", "end": True},
    ],
    "enabled": False,
}
"""A sequence as `automation show` prints it, using every kind of field the form has."""


# ---------------------------------------------------------------- the form, on its own


def posted(form: SequenceForm, index_step: int = 1) -> MultiDict[str, str]:
    """The fields a browser posts for `form` (rows numbered 0, index_step, 2 * index_step …)."""
    fields: MultiDict[str, str] = MultiDict(
        {
            "name": form.name,
            "entry_segment": form.entry_segment,
            "reentry": form.reentry,
            "reentry_days": form.reentry_days,
            "window_hours": form.window_hours,
            "stage_at_least": form.stage_at_least,
            "score_at_least": form.score_at_least,
            "goal_event": form.goal_event,
            "goal_name": form.goal_name,
        }
    )
    for key in ("not_ready", "left_segment", "enabled"):
        if getattr(form, key):
            fields[key] = "1"
    for day in form.window_days:
        fields.add("window_days", day)
    for i, row in enumerate(form.steps):
        for key, value in vars(row).items():
            if value is not None:
                fields[f"step-{i * index_step}-{key}"] = str(value)
    return fields


def test_a_stored_sequence_fills_the_form_and_comes_back_the_same():
    form = form_of(STORED)
    assert (form.entry_segment, form.not_ready, form.reentry, form.reentry_days) == (
        "developers",
        True,
        "after_days",
        "30",
    )
    assert [row.kind for row in form.steps] == [
        "send",
        "wait",
        "branch",
        "wait",
        "wait",
        "end",
        "send",
        "end",
    ]
    until = form.steps[3]
    assert (until.duration, until.weekday, until.hour, until.minute) == ("", "tue", "10", "0")
    assert [row.origin for row in form.steps] == list(range(8))
    assert form.step_names == ["hot", "stop"]
    assert sequence_item(form) == STORED
    # What the browser posts reads back as the same form, rows in number order (10 after 2).
    assert read_form(posted(form, index_step=5)) == form


def test_the_form_turns_whole_numbers_into_numbers_and_passes_anything_else_on():
    assert step_item(StepRow(kind="wait", hour=" 7 ", minute="")) == {
        "wait": {"until": {"hour": 7}}
    }
    assert step_item(StepRow(kind="wait", weekday="mon", hour="ten")) == {
        "wait": {"until": {"weekday": "mon", "hour": "ten"}}
    }
    assert step_item(StepRow(kind="wait", duration=" 2d ")) == {"wait": "2d"}
    assert step_item(StepRow(kind="end")) == "end"
    assert step_item(StepRow(kind="send", name=" a ", template="t")) == {"name": "a", "send": "t"}
    form = SequenceForm(name=" W ", score_at_least="x1", reentry="after_days", enabled=True)
    item = sequence_item(form)
    assert item == {
        "name": "W",
        "reentry": {"after_days": None},
        "exit": {"score_at_least": "x1"},
        "steps": [],
        "enabled": True,
    }


def test_the_fingerprint_of_the_stored_steps_is_kept_only_when_it_is_one():
    digest = "0123456789abcdef" * 4
    assert read_form(MultiDict({"based_on": digest})).based_on == digest
    for junk in (XSS, digest[:-1], digest.upper(), digest + "0"):
        assert read_form(MultiDict({"based_on": junk})).based_on == ""
    moved = apply_op(read_form(MultiDict({"based_on": digest, "step-0-kind": "end"})), "add:0")
    assert moved.based_on == digest  # the row buttons carry it to the Save


def test_the_stored_name_wins_over_a_posted_one_when_editing():
    fields = posted(form_of(STORED))
    fields["name"] = "renamed"
    assert read_form(fields, "nurture-developers").name == "nurture-developers"
    assert read_form(fields).name == "renamed"


def test_row_buttons_add_remove_and_move_steps():
    form = form_of({"name": "W", "steps": [{"send": "a"}, {"wait": "1d"}, {"send": "b"}]})
    added = apply_op(form, "add:0", "branch")
    assert [r.kind for r in added.steps] == ["send", "branch", "wait", "send"]
    assert (added.steps[1].on, added.steps[1].within, added.steps[1].origin) == (
        "clicked",
        "3d",
        None,
    )
    first = apply_op(form, "add:-1", "send", template="welcome")
    assert (first.steps[0].kind, first.steps[0].template) == ("send", "welcome")
    assert [r.template for r in apply_op(form, "remove:0").steps] == ["", "b"]
    moved = apply_op(form, "up:2")
    assert [(r.kind, r.origin) for r in moved.steps] == [("send", 0), ("send", 2), ("wait", 1)]
    assert apply_op(form, "down:2") == form and apply_op(form, "up:0") == form
    assert apply_op(form, "refresh") is form
    assert [r.kind for r in form.steps] == ["send", "wait", "send"]  # the original is untouched
    for op, kind in (("add:3", "send"), ("remove:-1", ""), ("jump:1", ""), ("add:0", "loop")):
        with pytest.raises(FormRefused):
            apply_op(form, op, kind)


def test_more_rows_than_the_form_takes_are_refused():
    fields = MultiDict({f"step-{i}-kind": "end" for i in range(MAX_STEPS + 1)})
    with pytest.raises(FormRefused, match="edit a longer sequence as YAML"):
        read_form(fields)


def test_the_parsers_messages_lose_lines_of_yaml_nobody_saw_and_go_beside_their_step():
    problems = [
        "line 1: sequence 'W': step 2 (line 7): hour must be 0 to 23, not 25",
        "sequence 'W': no segment named 'x'",
    ]
    cleaned, by_row = form_problems(problems, 3)
    assert cleaned == [
        "sequence 'W': step 2: hour must be 0 to 23, not 25",
        "sequence 'W': no segment named 'x'",
    ]
    assert by_row == {1: [cleaned[0]]}


# ---------------------------------------------------------------- the pages


def load(app, text: str) -> None:
    from automation.config_file import parse
    from automation.config_store import apply

    with app.app_context(), db.engine.begin() as conn:
        apply(conn, parse(text, "test.yaml"), "test.yaml")


RULES = """
segments:
  - name: developers
    match: {stage: {in: [lead]}}
templates:
  - name: welcome
    subject: [Hi, Hello]
    html: <p>Hi</p>
  - name: pricing
    subject: Prices
    html: <p>Prices</p>
"""


@pytest.fixture
def marketer(app, client):
    admin_login(app, client, role="marketer")
    load(app, RULES)
    return client


def text_of(response) -> str:
    return response.get_data(as_text=True)


def problems(response) -> list[str]:
    box = re.search(r'<div class="error" id="problems">(.*?)</div>', text_of(response), re.S)
    assert box, text_of(response)[:3000]
    return [unescape(p).strip() for p in re.findall(r"<li>(.*?)</li>", box.group(1), re.S)]


def stored(app, name: str) -> Sequence | None:
    with app.app_context():
        row = db.session.scalar(select(Sequence).where(Sequence.name == name))
        if row is not None:
            db.session.expunge(row)
        return row


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def three_steps(**extra: str) -> dict[str, str]:
    """A new sequence's fields: send welcome, wait 2 days, send pricing."""
    return {
        "name": "Welcome",
        "enabled": "1",
        "entry_segment": "developers",
        "reentry": "never",
        "window_days": "mon",
        "window_hours": "09:00-17:00",
        "step-0-kind": "send",
        "step-0-template": "welcome",
        "step-1-kind": "wait",
        "step-1-duration": "2d",
        "step-2-kind": "send",
        "step-2-template": "pricing",
        "op": "save",
        **extra,
    }


def rows_of(page: str) -> list[str]:
    """The kind selected in each row of the steps editor."""
    return re.findall(
        r'<select id="step-\d+-kind" name="step-\d+-kind">.*?<option value="(\w+)" selected>',
        page,
        re.S,
    )


def test_a_sequence_built_in_the_form_is_saved_and_listed(app, marketer):
    page = text_of(marketer.get("/admin/sequences/new/steps"))
    assert rows_of(page) == ["send"]
    # A new send starts with the first template; each offers its variants' names.
    assert '<option value="pricing" selected>pricing</option>' in page
    assert '<option value="welcome">welcome (variants A, B)</option>' in page
    assert 'href="/admin/sequences/new"' in page  # the YAML editor is one link away
    response = post_form(marketer, "/admin/sequences/new/steps", three_steps())
    assert response.status_code == 302
    sequence = stored(app, "Welcome")
    assert response.headers["Location"] == f"/admin/sequences/{sequence.id}/steps?saved=1"
    assert sequence.steps == [{"send": "welcome"}, {"wait": "2d"}, {"send": "pricing"}]
    assert sequence.send_window == {"days": ["mon"], "hours": "09:00-17:00"}
    with app.app_context():
        assert sequence.entry_segment_id == db.session.scalar(select(Segment.id))
    listing = text_of(marketer.get("/admin/sequences"))
    assert f'<a href="/admin/sequences/{sequence.id}/steps">Welcome</a>' in listing
    # The YAML editor shows what the form saved: both edit the same thing.
    yaml_page = text_of(marketer.get(f"/admin/sequences/{sequence.id}"))
    assert "- send: pricing" in yaml_page and "segment: developers" in yaml_page
    assert f'href="/admin/sequences/{sequence.id}/steps"' in yaml_page


def test_the_form_is_refused_with_the_same_message_as_the_yaml_and_keeps_the_input(app, marketer):
    fields = three_steps(
        **{
            "step-1-duration": "",
            "step-1-weekday": "tue",
            "step-1-hour": "25",
            "step-0-name": XSS,
        }
    )
    response = post_form(marketer, "/admin/sequences/new/steps", fields)
    assert response.status_code == 400 and count(app, Sequence) == 0
    yaml = (
        "name: Welcome\nentry: {segment: developers}\nsteps:\n  - send: welcome\n"
        "  - wait: {until: {weekday: tue, hour: 25}}\n  - send: pricing\n"
    )
    through_yaml = problems(post_form(marketer, "/admin/sequences/new", {"item": yaml}))
    assert len(through_yaml) == 1 and "step 2 (line " in through_yaml[0]
    # The same message, less the lines of a YAML text the form's user never saw.
    same = re.sub(r"^line \d+: | \(line \d+\)", "", through_yaml[0])
    assert (
        problems(response) == [same] == ["sequence 'Welcome': step 2: hour must be 0 to 23, not 25"]
    )
    page = text_of(response)
    # Beside the step, and everything typed is still there, as text.
    beside = re.search(r'id="step-1-problems">(.*?)</div>', page, re.S).group(1)
    assert "hour must be 0 to 23" in beside
    assert 'name="step-1-hour" value="25"' in page
    assert XSS not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert rows_of(page) == ["send", "wait", "send"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"step-2-template": "missing"}, "no email template named 'missing'"),
        ({"entry_segment": "gone"}, "no segment named 'gone'"),
        ({"step-1-duration": "soon"}, "step 2: 'soon' is not a duration"),
        ({"step-1-hour": "9"}, "step 2: 'wait' takes a duration (2d) or {until:"),
        ({"step-1-kind": "loop"}, "step 2: unknown step field 'loop'"),
        ({"score_at_least": "99999999999"}, "99999999999 is too large"),
        ({"name": ""}, "every sequence needs a 'name'"),
        ({"reentry": "after_days", "reentry_days": "-3"}, "'reentry' is never, after_exit"),
        ({"window_hours": "17:00-09:00"}, "the start must come before the end"),
        (
            {"step-0-kind": "branch", "step-0-on": "opened", "step-0-within": "1d"},
            "step 1: a branch looks at the previous message; put a send step before it",
        ),
    ],
)
def test_what_the_parser_refuses_is_refused_and_nothing_saved(app, marketer, fields, message):
    response = post_form(marketer, "/admin/sequences/new/steps", three_steps(**fields))
    assert response.status_code == 400
    assert any(message in problem for problem in problems(response)), problems(response)
    assert count(app, Sequence) == 0


def test_a_name_that_exists_is_refused_on_new(app, marketer):
    assert post_form(marketer, "/admin/sequences/new/steps", three_steps()).status_code == 302
    again = post_form(marketer, "/admin/sequences/new/steps", three_steps())
    assert again.status_code == 400
    assert problems(again) == ["a sequence named 'Welcome' exists already; edit it"]


def test_row_buttons_change_the_form_and_save_nothing(app, marketer):
    path = "/admin/sequences/new/steps"
    added = post_form(marketer, path, three_steps(op="add:0", **{"step-0-add": "branch"}))
    assert added.status_code == 200 and count(app, Sequence) == 0
    page = text_of(added)
    assert rows_of(page) == ["send", "branch", "wait", "send"]
    # The new branch offers the sequence's step names as targets once they are typed.
    fields = three_steps(op="refresh", **{"step-2-name": "prices"})
    refreshed = text_of(
        post_form(marketer, path, {**fields, "op": "add:1", "step-1-add": "branch"})
    )
    assert '<option value="prices">prices</option>' in refreshed
    moved = text_of(post_form(marketer, path, three_steps(op="up:1")))
    assert rows_of(moved) == ["wait", "send", "send"]
    removed = text_of(post_form(marketer, path, three_steps(op="remove:2")))
    assert rows_of(removed) == ["send", "wait"]
    emptied = {k: v for k, v in three_steps().items() if not k.startswith("step-")}
    empty = text_of(post_form(marketer, path, {**emptied, "op": "refresh"}))
    assert rows_of(empty) == [] and 'value="add:-1"' in empty
    first = post_form(marketer, path, {**emptied, "op": "add:-1", "step--1-add": "wait"})
    assert rows_of(text_of(first)) == ["wait"]
    # A changed kind shows its own fields on Refresh.
    kind = text_of(post_form(marketer, path, three_steps(op="refresh", **{"step-1-kind": "end"})))
    assert 'name="step-1-duration"' not in kind and "The enrolment completes here" in kind
    for op in ("add:9", "jump:0", "remove:"):
        bad = post_form(marketer, path, three_steps(op=op))
        assert bad.status_code == 400 and problems(bad)
    assert count(app, Sequence) == 0


def _enrol(app, sequence_id: int, position: int = 0, sent: bool = False) -> None:
    with app.app_context():
        contact = Contact(email=f"c{position}-{sent}@example.com")
        db.session.add(contact)
        db.session.flush()
        enrolment = Enrolment(
            sequence_id=sequence_id, contact_id=contact.id, position=position, cause="t"
        )
        db.session.add(enrolment)
        db.session.flush()
        if sent:
            template = db.session.scalar(
                select(EmailTemplate).where(EmailTemplate.name == "welcome")
            )
            db.session.add(
                Message(
                    contact_id=contact.id,
                    template_id=template.id,
                    template_version_id=template.current_version_id,
                    variant="A",
                    kind="sequence",
                    enrolment_id=enrolment.id,
                    step=0,
                    to_addr=contact.email,
                    status="sent",
                    sent_at=utcnow(),
                )
            )
        db.session.commit()


def test_editing_shows_the_stored_sequence_with_its_stats_and_saves_changes(app, marketer):
    load(app, "sequences:\n" + "\n".join("  " + line for line in _yaml(STORED).splitlines()))
    sequence = stored(app, "nurture-developers")
    _enrol(app, sequence.id, position=0, sent=True)
    path = f"/admin/sequences/{sequence.id}/steps"
    page = text_of(marketer.get(path))
    assert rows_of(page) == ["send", "wait", "branch", "wait", "wait", "end", "send", "end"]
    assert '<option value="developers" selected>developers</option>' in page
    assert 'value="fri" checked' in page and 'value="wed" checked' not in page
    assert 'id="enabled" checked' not in page and "<strong>disabled</strong>" in page
    assert f'href="/admin/sequences/{sequence.id}"' in page  # Edit as YAML
    assert "1 active, 0 completed, 0 exited enrolments" in page
    stats = re.search(r'id="step-0-row">.*?<td class="stats">(.*?)</td>', page, re.S).group(1)
    assert " ".join(stats.split()) == "1 reached<br>1 sent<br>0 human opens<br>0 human clicks"
    # Moving a step keeps its stats with it; moving is not saving.
    moved = text_of(post_form(marketer, path, {**posted(form_of(STORED)), "op": "down:0"}))
    stats = re.search(r'id="step-1-row">.*?<td class="stats">(.*?)</td>', moved, re.S).group(1)
    assert "1 sent" in stats and stored(app, "nurture-developers").steps == sequence.steps
    # Save a change, with a posted rename that does not rename.
    form = form_of(STORED)
    form.steps[1].duration, form.enabled, form.window_days = "3d", True, []
    form.window_hours = ""
    response = post_form(marketer, path, {**posted(form), "name": "other", "op": "save"})
    assert response.status_code == 302
    after = stored(app, "nurture-developers")
    assert after.steps[1] == {"wait": "3d"} and after.enabled and after.send_window is None
    assert count(app, Sequence) == 1


def _yaml(item: dict[str, Any]) -> str:
    import yaml

    return "- " + yaml.safe_dump(item, sort_keys=False).replace("\n", "\n  ").rstrip()


def test_typed_names_are_shown_as_text(app, marketer):
    load(
        app,
        f"segments:\n  - name: '{XSS}'\n    match: {{stage: {{in: [lead]}}}}\n"
        f"templates:\n  - {{name: '{XSS}', subject: Hi, html: <p>Hi</p>}}\n"
        f"sequences:\n  - name: '{XSS}'\n    entry: {{segment: '{XSS}'}}\n"
        f"    steps: [{{send: '{XSS}'}}, {{name: '{XSS}', end: true}}]\n",
    )
    sequence = stored(app, XSS)
    for path in (
        f"/admin/sequences/{sequence.id}/steps",
        "/admin/sequences/new/steps",
        "/admin/sequences",
    ):
        page = text_of(marketer.get(path))
        assert XSS not in page, path
        assert "&lt;script&gt;" in page, path


def test_a_sequence_without_history_is_deleted_and_taken_out_of_campaigns(app, marketer):
    post_form(marketer, "/admin/sequences/new/steps", three_steps())
    post_form(marketer, "/admin/sequences/new/steps", three_steps(name="Other"))
    doomed, kept = stored(app, "Welcome"), stored(app, "Other")
    with app.app_context():
        db.session.add(Campaign(name="Spring", channel="email", sequence_ids=[doomed.id, kept.id]))
        db.session.commit()
    path = f"/admin/sequences/{doomed.id}/delete"
    page = f"/admin/sequences/{doomed.id}/steps"
    unconfirmed = post_form(marketer, path, {}, page=page)
    assert unconfirmed.status_code == 400 and stored(app, "Welcome") is not None
    response = post_form(marketer, path, {"confirm": "1"}, page=page)
    assert (
        response.status_code == 302 and response.headers["Location"] == "/admin/sequences?deleted=1"
    )
    assert stored(app, "Welcome") is None and stored(app, "Other") is not None
    with app.app_context():
        assert db.session.scalar(select(Campaign.sequence_ids)) == [kept.id]
    assert "The sequence was deleted." in text_of(marketer.get("/admin/sequences?deleted=1"))
    assert marketer.get(page).status_code == 404
    assert post_form(marketer, path, {"confirm": "1"}, page="/admin/sequences").status_code == 404


def test_a_sequence_with_history_is_not_deleted_and_can_be_disabled(app, marketer):
    post_form(marketer, "/admin/sequences/new/steps", three_steps())
    sequence = stored(app, "Welcome")
    _enrol(app, sequence.id, sent=True)
    _enrol(app, sequence.id, position=1)
    page = f"/admin/sequences/{sequence.id}/steps"
    refused = post_form(marketer, f"/admin/sequences/{sequence.id}/delete", {"confirm": "1"}, page)
    assert refused.status_code == 409
    box = unescape(re.search(r'id="refused">(.*?)</div>', text_of(refused), re.S).group(1))
    assert "has 2 enrolments and 1 message" in box
    assert "Disabling it stops new enrolments" in box
    assert f'action="/admin/sequences/{sequence.id}/disable"' in box
    assert stored(app, "Welcome") is not None and count(app, Enrolment) == 2
    disabled = post_form(marketer, f"/admin/sequences/{sequence.id}/disable", {}, page)
    assert disabled.status_code == 302
    after = stored(app, "Welcome")
    assert after.enabled is False and after.steps == sequence.steps


def test_a_sequence_a_threshold_enrols_into_is_not_deleted(app, marketer):
    post_form(marketer, "/admin/sequences/new/steps", three_steps())
    load(app, "thresholds:\n  - name: MQL\n    at_least: 50\n    actions: [{enrol: Welcome}]\n")
    sequence = stored(app, "Welcome")
    page = f"/admin/sequences/{sequence.id}/steps"
    refused = post_form(marketer, f"/admin/sequences/{sequence.id}/delete", {"confirm": "1"}, page)
    assert refused.status_code == 409
    assert "the threshold 'MQL' enrol contacts" in unescape(text_of(refused))
    assert stored(app, "Welcome") is not None and count(app, Threshold) == 1


def test_deleting_and_disabling_need_a_marketer_and_the_forms_token(app, client):
    admin_login(app, client, role="sales")
    load(app, RULES + "sequences:\n  - name: W\n    steps: [{send: welcome}]\n")
    sequence = stored(app, "W")
    token = csrf_of(client, "/admin/")
    for action in ("delete", "disable"):
        path = f"/admin/sequences/{sequence.id}/{action}"
        assert client.post(path, data={"confirm": "1", "csrf_token": token}).status_code == 403
        assert client.post(path, data={"confirm": "1"}).status_code == 400
    assert client.get(f"/admin/sequences/{sequence.id}/steps").status_code == 403
    assert client.get("/admin/sequences/new/steps").status_code == 403
    after = stored(app, "W")
    assert after is not None and after.enabled


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "W\x00"},
        {"name": "x" * 300},
        {"step-0-name": "a\x00b"},
        {"step-1-duration": "9" * 5000},
        {"score_at_least": "9" * 5000},
        {"step-1-duration": "", "step-1-hour": "-0", "step-1-minute": "+99999999999"},
        {"step-0-origin": "x", "step-1-origin": "99999999999", "window_days": "someday"},
        {"based_on": XSS, "step-0-origin": "0", "step-1-origin": "0"},
        {"step-0-kind": "", "reentry": "", "stage_at_least": "boss", "goal_event": "x"},
    ],
)
def test_hostile_input_gets_an_answer_not_a_crash(app, marketer, fields):
    response = post_form(marketer, "/admin/sequences/new/steps", three_steps(**fields))
    assert response.status_code in (302, 400), text_of(response)[:2000]
    if response.status_code == 400:
        assert problems(response) and count(app, Sequence) == 0


def test_an_enrolment_made_during_the_delete_keeps_the_sequence(app, marketer, monkeypatch):
    from tracker.admin import config_sequences

    post_form(marketer, "/admin/sequences/new/steps", three_steps())
    sequence = stored(app, "Welcome")
    with app.app_context():
        db.session.add(Campaign(name="Spring", channel="email", sequence_ids=[sequence.id]))
        db.session.commit()
    page = f"/admin/sequences/{sequence.id}/steps"
    token_page = marketer.get(page)  # the form is read before the enrolment arrives
    assert token_page.status_code == 200
    real = config_sequences.deletion_refusal
    calls = []

    def late(row):
        calls.append(row.id)
        if len(calls) == 1:
            _enrol(app, row.id)  # a worker enrols someone after the check
            return None
        return real(row)

    monkeypatch.setattr(config_sequences, "deletion_refusal", late)
    refused = post_form(marketer, f"/admin/sequences/{sequence.id}/delete", {"confirm": "1"}, page)
    assert refused.status_code == 409 and "has 1 enrolment and 0 messages" in unescape(
        text_of(refused)
    )
    assert stored(app, "Welcome") is not None
    with app.app_context():
        assert db.session.scalar(select(Campaign.sequence_ids)) == [sequence.id]
