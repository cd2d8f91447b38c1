"""Funnel maths: step counts to conversion rates, stage journeys to median days between stages.

Pure functions over plain data; the dashboard gathers the counts (from rollups) and
the journeys (from stage_changes).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from itertools import pairwise

STEPS: tuple[tuple[str, str], ...] = (
    ("visitors", "Visitors"),
    ("lead", "Leads"),
    ("mql", "MQLs"),
    ("sql", "SQLs"),
    ("opportunity", "Opportunities"),
    ("customer", "Customers"),
)
"""The funnel's steps, in order: (key, label). Keys past "visitors" are lifecycle stages."""

STAGES = tuple(key for key, _ in STEPS[1:])

EPOCH = datetime(1970, 1, 1, tzinfo=UTC).date()


@dataclass(frozen=True)
class Step:
    """One step of the funnel in a period."""

    key: str
    label: str
    count: int
    rate: Fraction | None  # count over the previous step's; None for the first or after 0
    median_days: float | None  # from reaching the previous stage; None without a pair


def conversion_rate(count: int, previous: int) -> Fraction | None:
    """count / previous, or None when nothing came before."""
    return Fraction(count, previous) if previous else None


def stage_waits(
    journeys: Mapping[int, Mapping[str, float]], start: float, end: float
) -> Counter[tuple[date, str, int]]:
    """How many contacts reached each stage on each day of [start, end), by whole hours
    waited since they reached the stage before.

    Times are in days since the Unix epoch (`in_days`): a journey is one contact's
    first time at each stage ("lead": when it was created). Contacts that skipped
    the previous stage, or reached it only later, say nothing about that step.
    Counted per day, the waits sum over any period into a histogram whose median
    (`histogram_median`) is the funnel's "median days", to the hour.
    """
    waits: Counter[tuple[date, str, int]] = Counter()
    for journey in journeys.values():
        for before, stage in pairwise(STAGES):
            reached, earlier = journey.get(stage), journey.get(before)
            if reached is None or earlier is None or not start <= reached < end:
                continue
            if earlier <= reached:
                day = EPOCH + timedelta(days=math.floor(reached))
                waits[(day, stage, int((reached - earlier) * 24))] += 1
    return waits


def histogram_median(counts: Mapping[int, int]) -> float | None:
    """The median of a multiset given as value -> how many times; None when empty."""
    total = sum(counts.values())
    if not total:
        return None
    middle, seen, low = (total - 1) / 2, 0, None
    for value in sorted(counts):
        seen += counts[value]
        if low is None and seen > math.floor(middle):
            low = value
        if seen > math.ceil(middle):
            return (low + value) / 2
    raise AssertionError("unreachable: the counts sum to total")


def in_days(moment: datetime) -> float:
    """A time as days since the Unix epoch: what `stage_medians` compares."""
    return moment.timestamp() / 86400


def funnel(counts: Mapping[str, int], medians: Mapping[str, float | None]) -> list[Step]:
    """The steps with their counts, rates from the step before, and median days to reach them.

    Rates compare counts within the same period (not one cohort followed through),
    so a rate above 100 % is possible when earlier leads convert now.
    """
    steps: list[Step] = []
    previous: int | None = None
    for key, label in STEPS:
        count = int(counts.get(key, 0))
        rate = conversion_rate(count, previous) if previous is not None else None
        steps.append(Step(key, label, count, rate, medians.get(key)))
        previous = count
    return steps
