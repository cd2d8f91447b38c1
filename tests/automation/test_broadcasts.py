"""Broadcasts with an A/B test share and a winner, Thompson sampling on real counts, reports."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest
from rq import Queue
from sqlalchemy import func, select, update

from automation.broadcasts import (
    BroadcastError,
    decide,
    due_for_decision,
    enqueue_due_decisions,
    start,
)
from automation.config_file import ConfigFileError, parse
from automation.config_store import apply, export
from automation.outgoing import create_messages
from automation.variants import forget_stats, pick_variant
from automation.worker import run_worker
from tests.automation.conftest import store_template
from tracker.automation_models import Segment, SegmentMember
from tracker.db import db
from tracker.email_models import Broadcast, Message
from tracker.models import Contact, utcnow
from tracker.redis_conn import get_redis

TWO_VARIANTS = [
    {"name": "A", "subject": "Spring is here", "html": "<p>A</p>", "text": "A"},
    {"name": "B", "subject": "Ada, your spring offer", "html": "<p>B</p>", "text": "B"},
]

RULES = """\
segments:
  - name: Trial users
    match: {tag: trial}
broadcasts:
  - name: Spring launch
    template: spring
    test: {percent: 20, metric: click, decide_after: 4h}
  - name: Trial news
    template: spring
    segment: Trial users
