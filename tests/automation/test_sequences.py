"""Nurture sequences end to end: entries (segment joins through real ingestion, full rebuilds,
the threshold action, not-ready, manual), steps run by the scheduler and a real worker, a
human click waking a branch, exits, idempotency, and catching up after downtime."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rq import Queue
from sqlalchemy import func, select, update

from automation import jobs
from automation.scheduler import LeaderLock, tick
from automation.sequence_runner import (
    ENROLMENT_BATCH,
    RunResult,
    _Moved,
    _step,
    enqueue_due_enrolments,
    enrol,
    load_sequence,
)
from automation.sequence_steps import Caps
from automation.worker import run_worker
from tests.automation.conftest import store_template
from tests.conftest import BROWSER_UA, event, ingest_all, post_events
from tracker.automation_models import ActionRun, StageChange
from tracker.db import db
from tracker.email_models import Enrolment, EnrolmentLog, Message
from tracker.models import Contact, utcnow
from tracker.redis_conn import get_redis
from tracker.tokens import make_token, signing_key

TEMPLATES = ("welcome", "case-study", "pricing-nudge", "a", "b", "c")
RULES = """\
segments:
  - name: developers
    match: {visited: {path: "/docs*", at_least: 1, within_days: 30}}
  - name: pro plan
    match: {field: {name: plan, equals: pro}}
rules:
  - name: Pricing
    event: pageview
    when: {path: "/pricing*"}
    points: 30
thresholds:
  - name: Warm
    score: engagement
    at_least: 30
    actions: [{enrol: warm-leads}]
sequences:
  - name: nurture-developers
    entry: {segment: developers}
    exit: {stage_at_least: sql}
    steps:
      - send: welcome
      - branch: {if: clicked, within: 3d, then: hot, else: next}
      - send: case-study
      - end
      - name: hot
        send: pricing-nudge
  - name: warm-leads
    reentry: after_exit
    steps: [{send: welcome}, {wait: 2d}, {send: case-study}]
  - name: pro-onboarding
    entry: {segment: pro plan}
    steps: [{send: welcome}]
  - name: drip
    steps: [{send: a}, {wait: 1d}, {send: b}, {wait: 1d}, {send: c}]
