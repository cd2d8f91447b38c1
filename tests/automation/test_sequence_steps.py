"""The sequence engine with a controllable clock: definitions, waits, windows, caps, exits,
branches and re-entry. Pure: no database, no Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from automation.config_file import ConfigFileError, parse
from automation.sequence_defs import (
    SequenceError,
    describe,
    make_sequence,
    read_steps,
    sequence_document,
)
from automation.sequence_steps import (
    Caps,
    ContactFacts,
    EnrolmentFacts,
    MessageFacts,
    PastEnrolment,
    cap_clears,
    contact_zone,
    decide,
    earliest_send,
    entry_refusal,
    window_opens,
)

NEW_YORK, TOKYO, BERLIN = (
    ZoneInfo("America/New_York"),
    ZoneInfo("Asia/Tokyo"),
    ZoneInfo("Europe/Berlin"),
)
LOS_ANGELES = ZoneInfo("America/Los_Angeles")

EXAMPLE = """\
sequences:
  - name: nurture-developers
    entry: {segment: developers}
    reentry: {after_days: 30}
    send_window: {days: [mon, tue, wed, thu, fri], hours: "09:00-17:00"}
    exit: {stage_at_least: sql, score_at_least: 80, left_segment: true,
           goal: {event: custom, name: demo_booked}}
    steps:
      - send: welcome-developers
      - wait: 2d
      - branch: {if: clicked, within: 3d, then: hot, else: next}
      - wait: {until: {weekday: tue, hour: 10}}
      - send: case-study
      - end
      - name: hot
        send: pricing-nudge