"""


def _contacts(count: int, prefix: str = "c", status: str = "ok") -> list[int]:
    contacts = [
        Contact(email=f"{prefix}{i}@example.com", traits={}, email_status=status)
        for i in range(count)
    ]
    db.session.add_all(contacts)
    db.session.commit()
    return [c.id for c in contacts]


def _load(text: str = RULES) -> None:
    with db.engine.begin() as conn:
        apply(conn, parse(text, "rules.yaml"), "rules.yaml")


def _messages(**where: object) -> list[Message]:
    query = select(Message).order_by(Message.id)
    for column, value in where.items():
        query = query.where(getattr(Message, column) == value)
    return list(db.session.scalars(query))


def _set(ids: list[int], **values: object) -> None:
    db.session.execute(update(Message).where(Message.id.in_(ids)).values(**values))
    db.session.commit()


def _broadcast(name: str) -> Broadcast:
    db.session.expire_all()
    return db.session.scalar(select(Broadcast).where(Broadcast.name == name))


def test_a_test_share_goes_out_first_split_evenly_and_a_second_send_is_refused(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS)
        _contacts(50)
        _load()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["broadcasts", "send", "Spring launch"])
    assert result.exit_code == 0, result.output
    assert "A/B test queued for 10 of 50 contacts (5 get A, 5 get B)" in result.output
    with app.app_context():
        messages = _messages()
        assert len(messages) == 10
        assert Counter(m.variant for m in messages) == {"A": 5, "B": 5}
        assert {(m.kind, m.status) for m in messages} == {("broadcast", "queued")}
        broadcast = _broadcast("Spring launch")
        assert (broadcast.status, broadcast.winner) == ("testing", None)
        assert {m.broadcast_id for m in messages} == {broadcast.id}
        # The send jobs are on the mail queue, ten ids in one batch.
        jobs = Queue("mail", connection=get_redis()).jobs
        assert sorted(i for job in jobs for i in job.args[0]) == [m.id for m in messages]
    again = runner.invoke(args=["broadcasts", "send", "Spring launch"])
    assert again.exit_code == 1
    assert "'Spring launch' was started at" in again.output and "nothing was sent" in again.output
    with app.app_context():
        assert len(_messages()) == 10


def test_the_winner_by_human_clicks_goes_to_the_rest_once_the_test_period_is_over(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS)
        _contacts(50)
        _load()
        t0 = utcnow()
        with db.engine.begin() as conn:
            started = start(conn, "Spring launch", now=t0, rng=random.Random(4))
        assert started.test == {"A": 5, "B": 5}
        assert started.decide_at == t0 + timedelta(hours=4)
        test = _messages()
        a = [m.id for m in test if m.variant == "A"]
        b = [m.id for m in test if m.variant == "B"]
        _set(a + b, status="sent", sent_at=t0)
        # A is opened more, B clicked more: the metric is clicks, so B must win.
        _set(a, opened_at=t0)
        _set(b[:2], opened_at=t0)
        _set(a[:1], clicked_at=t0)
        _set(b[:3], clicked_at=t0)
        # The audience is taken at decision time: one newcomer, one who unsubscribed meanwhile.
        newcomer = _contacts(1, prefix="new")[0]
        tested = {m.contact_id for m in test}
        leaver = db.session.scalar(
            select(Contact).where(Contact.id.not_in(tested)).order_by(Contact.id)
        )
        leaver.email_status = "unsubscribed"
        db.session.commit()
        leaver_id = leaver.id

        with db.engine.connect() as conn:
            assert due_for_decision(conn, t0 + timedelta(hours=3, minutes=59)) == []
            assert due_for_decision(conn, t0 + timedelta(hours=4)) == [started.broadcast_id]
        redis = get_redis()
        assert enqueue_due_decisions(redis, t0 + timedelta(hours=3)) == 0
        assert enqueue_due_decisions(redis, t0 + timedelta(hours=4, seconds=1)) == 1
        assert enqueue_due_decisions(redis, t0 + timedelta(hours=4, seconds=2)) == 0
        assert Queue("default", connection=redis).count == 1

    run_worker(app, ["default"], burst=True)  # the real decision job

    with app.app_context():
        broadcast = _broadcast("Spring launch")
        assert (broadcast.status, broadcast.winner) == ("sent", "B")
        assert broadcast.decided_at is not None and broadcast.finished_at is not None
        rest = [m for m in _messages() if m.contact_id not in tested]
        assert len(rest) == 50 - 10 - 1 + 1
        assert {m.variant for m in rest} == {"B"}
        assert newcomer in {m.contact_id for m in rest}
        assert leaver_id not in {m.contact_id for m in rest}
        # Deciding again, as a duplicated job or by hand, adds nothing.
        from automation.jobs import decide_broadcast

        assert decide_broadcast(broadcast.id).startswith("not testing")
        with db.engine.begin() as conn:
            assert decide(conn, broadcast.id) is None
        assert len(_messages()) == 50
        assert (
            db.session.scalar(
                select(func.count()).select_from(
                    select(Message.contact_id).group_by(Message.contact_id).subquery()
                )
            )
            == 50
        )


def test_the_open_metric_counts_human_opens_only(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS)
        _contacts(20)
        _load(RULES.replace("metric: click", "metric: open").replace("percent: 20", "percent: 50"))
        with db.engine.begin() as conn:
            started = start(conn, "Spring launch", rng=random.Random(1))
        test = _messages()
        a = [m.id for m in test if m.variant == "A"]
        b = [m.id for m in test if m.variant == "B"]
        _set(a + b, status="sent", sent_at=utcnow())
        _set(a, machine_opens=3, machine_clicks=2)  # image proxies and scanners, every one
        _set(b[:1], opened_at=utcnow(), opens=1)
        with db.engine.begin() as conn:
            decided = decide(conn, started.broadcast_id)
        assert decided.winner == "B"
        assert decided.variants["A"].machine_opens == 5 and decided.variants["A"].human_opens == 0
        assert len(decided.message_ids) == 10


def test_do_not_contact_and_non_members_are_skipped(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS[:1])
        ok = _contacts(4)
        for status in ("unsubscribed", "bounced", "complained"):
            _contacts(2, prefix=status, status=status)
        _load()
        segment_id = db.session.scalar(select(Segment.id).where(Segment.name == "Trial users"))
        barred = db.session.scalar(select(Contact.id).where(Contact.email_status == "bounced"))
        db.session.add_all(
            SegmentMember(segment_id=segment_id, contact_id=c) for c in [*ok[:2], barred]
        )
        db.session.commit()
        with db.engine.begin() as conn:
            started = start(conn, "Trial news")
        assert started.status == "sent" and started.audience == 2
        assert sorted(m.contact_id for m in _messages()) == ok[:2]
        # The test needs two variants: with one, everyone who may be emailed gets it at once.
        with db.engine.begin() as conn:
            launch = start(conn, "Spring launch")
        assert launch.status == "sent" and "one variant" in launch.note
        assert len(_messages(broadcast_id=launch.broadcast_id)) == 4


def test_without_a_test_thompson_sampling_favours_the_variant_with_more_human_clicks(app):
    with app.app_context():
        template_id = store_template("spring", TWO_VARIANTS)
        contacts = _contacts(260)
        _load()
        seed = Broadcast(name="Earlier send", template_id=template_id, status="sent")
        db.session.add(seed)
        db.session.commit()
        recipients = [
            {"contact_id": c, "broadcast_id": seed.id, "variant": "AB"[i % 2]}
            for i, c in enumerate(contacts[:60])
        ]
        with db.engine.begin() as conn:
            create_messages(conn, "spring", recipients, kind="broadcast")
        earlier = _messages()
        _set([m.id for m in earlier], status="sent", sent_at=utcnow())
        _set([m.id for m in earlier if m.variant == "B"][:15], clicked_at=utcnow())
        # Machine clicks on A count for nothing.
        _set([m.id for m in earlier if m.variant == "A"], machine_clicks=1)
        forget_stats()
        with db.engine.connect() as conn:
            picks = Counter(pick_variant(conn, template_id, ["A", "B"]) for _ in range(400))
            assert picks["B"] > 0.95 * 400
            # A variant never sent (Beta(1, 1)) is still tried, about as often as B here.
            picks = Counter(pick_variant(conn, template_id, ["A", "B", "C"]) for _ in range(400))
            assert picks["C"] > 0.25 * 400 and picks["A"] < 0.05 * 400
        forget_stats()
        result = app.test_cli_runner().invoke(args=["broadcasts", "send", "Trial news"])
        # Trial news's segment is empty: refused, nothing changes.
        assert result.exit_code == 1 and "reaches no one" in result.output
        assert _broadcast("Trial news").status == "draft"
        db.session.execute(update(Broadcast).values(segment_id=None))
        db.session.commit()
        with db.engine.begin() as conn:
            started = start(conn, "Trial news")
        variants = Counter(m.variant for m in _messages(broadcast_id=started.broadcast_id))
        assert sum(variants.values()) == 260
        assert variants["B"] > 0.8 * 260


def test_a_test_share_smaller_than_the_variants_is_refused_and_changes_nothing(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS)
        _contacts(3)
        _load()
        with db.engine.begin() as conn, pytest.raises(BroadcastError, match="raise the test"):
            start(conn, "Spring launch")
        assert _broadcast("Spring launch").status == "draft" and _messages() == []
        with db.engine.begin() as conn, pytest.raises(BroadcastError, match="no broadcast named"):
            start(conn, "Nope")


def test_reports_show_each_variant_the_winner_and_the_chance_it_is_best(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS)
        _contacts(40)
        _load()
        with db.engine.begin() as conn:
            started = start(conn, "Spring launch", rng=random.Random(2))
        test = _messages()
        _set([m.id for m in test], status="sent", sent_at=utcnow())
        b = [m.id for m in test if m.variant == "B"]
        _set(b[:3], opened_at=utcnow(), clicked_at=utcnow())
        _set(b[3:], machine_opens=1)
        with db.engine.begin() as conn:
            decide(conn, started.broadcast_id)
    runner = app.test_cli_runner()
    shown = runner.invoke(args=["broadcasts", "show", "Spring launch"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert "broadcast 'Spring launch': sent" in lines[0]
    assert "test: 20% of the audience, winner by human click rate after 4h" in shown.output
    assert "winner: B" in shown.output
    a_row = next(line.split() for line in lines if line.strip().startswith("A "))
    b_row = next(line.split() for line in lines if line.strip().startswith("B (winner)"))
    # messages, sent, human opens, machine opens, human clicks, machine clicks, rates
    assert a_row[1:] == ["4", "4", "0", "0", "0", "0", "0.0%", "0.0%"]
    assert b_row[2:] == ["36", "4", "3", "1", "3", "0", "75.0%", "75.0%"]
    listed = runner.invoke(args=["broadcasts", "show"])
    assert "Spring launch\tsent\ttemplate spring\tevery contact\t40 messages\twinner B" in (
        listed.output
    )
    stats = runner.invoke(args=["templates", "stats", "spring"])
    assert stats.exit_code == 0, stats.output
    header, a_stats, b_stats = stats.output.splitlines()[1:4]
    assert header.split()[-2:] == ["chance", "best"]
    # B: 3 human clicks of 4 sent; A: none of 4 (the 36 winner messages are not sent yet).
    assert b_stats.split()[2:6] == ["4", "3", "1", "3"]
    assert float(b_stats.split()[-1].rstrip("%")) > 90 > float(a_stats.split()[-1].rstrip("%"))
    missing = runner.invoke(args=["templates", "stats", "nope"])
    assert missing.exit_code == 1 and "no email template named 'nope'" in missing.output
    unknown = runner.invoke(args=["broadcasts", "show", "nope"])
    assert unknown.exit_code == 1 and "known: Spring launch, Trial news" in unknown.output
    early = runner.invoke(args=["broadcasts", "decide", "Spring launch"])
    assert early.exit_code == 1 and "is not being tested (status sent)" in early.output


def test_broadcasts_decide_picks_the_winner_before_the_test_period_ends(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS)
        _contacts(10)
        _load(RULES.replace("percent: 20", "percent: 40"))
        with db.engine.begin() as conn:
            start(conn, "Spring launch", rng=random.Random(3))
        a = [m.id for m in _messages(variant="A")]
        _set(a, status="sent", sent_at=utcnow())
        _set(a[:1], clicked_at=utcnow())
    result = app.test_cli_runner().invoke(args=["broadcasts", "decide", "Spring launch"])
    assert result.exit_code == 0, result.output
    assert "A wins by click rate; 6 messages queued" in result.output
    with app.app_context():
        assert Counter(m.variant for m in _messages()) == {"A": 8, "B": 2}


BAD = """\
broadcasts:
  - name: No template
    segment: Trial users
  - name: Bad percent
    template: spring
    test: {percent: 100}
  - name: Bad metric
    template: spring
    test: {percent: 10, metric: replies}
  - name: Bad field
    template: spring
    test: {percent: 10, after: 4h}
  - name: Bad duration
    template: spring
    test: {percent: 10, decide_after: soon}
  - name: Extra
    template: spring
    audience: everyone
