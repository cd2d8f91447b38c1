"""A sequence edited while a runner job works through its enrolments: every step is decided with
the definition that moved the enrolment to where the runner found it, and sent once.

The edit puts a new send first, so everyone moves one step on: a runner applying the old steps
to the new positions would wait where it should send (or send the new first step to someone
already past it). Each test makes the edit commit at one point of the job, with a seam or a
second connection, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text

from automation import sequence_runner
from automation.sequence_runner import enrol, load_sequence, run_due
from automation.sequence_steps import Caps
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, Message, Sequence
from tracker.models import Contact, as_utc, utcnow

TEMPLATES = """
templates:
  - {name: intro, subject: Intro, html: <p>Intro</p>}
  - {name: welcome, subject: Welcome, html: <p>Welcome</p>}
  - {name: pricing, subject: Prices, html: <p>Prices</p>}
"""
RULES = (
    TEMPLATES
    + """
sequences:
  - name: Drip
    steps: [{send: welcome}, {wait: 2d}, {send: pricing}]
"""
)
EDITED = (
    TEMPLATES
    + """
sequences:
  - name: Drip
    steps: [{send: intro}, {send: welcome}, {wait: 2d}, {send: pricing}]
"""
)
"""Intro goes first: welcome moves from step 0 to 1, the wait to 2 and pricing to 3."""

WAIT = 10.0
"""Longest a test waits for the other thread (it takes milliseconds)."""


@contextmanager
def editing(app, rules: str) -> Iterator[None]:
    """Apply `rules` in a transaction that commits when the block ends (locks held until then)."""
    from automation.config_file import parse
    from automation.config_store import apply

    with app.app_context(), db.engine.begin() as conn:
        apply(conn, parse(rules, "test.yaml"), "test.yaml")
        yield


def load(app, rules: str) -> None:
    """Apply `rules` as `automation load` does, committed."""
    with editing(app, rules):
        pass


@pytest.fixture
def drip(app):
    load(app, RULES)
    return app


def enrolled(app, count: int, now: datetime) -> list[int]:
    """`count` new contacts enrolled in Drip, their first step due at `now`."""
    with app.app_context():
        contacts = [Contact(email=f"person{i}@x.test") for i in range(count)]
        db.session.add_all(contacts)
        db.session.commit()
        with db.engine.begin() as conn:
            ids = enrol(conn, [c.id for c in contacts], load_sequence(conn, "Drip"), "test", now)
        db.session.remove()
    return sorted(ids)


def run(app, enrolment_ids: list[int], now: datetime) -> None:
    with app.app_context():
        run_due(enrolment_ids, now, Caps())


def sent(app, enrolment_id: int) -> list[tuple[str, int | None]]:
    """(template, step) of the enrolment's messages, oldest first."""
    with app.app_context():
        found = db.session.execute(
            select(EmailTemplate.name, Message.step)
            .join(EmailTemplate, EmailTemplate.id == Message.template_id)
            .where(Message.enrolment_id == enrolment_id)
            .order_by(Message.id)
        ).all()
        db.session.remove()
        return [tuple(row) for row in found]


def standing(app, enrolment_id: int) -> tuple[str, int, datetime]:
    with app.app_context():
        row = db.session.get(Enrolment, enrolment_id)
        found = row.status, row.position, as_utc(row.next_at)
        db.session.remove()
        return found


def steps_of_drip(app) -> list[Any]:
    with app.app_context():
        steps = db.session.scalar(select(Sequence.steps).where(Sequence.name == "Drip"))
        db.session.remove()
        return steps


def after_welcome(app, enrolment_id: int, now: datetime) -> None:
    """Welcome sent once, as step 1 of the edited sequence; two days' wait before pricing."""
    assert sent(app, enrolment_id) == [("welcome", 1)]
    status, position, next_at = standing(app, enrolment_id)
    assert (status, position) == ("active", 3)
    assert next_at == now + timedelta(days=2)


@contextmanager
def on_statement(app, wanted: Callable[[str], bool], seen: threading.Event) -> Iterator[None]:
    """Set `seen` just before a statement that `wanted` picks is sent (from any thread)."""

    def listener(conn, cursor, statement, parameters, context, executemany) -> None:
        if wanted(statement):
            seen.set()

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def wait_until_blocked(app, is_postgresql: bool) -> None:
    """Return once another connection waits for a lock (PostgreSQL shows it; SQLite's busy
    handler does not, so there a moment's pause stands in for it)."""
    if not is_postgresql:
        time.sleep(0.2)
        return
    deadline = time.monotonic() + WAIT
    with app.app_context(), db.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("no connection came to wait for a lock")


def is_postgresql(app) -> bool:
    with app.app_context():
        return db.engine.dialect.name == "postgresql"


# ---------------------------------------------------------------- edits between steps