"""


@pytest.fixture
def loaded(app, tmp_path):
    """The templates, then the rules file with segments, a threshold and sequences."""
    with app.app_context():
        for name in TEMPLATES:
            store_template(name)
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    result = app.test_cli_runner().invoke(args=["automation", "load", str(path)])
    assert result.exit_code == 0, result.output
    assert "4 sequences" in result.output
    return app


def contact_id(app, email: str) -> int:
    with app.app_context():
        found = db.session.scalar(select(Contact.id).where(Contact.email == email))
        db.session.remove()
        return found


def new_contact(app, email: str, **fields) -> int:
    with app.app_context():
        contact = Contact(email=email, traits=fields.pop("traits", {}), **fields)
        db.session.add(contact)
        db.session.commit()
        return contact.id


def enrolments(app, email: str | None = None) -> list[Enrolment]:
    with app.app_context():
        query = select(Enrolment).order_by(Enrolment.id)
        if email:
            query = query.join(Contact, Contact.id == Enrolment.contact_id).where(
                Contact.email == email
            )
        found = db.session.scalars(query).all()
        db.session.expunge_all()
        return list(found)


def messages(app, enrolment_id: int | None = None) -> list[tuple[int, str, str]]:
    """(step, template name, status) of the sequence messages, in the order they were made."""
    from tracker.email_models import EmailTemplate

    with app.app_context():
        query = (
            select(Message.step, EmailTemplate.name, Message.status)
            .join(EmailTemplate, EmailTemplate.id == Message.template_id)
            .where(Message.kind == "sequence")
            .order_by(Message.id)
        )
        if enrolment_id is not None:
            query = query.where(Message.enrolment_id == enrolment_id)
        return [tuple(row) for row in db.session.execute(query).all()]


def log_of(app, enrolment_id: int) -> list[tuple[int, str]]:
    with app.app_context():
        return [
            tuple(row)
            for row in db.session.execute(
                select(EnrolmentLog.position, EnrolmentLog.action)
                .where(EnrolmentLog.enrolment_id == enrolment_id)
                .order_by(EnrolmentLog.id)
            ).all()
        ]


def run_scheduler_and_worker(app) -> None:
    """One scheduler tick (it finds due enrolments), then a real worker empties the queues."""
    # The same scheduler each time: a second one would wait for the first one's lease.
    lock = app.extensions.setdefault("test-scheduler", LeaderLock(get_redis(app), ttl_ms=5000))
    tick(app, lock)
    run_worker(app, ["default"], burst=True)


def make_due(app, enrolment_id: int) -> None:
    with app.app_context():
        db.session.execute(
            update(Enrolment)
            .where(Enrolment.id == enrolment_id)
            .values(next_at=utcnow() - timedelta(seconds=1), lease_until=None)
        )
        db.session.commit()


def test_joining_the_entry_segment_enrols_and_a_human_click_wakes_the_branch(loaded, client, site):
    app = loaded
    post_events(
        client,
        site.key,
        [event("identify", email="ada@example.com"), event(url="https://example.com/docs/api")],
    )
    ingest_all(app)
    (enrolment,) = enrolments(app, "ada@example.com")
    assert (enrolment.status, enrolment.position, enrolment.cause) == (
        "active",
        0,
        "joined segment developers",
    )

    run_scheduler_and_worker(app)
    assert messages(app, enrolment.id) == [(0, "welcome", "queued")]
    enrolment = enrolments(app, "ada@example.com")[0]
    # Waiting on the branch: no click yet, so until the 3-day window ends.
    assert enrolment.position == 1
    assert enrolment.next_at.replace(tzinfo=None) > (utcnow() + timedelta(days=2)).replace(
        tzinfo=None
    )
    assert Queue("mail", connection=get_redis(app)).count == 1  # dispatched after the commit

    # The mail engine's send job sends it (to the outbox), an hour passes, the person clicks.
    with app.app_context():
        message_id = db.session.scalar(select(Message.id).where(Message.step == 0))
    with app.app_context():
        jobs.send_messages([message_id])
        db.session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(sent_at=utcnow() - timedelta(hours=1))
        )
        db.session.commit()
    click = make_token(signing_key(app.config["SECRET_KEY"]), "click", message_id, 1)
    assert client.get(f"/c/{click}", headers={"User-Agent": BROWSER_UA}).status_code == 302
    ingest_all(app)
    woken = enrolments(app, "ada@example.com")[0]
    assert woken.next_at.replace(tzinfo=None) <= utcnow().replace(tzinfo=None)

    run_scheduler_and_worker(app)
    assert messages(app, enrolment.id) == [(0, "welcome", "sent"), (4, "pricing-nudge", "queued")]
    done = enrolments(app, "ada@example.com")[0]
    assert done.status == "completed"
    assert log_of(app, enrolment.id) == [
        (0, "entered"),
        (0, "sent"),
        (1, "waited"),
        (1, "branched"),
        (4, "sent"),
        (5, "completed"),
    ]


def test_a_full_rebuild_enrols_contacts_who_join(loaded):
    app = loaded
    cid = new_contact(app, "pro@example.com", traits={"plan": "pro"})
    with app.app_context():
        assert jobs.rebuild_segments()["joined"] == 1
    (enrolment,) = enrolments(app, "pro@example.com")
    assert enrolment.contact_id == cid
    assert enrolment.cause == "joined segment pro plan"
    with app.app_context():
        jobs.rebuild_segments()  # still a member: no second enrolment
    assert len(enrolments(app, "pro@example.com")) == 1


def test_the_threshold_action_enrols_into_the_named_sequence(loaded, client, site):
    app = loaded
    post_events(
        client,
        site.key,
        [event("identify", email="bo@example.com"), event(url="https://example.com/pricing")],
    )
    ingest_all(app)
    assert enrolments(app, "bo@example.com") == []  # the action is a queued job
    with app.app_context():
        run_id = db.session.scalar(select(ActionRun.id).where(ActionRun.type == "enrol"))
        assert jobs.run_action(run_id) == "done"
        assert db.session.get(ActionRun, run_id).status == "done"
    (enrolment,) = enrolments(app, "bo@example.com")
    with app.app_context():
        assert load_sequence(db.engine.connect(), enrolment.sequence_id).name == "warm-leads"
    assert enrolment.cause == "threshold Warm"


def test_an_enrol_action_naming_an_unknown_sequence_is_a_load_error(app, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "thresholds:\n  - name: Warm\n    at_least: 10\n    actions: [{enrol: nowhere}]\n"
    )
    result = app.test_cli_runner().invoke(args=["automation", "load", str(path)])
    assert result.exit_code != 0
    assert f"{path}:2: threshold 'Warm': no sequence named 'nowhere'" in result.output


def test_sequences_naming_missing_templates_or_segments_are_load_errors(app, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "sequences:\n"
        "  - name: s\n"
        "    entry: {segment: ghosts}\n"
        "    steps:\n"
        "      - send: nothing-saved\n"
    )
    result = app.test_cli_runner().invoke(args=["automation", "load", str(path)])
    assert result.exit_code != 0
    assert f"{path}:2: sequence 's': no segment named 'ghosts'" in result.output
    assert f"{path}:5: sequence 's': no email template named 'nothing-saved'" in result.output
    with app.app_context():
        assert load_sequence(db.engine.connect(), "s") is None  # nothing applied


NOT_READY = """\
sequences:
  - name: developers-not-ready
    entry: {not_ready: true, segment: developers}
    steps: [{send: a}]
  - name: anyone-not-ready
    entry: {not_ready: true}
    steps: [{send: b}]