"""


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sequence(steps, **kwargs):
    normal, _ = read_steps(steps)
    return make_sequence(1, "s", normal, **kwargs)


def at(position: int, due: datetime, last: MessageFacts | None = None) -> EnrolmentFacts:
    return EnrolmentFacts(position, due, last)


# --- definitions --------------------------------------------------------------------------


def test_the_example_definition_loads_normalised_and_exports_back_the_same():
    (spec,) = parse(EXAMPLE, "rules.yaml").sequences
    assert spec.entry_segment == "developers" and not spec.on_not_ready
    assert (spec.reentry, spec.reentry_days) == ("after_days", 30)
    assert spec.templates == {"welcome-developers", "case-study", "pricing-nudge"}
    assert spec.template_lines["case-study"] == 13
    assert spec.steps[2] == {
        "branch": {"if": "clicked", "within": "3d", "then": "hot", "else": "next"}
    }
    assert spec.steps[5] == "end"
    document = sequence_document(spec)
    import yaml

    again = parse(yaml.safe_dump({"sequences": [document]}), "again.yaml").sequences[0]
    assert (again.steps, again.exits, again.send_window) == (
        spec.steps,
        spec.exits,
        spec.send_window,
    )
    compiled = make_sequence(1, spec.name, spec.steps, exits=spec.exits, entry_segment_id=3)
    assert [describe(compiled, i) for i in range(7)] == [
        "send welcome-developers",
        "wait 2d",
        "branch: clicked within 3d → hot, else step 4",
        "wait until Tue 10:00",
        "send case-study",
        "end",
        "send pricing-nudge",
    ]


@pytest.mark.parametrize(
    "steps,message",
    [
        ("      - sned: welcome", "(line 4): unknown step field 'sned'"),
        (
            "      - send: welcome\n      - {wait: 2d, send: x}",
            "(line 5): a step is exactly one of",
        ),
        ("      - send: welcome\n      - wait: soon", "(line 5): 'soon' is not a duration"),
        (
            "      - name: top\n        send: welcome\n"
            "      - branch: {if: clicked, within: 3d, then: top}",
            "branch target 'top' is not after the branch",
        ),
        (
            "      - send: welcome\n      - branch: {if: clicked, within: 3d, then: nowhere}",
            "branch target 'nowhere' is not a step name",
        ),
        (
            "      - branch: {if: opened, within: 3d, then: end}\n      - send: welcome",
            "put a send step before it",
        ),
        ("      - send: welcome\n      - end\n      - send: orphan", "can never be reached"),
        (
            "      - send: welcome\n      - branch: {if: replied, within: 1d, then: end}",
            "branch 'if' must be one of opened, clicked",
        ),
        ("      - wait: {until: {weekday: someday, hour: 10}}", "weekday 'someday'"),
        ("      - wait: {until: {hour: 25}}", "hour must be 0 to 23"),
    ],
)
def test_bad_steps_are_load_errors_naming_the_file_and_line(steps, message):
    text = f"sequences:\n  - name: broken\n    steps:\n{steps}\n"
    with pytest.raises(ConfigFileError) as caught:
        parse(text, "rules.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("rules.yaml:2: sequence 'broken': ")
    assert message in problem


@pytest.mark.parametrize(
    "fields,message",
    [
        ("    colour: blue\n", "unknown field 'colour'"),
        ("    entry: {segmnt: x}\n", "'entry' takes segment"),
        ("    reentry: sometimes\n", "'reentry' is never, after_exit or {after_days: N}"),
        ("    send_window: {hours: '17:00-09:00'}\n", "the start must come before the end"),
        ("    send_window: {days: [monday]}\n", "send_window days must be a list"),
        ("    exit: {stage_at_least: hot}\n", "exit stage_at_least 'hot'"),
        ("    exit: {left_segment: true}\n", "left_segment needs an entry segment"),
        ("    exit: {goal: {event: purchase}}\n", "exit goal event 'purchase'"),
        ("    exit: {bored: true}\n", "unknown exit field 'bored'"),
    ],
)
def test_bad_sequence_fields_are_load_errors(fields, message):
    text = f"sequences:\n  - name: broken\n{fields}    steps: [{{send: welcome}}]\n"
    with pytest.raises(ConfigFileError) as caught:
        parse(text, "rules.yaml")
    assert message in "\n".join(caught.value.problems)


def test_a_stored_sequence_that_no_longer_checks_out_is_refused():
    with pytest.raises(SequenceError, match="non-empty list"):
        make_sequence(1, "empty", [])


# --- waits --------------------------------------------------------------------------------


def test_a_wait_counts_from_when_its_step_fell_due_so_missed_waits_catch_up():
    seq = sequence([{"send": "a"}, {"wait": "2d"}, {"send": "b"}])
    due = utc(2024, 5, 1, 12)
    decision = decide(seq, at(1, due), ContactFacts(), now=due + timedelta(minutes=1))
    assert (decision.action, decision.position, decision.at) == ("waited", 2, utc(2024, 5, 3, 12))
    # Found three days late (everything was down): the wait is over, go on at once.
    late = decide(seq, at(1, due), ContactFacts(), now=utc(2024, 5, 4, 12))
    assert (late.action, late.position, late.at) == ("waited", 2, utc(2024, 5, 3, 12))
    assert late.at <= utc(2024, 5, 4, 12)


def test_waiting_until_a_weekday_and_hour_uses_the_contacts_clock_across_dst():
    seq = sequence([{"send": "a"}, {"wait": {"until": {"weekday": "tue", "hour": 10}}}])
    # New York springs forward on Sunday 10 March 2024: Tuesday 10:00 is EDT (UTC-4).
    before_change = utc(2024, 3, 8, 17)  # Friday 12:00 EST
    decision = decide(seq, at(1, before_change), ContactFacts(zone=NEW_YORK), before_change)
    assert decision.at == utc(2024, 3, 12, 14)
    # Berlin falls back on Sunday 27 October 2024: Tuesday 10:00 is CET (UTC+1).
    friday = utc(2024, 10, 25, 10)
    decision = decide(seq, at(1, friday), ContactFacts(zone=BERLIN), friday)
    assert decision.at == utc(2024, 10, 29, 9)
    # Already Tuesday 10:00 on the contact's clock: no wait at all.
    tuesday_ten = utc(2024, 10, 29, 9)
    decision = decide(seq, at(1, tuesday_ten), ContactFacts(zone=BERLIN), tuesday_ten)
    assert decision.at == tuesday_ten


def test_the_same_wait_ends_at_different_instants_in_different_timezones():
    seq = sequence([{"send": "a"}, {"wait": {"until": {"hour": 9}}}])
    now = utc(2024, 6, 3, 12)  # Monday noon UTC: 21:00 in Tokyo, 05:00 in Los Angeles
    tokyo = decide(seq, at(1, now), ContactFacts(zone=TOKYO), now)
    los_angeles = decide(seq, at(1, now), ContactFacts(zone=LOS_ANGELES), now)
    assert tokyo.at == utc(2024, 6, 4, 0)  # Tuesday 09:00 JST
    assert los_angeles.at == utc(2024, 6, 3, 16)  # Monday 09:00 PDT


def test_the_contacts_timezone_falls_back_to_its_sites_then_utc():
    assert contact_zone("Asia/Tokyo", "Europe/Berlin") == TOKYO
    assert contact_zone("Mars/Olympus_Mons", "Europe/Berlin") == BERLIN
    assert contact_zone(None, "../../etc/passwd") is UTC
    assert contact_zone(42, "") is UTC


# --- send windows and caps ---------------------------------------------------------------


WEEKDAYS_9_TO_5 = {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-17:00"}


def test_a_send_outside_the_window_is_postponed_to_its_opening_in_the_contacts_timezone():
    seq = sequence([{"send": "a"}], send_window=WEEKDAYS_9_TO_5)
    now = utc(2024, 6, 3, 20)  # Monday 20:00 UTC
    # New York: Monday 16:00, inside the window: sent now.
    sent = decide(seq, at(0, now), ContactFacts(zone=NEW_YORK), now)
    assert (sent.action, sent.position, sent.template) == ("sent", 1, "a")
    # Tokyo: Tuesday 05:00, before the window: Tuesday 09:00 JST.
    later = decide(seq, at(0, now), ContactFacts(zone=TOKYO), now)
    assert (later.action, later.position, later.at) == ("postponed", 0, utc(2024, 6, 4, 0))
    assert "send window" in later.detail
    # Los Angeles on Friday evening: Monday 09:00 PDT.
    friday = utc(2024, 6, 8, 2)  # Friday 19:00 PDT
    weekend = decide(seq, at(0, friday), ContactFacts(zone=LOS_ANGELES), friday)
    assert weekend.at == utc(2024, 6, 10, 16)


def test_a_window_ending_at_midnight_and_one_crossing_a_dst_change():
    window = make_sequence(1, "s", [{"send": "a"}], send_window={"hours": "18:00-24:00"}).window
    assert window_opens(utc(2024, 6, 3, 23), NEW_YORK, window) == utc(2024, 6, 3, 23)
    assert window_opens(utc(2024, 6, 4, 3, 59), NEW_YORK, window) == utc(2024, 6, 4, 3, 59)
    assert window_opens(utc(2024, 6, 4, 4), NEW_YORK, window) == utc(2024, 6, 4, 22)
    sundays = make_sequence(1, "s", [{"send": "a"}], send_window={"days": ["sun"]}).window
    # Saturday 9 March 2024 in New York; the next Sunday starts at 00:00 EST (05:00 UTC).
    assert window_opens(utc(2024, 3, 9, 15), NEW_YORK, sundays) == utc(2024, 3, 10, 5)


def test_the_frequency_cap_postpones_a_send_never_skips_it():
    seq = sequence([{"send": "a"}, {"send": "b"}])
    now = utc(2024, 6, 3, 12)
    sends = [now - timedelta(hours=3), now - timedelta(hours=1)]
    caps = Caps(per_day=2, per_week=5)
    decision = decide(seq, at(1, now), ContactFacts(), now, sends, caps)
    assert (decision.action, decision.position) == ("postponed", 1)
    assert decision.at == now + timedelta(hours=21)  # the older send leaves the 24 h window
    assert "frequency cap" in decision.detail
    # When that moment comes the same step is sent: postponed, not skipped.
    resumed = decide(seq, at(1, decision.at), ContactFacts(), decision.at, sends, caps)
    assert (resumed.action, resumed.template, resumed.position) == ("sent", "b", 2)


def test_the_weekly_cap_counts_a_rolling_seven_days():
    now = utc(2024, 6, 10, 12)
    sends = [now - timedelta(days=d) for d in (6, 5, 4)]
    assert cap_clears(sends, now, Caps(per_day=2, per_week=3)) == now + timedelta(days=1)
    assert cap_clears(sends, now, Caps(per_day=2, per_week=4)) == now
    assert cap_clears(sends, now, Caps()) == now  # 0: no cap


def test_cap_and_window_together_give_the_first_moment_both_allow():
    window = make_sequence(1, "s", [{"send": "a"}], send_window=WEEKDAYS_9_TO_5).window
    now = utc(2024, 6, 7, 14)  # Friday 14:00 UTC
    sends = [utc(2024, 6, 7, 9)]
    # The cap clears Saturday 09:00 UTC, outside the window: Monday 09:00 UTC.
    at_ = earliest_send(now, UTC, window, sends, Caps(per_day=1))
    assert at_ == utc(2024, 6, 10, 9)


# --- exits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "contact,reason",
    [
        (ContactFacts(email_status="unsubscribed"), "do-not-contact (email unsubscribed)"),
        (ContactFacts(email_status="bounced"), "do-not-contact (email bounced)"),
        (ContactFacts(stage="opportunity"), "stage opportunity"),
        (ContactFacts(score=80), "score 80"),
        (ContactFacts(in_entry_segment=False), "left the entry segment"),
        (ContactFacts(goal_reached=True), "goal reached (custom demo_booked)"),
    ],
)
def test_each_exit_criterion_ends_the_enrolment_before_the_next_step(contact, reason):
    seq = sequence(
        [{"send": "a"}],
        exits={
            "stage_at_least": "sql",
            "score_at_least": 80,
            "left_segment": True,
            "goal": {"event": "custom", "name": "demo_booked"},
        },
        entry_segment_id=4,
    )
    now = utc(2024, 6, 3, 12)
    decision = decide(seq, at(0, now), contact, now)
    assert (decision.action, decision.final) == ("exited", True)
    assert decision.detail.startswith(reason)


def test_below_every_exit_line_the_step_runs_and_stages_outside_the_funnel_never_exit():
    seq = sequence([{"send": "a"}], exits={"stage_at_least": "sql", "score_at_least": 80})
    now = utc(2024, 6, 3, 12)
    for contact in (ContactFacts(stage="mql", score=79), ContactFacts(stage="nurture")):
        assert decide(seq, at(0, now), contact, now).action == "sent"


def test_an_end_step_and_running_off_the_end_complete():
    seq = sequence([{"send": "a"}, "end"])
    now = utc(2024, 6, 3, 12)
    assert decide(seq, at(1, now), ContactFacts(), now).action == "completed"
    assert decide(seq, at(2, now), ContactFacts(), now).action == "completed"


# --- branches -----------------------------------------------------------------------------

BRANCHY = [
    {"send": "a"},
    {"branch": {"if": "clicked", "within": "3d", "then": "hot", "else": "next"}},
    {"send": "b"},
    "end",
    {"name": "hot", "send": "c"},
]


def test_a_branch_is_true_as_soon_as_a_human_click_is_known():
    seq = sequence(BRANCHY)
    sent = utc(2024, 6, 3, 12)
    clicked = MessageFacts("sent", sent, sent, clicked_at=sent + timedelta(hours=5))
    now = sent + timedelta(hours=6)
    decision = decide(seq, at(1, now, clicked), ContactFacts(), now)
    assert (decision.action, decision.position, decision.at) == ("branched", 4, now)


def test_a_branch_waits_for_its_window_then_is_false():
    seq = sequence(BRANCHY)
    sent = utc(2024, 6, 3, 12)
    quiet = MessageFacts("sent", sent, sent)
    now = sent + timedelta(hours=1)
    waiting = decide(seq, at(1, now, quiet), ContactFacts(), now)
    assert (waiting.action, waiting.position, waiting.at) == ("waited", 1, sent + timedelta(days=3))
    deadline = waiting.at
    timed_out = decide(seq, at(1, deadline, quiet), ContactFacts(), deadline)
    assert (timed_out.action, timed_out.position) == ("branched", 2)
    assert "not clicked within 3d" in timed_out.detail
    # A click after the window does not count.
    late = MessageFacts("sent", sent, sent, clicked_at=deadline + timedelta(hours=1))
    after = decide(seq, at(1, deadline, late), ContactFacts(), deadline + timedelta(hours=2))
    assert after.position == 2


def test_an_opened_branch_takes_a_click_as_an_open_and_undelivered_mail_as_false():
    steps = [{"send": "a"}, {"branch": {"if": "opened", "within": "1d", "then": "end"}}, "end"]
    seq = sequence(steps)
    sent = utc(2024, 6, 3, 12)
    now = sent + timedelta(hours=2)
    clicked_only = MessageFacts("sent", sent, sent, clicked_at=sent + timedelta(hours=1))
    assert decide(seq, at(1, now, clicked_only), ContactFacts(), now).position == 3
    failed = MessageFacts("failed", sent)
    decision = decide(seq, at(1, now, failed), ContactFacts(), now)
    assert (decision.action, decision.position) == ("branched", 2)
    assert "previous message failed" in decision.detail
    # A message still queued: the window counts from when it was queued.
    queued = MessageFacts("queued", sent)
    assert decide(seq, at(1, now, queued), ContactFacts(), now).at == sent + timedelta(days=1)


# --- re-entry -----------------------------------------------------------------------------


def test_reentry_policies():
    now = utc(2024, 6, 3, 12)
    ended = PastEnrolment("completed", now - timedelta(days=10))
    active = PastEnrolment("active")
    assert entry_refusal("never", None, [], now) is None
    assert "already active" in entry_refusal("after_exit", None, [active], now)
    assert "re-entry: never" in entry_refusal("never", None, [ended], now)
    assert entry_refusal("after_exit", None, [ended], now) is None
    assert "30 days" in entry_refusal("after_days", 30, [ended], now)
    assert entry_refusal("after_days", 10, [ended], now) is None
    assert entry_refusal("after_days", 10, [ended, PastEnrolment("exited", now)], now)
