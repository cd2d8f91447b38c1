"""Follow-up health maths on hand-made (became MQL, first action) pairs, worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

from automation.follow_up import follow_up_health

NOW = datetime(2025, 3, 31, 12, 0, tzinfo=UTC)


def at(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2025, month, day, hour, 0, tzinfo=UTC)


def test_share_on_time_median_pending_and_window_by_hand():
    pairs = [
        (at(30, 12), at(30, 14)),  # 2 h: on time
        (at(29, 0), at(30, 6)),  # 30 h: late
        (at(20, 0), None),  # nobody, 11.5 days: late and untouched
        (at(31, 6), None),  # nobody yet, 6 h old: pending and untouched
        (at(1, 0, month=2), at(1, 1, month=2)),  # 58 days ago: outside the 30-day window
        (at(10, 0), at(11, 0)),  # exactly 24 h: on time (the allowance is inclusive)
        (at(31, 0), at(31, 1)),  # 1 h: on time
    ]
    health = follow_up_health(pairs, NOW, hours=24)
    assert health.mqls == 6
    assert (health.on_time, health.late, health.pending, health.untouched) == (3, 2, 1, 2)
    # 3 on time of the 5 decided (the pending one counts neither way).
    assert health.share_on_time == 0.6
    assert health.percent_on_time == "60 %"
    # Waits of those acted on in the window: 2, 30, 24, 1 -> sorted 1, 2, 24, 30 -> (2 + 24) / 2.
    assert health.median_hours_to_action == 13.0


def test_a_shorter_allowance_makes_the_same_pairs_late():
    pairs = [(at(30, 12), at(30, 14)), (at(31, 0), at(31, 1)), (at(31, 11), None)]
    health = follow_up_health(pairs, NOW, hours=1.5)
    # 2 h is late now; 1 h is on time; the 1-hour-old untouched MQL is still pending.
    assert (health.on_time, health.late, health.pending) == (1, 1, 1)
    assert health.share_on_time == 0.5
    assert health.median_hours_to_action == 1.5  # median of 2 and 1


def test_nothing_to_measure():
    health = follow_up_health([], NOW, hours=24)
    assert health.mqls == 0
    assert health.share_on_time is None and health.median_hours_to_action is None
    assert health.percent_on_time == "-"
    only_pending = follow_up_health([(at(31, 11), None)], NOW, hours=24)
    assert only_pending.pending == 1 and only_pending.share_on_time is None


def test_the_window_is_counted_back_from_now():
    pairs = [(at(1, 12), None), (at(1, 11), None)]  # 30 days and 30 days + 1 h before NOW
    health = follow_up_health(pairs, NOW, hours=24)
    assert health.mqls == 1 and health.late == 1
    assert follow_up_health(pairs, NOW, hours=24, window_days=31).mqls == 2
