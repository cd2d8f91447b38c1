"""Funnel maths on hand-computed data: rates between steps, median days between stages."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from fractions import Fraction

from automation.funnel import conversion_rate, funnel, histogram_median, in_days, stage_waits

START, END = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)


def day(n: int, hour: int = 0) -> datetime:
    """The n-th of March 2026."""
    return datetime(2026, 3, n, hour, tzinfo=UTC)


def test_rates_compare_each_step_with_the_one_before() -> None:
    counts = {"visitors": 1000, "lead": 50, "mql": 20, "sql": 5, "opportunity": 0, "customer": 0}
    steps = funnel(counts, {"mql": 2.5})
    assert [s.count for s in steps] == [1000, 50, 20, 5, 0, 0]
    assert [s.rate for s in steps] == [
        None,
        Fraction(1, 20),
        Fraction(2, 5),
        Fraction(1, 4),
        Fraction(0),
        None,  # nothing before it: no rate, not a division by zero
    ]
    assert steps[2].median_days == 2.5 and steps[3].median_days is None
    assert conversion_rate(3, 0) is None


def test_medians_count_contacts_that_reached_the_stage_in_the_period() -> None:
    journeys = {
        # lead 1 Mar -> mql 3 Mar (2 days) -> sql 7 Mar (4 days)
        1: {"lead": day(1), "mql": day(3), "sql": day(7)},
        # lead 1 Mar -> mql 5 Mar 12:00 (4.5 days); sql skipped -> opportunity says nothing
        2: {"lead": day(1), "mql": day(5, 12), "opportunity": day(9)},
        # mql reached in February: its lead->mql wait is outside the period; sql 10 Mar
        3: {
            "lead": datetime(2026, 2, 1, tzinfo=UTC),
            "mql": datetime(2026, 2, 20, tzinfo=UTC),
            "sql": day(10),
        },
        # lead 2 Mar -> mql 12 Mar (10 days)
        4: {"lead": day(2), "mql": day(12)},
        # reached mql in April: outside
        5: {"lead": day(2), "mql": datetime(2026, 4, 2, tzinfo=UTC)},
    }
    days = {cid: {stage: in_days(at) for stage, at in j.items()} for cid, j in journeys.items()}
    waits = stage_waits(days, in_days(START), in_days(END))
    # Counted on the day the stage was reached, in whole hours waited.
    assert waits == Counter(
        {
            (day(3).date(), "mql", 48): 1,
            (day(5).date(), "mql", 108): 1,
            (day(12).date(), "mql", 240): 1,
            (day(7).date(), "sql", 96): 1,
            (day(10).date(), "sql", 18 * 24): 1,
        }
    )
    hours: dict[str, Counter[int]] = {}
    for (_, stage, waited), n in waits.items():
        hours.setdefault(stage, Counter())[waited] += n
    assert histogram_median(hours["mql"]) / 24 == 4.5  # median of 2, 4.5, 10
    assert histogram_median(hours["sql"]) / 24 == (4 + 18) / 2  # 4 days; 20 Feb -> 10 Mar
    assert "opportunity" not in hours and "customer" not in hours


def test_histogram_median() -> None:
    assert histogram_median({}) is None
    assert histogram_median({5: 1}) == 5
    assert histogram_median({1: 1, 3: 1}) == 2  # even: the mean of the middle two
    assert histogram_median({1: 2, 10: 1}) == 1
    assert histogram_median({1: 1, 2: 2, 9: 1}) == 2
    assert histogram_median({0: 3, 100: 3}) == 50
    # The same as the median of the values written out.
    from statistics import median

    counts = {3: 4, 7: 1, 8: 2, 20: 5}
    assert histogram_median(counts) == median(v for v, n in counts.items() for _ in range(n))