def test_an_edit_between_two_enrolments_of_a_job_is_seen_by_the_next(drip, monkeypatch):
    app = drip
    now = utcnow()
    first, second, third = enrolled(app, 3, now)
    compiled = []
    hold = sequence_runner.hold_sequence
    monkeypatch.setattr(
        sequence_runner, "hold_sequence", lambda *a: compiled.append(a[1]) or hold(*a)
    )
    run_one = sequence_runner._run_one

    def edit_after_the_first(enrolment_id: int, *args: Any) -> None:
        run_one(enrolment_id, *args)
        if enrolment_id == first:
            load(app, EDITED)  # the job holds Drip as it was; the others stand at welcome, 1

    monkeypatch.setattr(sequence_runner, "_run_one", edit_after_the_first)
    run(app, [first, second, third], now)
    for enrolment_id in (first, second, third):
        after_welcome(app, enrolment_id, now)
    # Compiled once for the job and once after the edit, not per enrolment or step.
    assert len(compiled) == 2
    # A day on, nobody is due: nothing more is sent.
    run(app, [first, second, third], now + timedelta(days=1))
    assert [len(sent(app, e)) for e in (first, second, third)] == [1, 1, 1]


# ---------------------------------------------------------------- edits during a step


def test_an_edit_holding_the_sequence_makes_the_runner_wait_and_use_it(drip, monkeypatch):
    """The edit has moved everyone but not committed when the runner reads the next enrolment:
    the runner waits for the commit, then decides with the edited steps and the new position
    (on PostgreSQL its first read waited on the sequence row and kept the enrolment's old row)."""
    app = drip
    now = utcnow()
    first, second = enrolled(app, 2, now)
    postgresql = is_postgresql(app)
    holding, runner_at_lock, failures = threading.Event(), threading.Event(), []

    def edit() -> None:
        try:
            with editing(app, EDITED):
                holding.set()
                assert runner_at_lock.wait(WAIT), "the runner never read the next enrolment"
                wait_until_blocked(app, postgresql)
        except BaseException as e:  # reported by the test's own thread
            failures.append(e)
            holding.set()

    editor = threading.Thread(target=edit)
    run_one = sequence_runner._run_one

    def edit_after_the_first(enrolment_id: int, *args: Any) -> None:
        run_one(enrolment_id, *args)
        if enrolment_id == first:
            editor.start()
            assert holding.wait(WAIT)

    runner = threading.current_thread()

    def locking(statement: str) -> bool:
        # The runner's first statement of a step: the lock it takes.
        return (
            threading.current_thread() is runner
            and holding.is_set()
            and ("FOR SHARE" in statement or statement == "BEGIN IMMEDIATE")
        )

    monkeypatch.setattr(sequence_runner, "_run_one", edit_after_the_first)
    with on_statement(app, locking, runner_at_lock):
        run(app, [first, second], now)
    editor.join(WAIT)
    assert not failures, failures
    assert steps_of_drip(app)[0] == {"send": "intro"}
    for enrolment_id in (first, second):
        after_welcome(app, enrolment_id, now)


def test_an_edit_waits_for_the_step_the_runner_is_deciding(drip, monkeypatch):
    """The edit starts after the runner read the enrolment and before it wrote the step: it
    must not commit in between, or the runner would record the old step at a moved position."""
    app = drip
    now = utcnow()
    (enrolment_id,) = enrolled(app, 1, now)
    postgresql = is_postgresql(app)
    writing, failures = threading.Event(), []

    def edit() -> None:
        try:
            load(app, EDITED)
        except BaseException as e:  # reported by the test's own thread
            failures.append(e)

    editor = threading.Thread(target=edit)
    facts = sequence_runner._contact_facts
    blocked: list[bool] = []

    def edit_mid_step(*args: Any) -> Any:
        if editor.ident is None:  # the first step: send welcome
            editor.start()
            assert writing.wait(WAIT), "the edit never came to write the sequence"
            wait_until_blocked(app, postgresql)
            blocked.append(editor.is_alive())
        return facts(*args)

    def locking(statement: str) -> bool:
        # The lock the edit takes on the sequence (PostgreSQL), on the database (SQLite).
        return threading.current_thread() is editor and (
            "FOR NO KEY UPDATE" in statement or statement.startswith("BEGIN IMMEDIATE")
        )

    monkeypatch.setattr(sequence_runner, "_contact_facts", edit_mid_step)
    with on_statement(app, locking, writing):
        run(app, [enrolment_id], now)
    editor.join(WAIT)
    assert not failures, failures
    assert blocked == [True], "the edit did not wait for the step to commit"
    # Welcome was sent as step 0 and renumbered with its step by the edit that came after.
    after_welcome(app, enrolment_id, now)


# ---------------------------------------------------------------- a click waking a branch