"""


def test_config_errors_name_the_file_and_line():
    with pytest.raises(ConfigFileError) as caught:
        parse(BAD, "rules.yaml")
    problems = caught.value.problems
    assert problems[0].startswith("rules.yaml:2: broadcast 'No template': 'template'")
    assert problems[1].startswith("rules.yaml:4: broadcast 'Bad percent': test 'percent'")
    assert (
        "rules.yaml:7: broadcast 'Bad metric': test 'metric' must be open or click" in problems[2]
    )
    assert "rules.yaml:10: broadcast 'Bad field': unknown field 'after' in 'test'" in problems[3]
    assert "rules.yaml:13: broadcast 'Bad duration': 'soon' is not a duration" in problems[4]
    assert "rules.yaml:16: broadcast 'Extra': unknown field 'audience'" in problems[5]
    assert len(problems) == 6


def test_loading_checks_names_keeps_started_broadcasts_and_exports_what_it_takes(app):
    with app.app_context():
        store_template("spring", TWO_VARIANTS)
        _contacts(10)
        unknown = "broadcasts:\n  - name: X\n    template: nope\n    segment: Nowhere\n"
        with pytest.raises(ConfigFileError) as caught:
            _load(unknown)
        assert caught.value.problems == [
            "rules.yaml:2: broadcast 'X': no email template named 'nope'"
        ]
        assert db.session.scalar(select(func.count()).select_from(Broadcast)) == 0
        _load()
        with db.engine.connect() as conn:
            shown = export(conn)
        assert "decide_after: 4h" in shown
        _load(shown)  # the export loads back, unchanged
        with db.engine.begin() as conn:
            start(conn, "Spring launch", rng=random.Random(1))
        _load(shown)  # a started broadcast repeated unchanged is fine
        with pytest.raises(ConfigFileError) as caught:
            _load(RULES.replace("percent: 20", "percent: 30"))
        assert "rules.yaml:5: broadcast 'Spring launch': it was started at" in str(caught.value)
        # The draft one still takes changes.
        _load(RULES.replace("    segment: Trial users\n", ""))
        assert _broadcast("Trial news").segment_id is None
        assert _broadcast("Spring launch").test_percent == 20