"""


def test_not_ready_moves_the_lead_to_nurture_and_into_its_segments_sequence(
    loaded, client, site, tmp_path
):
    app = loaded
    path = tmp_path / "not-ready.yaml"
    path.write_text(NOT_READY)
    assert app.test_cli_runner().invoke(args=["automation", "load", str(path)]).exit_code == 0
    post_events(
        client,
        site.key,
        [event("identify", email="dev@example.com"), event(url="https://example.com/docs")],
    )
    ingest_all(app)
    new_contact(app, "other@example.com", stage="mql")
    runner = app.test_cli_runner()

    result = runner.invoke(
        args=["leads", "not-ready", "dev@example.com", "--reason", "budget next quarter"]
    )
    assert result.exit_code == 0, result.output
    assert "enrolled in 'developers-not-ready'" in result.output
    result = runner.invoke(args=["leads", "not-ready", "other@example.com", "--reason", "later"])
    assert "enrolled in 'anyone-not-ready'" in result.output
    with app.app_context():
        stages = dict(db.session.execute(select(Contact.email, Contact.stage)).all())
        assert stages["dev@example.com"] == stages["other@example.com"] == "nurture"
        change = db.session.scalar(
            select(StageChange).where(
                StageChange.contact_id == contact_id(app, "other@example.com")
            )
        )
        assert (change.from_stage, change.to_stage, change.cause) == (
            "mql",
            "nurture",
            "not ready: later",
        )
    causes = {e.cause for e in enrolments(app, "dev@example.com")}
    assert "not ready: budget next quarter" in causes


def test_not_ready_without_a_sequence_for_it_says_so(loaded):
    app = loaded
    new_contact(app, "zed@example.com")
    result = app.test_cli_runner().invoke(
        args=["leads", "not-ready", "zed@example.com", "--reason", "no budget"]
    )
    assert result.exit_code != 0
    assert "no sequence takes not-ready leads" in result.output
    assert "zed@example.com is now in stage nurture" in result.output
    missing = app.test_cli_runner().invoke(args=["leads", "not-ready", "x@y.z", "--reason", "r"])
    assert missing.exit_code != 0 and "no contact has the email" in missing.output


def test_manual_enrolment_the_same_job_twice_sends_once_and_a_stale_step_is_refused(loaded):
    app = loaded
    new_contact(app, "cy@example.com")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["sequences", "enrol", "cy@example.com", "warm-leads"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(args=["sequences", "enrol", "cy@example.com", "warm-leads"])
    assert again.exit_code != 0 and "already active in this sequence" in again.output
    (enrolment,) = enrolments(app, "cy@example.com")
    assert enrolment.cause == "manual"

    with app.app_context():
        stale = db.session.execute(
            select(Enrolment.__table__).where(Enrolment.id == enrolment.id)
        ).first()
        first = jobs.run_enrolments([enrolment.id])
        second = jobs.run_enrolments([enrolment.id])
        assert first == {"enrolments": 1, "steps": 2, "messages": 1}  # sent, then waited
        assert second == {"enrolments": 0, "steps": 0, "messages": 0}  # not due: not claimed
        # A duplicate job that read the enrolment before the first one moved it changes nothing.
        sequence = load_sequence(db.engine.connect(), enrolment.sequence_id)
        with pytest.raises(_Moved), db.engine.begin() as conn:
            _step(conn, stale, sequence, utcnow(), Caps(), RunResult())
    assert messages(app, enrolment.id) == [(0, "welcome", "queued")]
    assert [action for _, action in log_of(app, enrolment.id)] == ["entered", "sent", "waited"]


def test_an_unsubscribed_contact_exits_at_the_next_step(loaded):
    app = loaded
    cid = new_contact(app, "dee@example.com")
    with app.app_context(), db.engine.begin() as conn:
        (enrolment_id,) = enrol(conn, [cid], load_sequence(conn, "warm-leads"), "test", utcnow())
    with app.app_context():
        jobs.run_enrolments([enrolment_id])
        db.session.execute(
            update(Contact).where(Contact.id == cid).values(email_status="unsubscribed")
        )
        db.session.commit()
    make_due(app, enrolment_id)
    with app.app_context():
        assert jobs.run_enrolments([enrolment_id])["messages"] == 0
    (enrolment,) = enrolments(app, "dee@example.com")
    assert (enrolment.status, enrolment.exit_reason) == (
        "exited",
        "do-not-contact (email unsubscribed)",
    )
    assert messages(app, enrolment_id) == [(0, "welcome", "queued")]
    # Nor can a do-not-contact contact be enrolled again.
    with app.app_context(), db.engine.begin() as conn:
        assert enrol(conn, [cid], load_sequence(conn, "warm-leads"), "test", utcnow()) == []


def test_one_active_enrolment_per_contact_and_reentry_after_exit(loaded):
    app = loaded
    cid = new_contact(app, "eve@example.com")
    with app.app_context(), db.engine.begin() as conn:
        warm = load_sequence(conn, "warm-leads")  # reentry: after_exit
        drip = load_sequence(conn, "drip")  # reentry: never
        first = enrol(conn, [cid, cid], warm, "test", utcnow())
        assert len(first) == 1
        assert enrol(conn, [cid], warm, "test", utcnow()) == []
        assert len(enrol(conn, [cid], drip, "test", utcnow())) == 1
        conn.execute(
            update(Enrolment.__table__)
            .where(Enrolment.__table__.c.contact_id == cid)
            .values(status="exited", ended_at=utcnow())
        )
        assert len(enrol(conn, [cid], warm, "again", utcnow())) == 1  # after_exit: back in
        assert enrol(conn, [cid], drip, "again", utcnow()) == []  # never: stays out


def test_steps_due_while_everything_was_down_run_once_in_order(loaded):
    app = loaded
    app.config["EMAIL_CAP_PER_DAY"] = 0  # the three contacts' backlog is what is tested here
    ids = [new_contact(app, f"late{n}@example.com") for n in range(3)]
    now = utcnow()
    with app.app_context(), db.engine.begin() as conn:
        drip = load_sequence(conn, "drip")  # send a, wait 1d, send b, wait 1d, send c
        enrolled = enrol(conn, ids, drip, "test", now - timedelta(days=6))
        # Where each was when everything stopped, and since when that step has been due.
        for enrolment_id, position, days in zip(enrolled, (0, 1, 3), (3, 3, 5), strict=True):
            conn.execute(
                update(Enrolment.__table__)
                .where(Enrolment.__table__.c.id == enrolment_id)
                .values(position=position, next_at=now - timedelta(days=days))
            )
    with app.app_context():
        assert enqueue_due_enrolments(get_redis(app), utcnow(), ENROLMENT_BATCH) == 1
        # Leased while its job waits: a second finder run enqueues nothing more.
        assert enqueue_due_enrolments(get_redis(app), utcnow(), ENROLMENT_BATCH) == 0
    run_worker(app, ["default"], burst=True)
    with app.app_context():
        jobs.run_enrolments(enrolled)  # the same job again: nothing is due any more
    run_scheduler_and_worker(app)

    first, second, third = enrolled
    assert messages(app, first) == [(0, "a", "queued")]
    assert messages(app, second) == [(2, "b", "queued")]
    assert messages(app, third) == [(4, "c", "queued")]
    assert log_of(app, second)[1:] == [(1, "waited"), (2, "sent"), (3, "waited")]
    assert log_of(app, third)[1:] == [(3, "waited"), (4, "sent"), (5, "completed")]
    states = {e.id: (e.status, e.position) for e in enrolments(app)}
    assert states == {first: ("active", 2), second: ("active", 4), third: ("completed", 5)}
    # The next wait counts from the send that just happened, not from the backlog.
    with app.app_context():
        next_at = db.session.scalar(select(Enrolment.next_at).where(Enrolment.id == second))
    assert next_at.replace(tzinfo=None) > (now + timedelta(hours=23)).replace(tzinfo=None)


def test_the_frequency_cap_postpones_a_second_sequences_send(loaded):
    app = loaded
    app.config["EMAIL_CAP_PER_DAY"] = 1
    cid = new_contact(app, "fay@example.com")
    with app.app_context(), db.engine.begin() as conn:
        enrolled = [
            enrol(conn, [cid], load_sequence(conn, name), "test", utcnow())[0]
            for name in ("warm-leads", "drip")
        ]
    with app.app_context():
        jobs.run_enrolments(enrolled)
    assert len(messages(app)) == 1
    postponed = [e for e in enrolments(app) if e.position == 0]
    assert len(postponed) == 1 and postponed[0].status == "active"
    assert log_of(app, postponed[0].id)[-1] == (0, "postponed")


def test_show_lists_sequences_and_their_enrolments_and_export_loads_back(loaded, tmp_path):
    app = loaded
    new_contact(app, "gus@example.com")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["sequences", "enrol", "gus@example.com", "drip"]).exit_code == 0
    overview = runner.invoke(args=["sequences", "show"]).output
    assert "drip\tentry: manual\t1 active, 0 completed, 0 exited" in overview
    assert "nurture-developers\tentry: joins developers" in overview
    detail = runner.invoke(args=["sequences", "show", "drip"]).output
    assert "gus@example.com\tstep 1: send a\tdue " in detail
    assert runner.invoke(args=["sequences", "show", "nope"]).exit_code != 0

    exported = runner.invoke(args=["automation", "show"]).output
    assert "- name: nurture-developers" in exported
    path = tmp_path / "exported.yaml"
    path.write_text(exported.replace("(hidden)", "x" * 16))
    again = runner.invoke(args=["automation", "load", str(path)])
    assert again.exit_code == 0, again.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Enrolment)) == 1