BRANCHING = (
    TEMPLATES
    + """
sequences:
  - name: Drip
    steps:
      - send: welcome
      - wait: 1d
      - send: pricing
      - branch: {if: clicked, within: 3d, then: hot, else: next}
      - end
      - {name: hot, send: intro}
"""
)
"""Pricing waits a day after welcome; then a branch on a click of pricing."""


def test_a_click_wakes_no_step_read_in_the_numbering_an_edit_replaced(app, monkeypatch):
    """An edit commits between ingestion reading where an enrolment stands and compiling its
    sequence: the old position must not be looked up in the new steps."""
    from automation.sequence_runner import wake_branches

    load(app, BRANCHING)
    now = utcnow()
    with app.app_context():
        contact = Contact(email="ada@x.test")
        db.session.add(contact)
        db.session.flush()
        welcome = db.session.scalar(select(EmailTemplate).where(EmailTemplate.name == "welcome"))
        enrolment = Enrolment(
            sequence_id=db.session.scalar(select(Sequence.id).where(Sequence.name == "Drip")),
            contact_id=contact.id,
            position=2,  # welcome sent, a day to wait for pricing
            cause="test",
            next_at=now + timedelta(days=1),
        )
        db.session.add(enrolment)
        db.session.flush()
        message = Message(
            contact_id=contact.id,
            template_id=welcome.id,
            template_version_id=welcome.current_version_id,
            variant="A",
            kind="sequence",
            enrolment_id=enrolment.id,
            step=0,
            to_addr=contact.email,
            status="sent",
            sent_at=now,
        )
        db.session.add(message)
        db.session.flush()
        enrolment.last_message_id = message.id
        db.session.commit()
        enrolment_id, message_id = enrolment.id, message.id
        db.session.remove()
    compile_steps = sequence_runner.load_sequence

    def edit_first(*args: Any) -> Any:
        # The wait goes: pricing is step 1 now, and step 2, where it stood, is the branch.
        load(app, BRANCHING.replace("      - wait: 1d\n", ""))
        return compile_steps(*args)

    monkeypatch.setattr(sequence_runner, "load_sequence", edit_first)
    with app.app_context(), db.engine.begin() as conn:
        assert wake_branches(conn, [message_id], now) == 0
    status, position, next_at = standing(app, enrolment_id)
    # Still waiting out the day before pricing, at pricing's new place.
    assert (status, position, next_at) == ("active", 1, now + timedelta(days=1))


def test_an_edit_in_progress_does_not_hold_up_new_enrolments(drip):
    """PostgreSQL: the edit's lock on the sequence leaves the foreign-key check of a new
    enrolment free, so ingestion enrolling someone never waits for (or deadlocks with) it."""
    app = drip
    if not is_postgresql(app):
        pytest.skip("SQLite writes one transaction at a time: nothing runs beside an edit")
    with app.app_context():
        contact = Contact(email="newcomer@x.test")
        db.session.add(contact)
        db.session.commit()
        contact_id = contact.id
        db.session.remove()
    with editing(app, EDITED), app.app_context(), db.engine.connect() as ingestion:
        # The edit is applied and holds its locks until this block ends.
        ingestion.begin()
        ingestion.execute(text("SET LOCAL lock_timeout = '2s'"))
        sequence = load_sequence(ingestion, "Drip")
        (enrolment_id,) = enrol(ingestion, [contact_id], sequence, "test", utcnow())
        ingestion.commit()
    with app.app_context():
        assert db.session.get(Enrolment, enrolment_id).contact_id == contact_id


EXTENDED = EDITED.replace("{send: pricing}]", "{send: pricing}, {wait: 1d}, {send: intro}]")
"""The edited Drip with two steps more at the end: steps 0-3 stay where they are."""


def test_two_saves_at_once_the_second_moves_people_from_the_first_ones_steps(drip):
    """The second save waits for the first and remaps from the steps that one wrote: read
    before the first committed, it would move people who already moved a second time."""
    app = drip
    now = utcnow()
    (enrolment_id,) = enrolled(app, 1, now)
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(Enrolment.__table__.update().values(position=2))  # waiting at pricing
    started = threading.Event()
    failed: list[BaseException] = []

    def second_save() -> None:
        started.set()
        try:
            load(app, EXTENDED)
        except BaseException as e:  # reported by the test thread
            failed.append(e)

    with editing(app, EDITED):
        saver = threading.Thread(target=second_save)
        saver.start()
        assert started.wait(WAIT)
        wait_until_blocked(app, is_postgresql(app))
    saver.join(WAIT)
    assert not saver.is_alive() and not failed
    assert steps_of_drip(app)[-1] == {"send": "intro"}
    status, position, _ = standing(app, enrolment_id)
    assert (status, position) == ("active", 3)  # pricing: moved on by the first save only
