"""A/B statistics: Thompson sampling, chance of being best, broadcast winners (pure)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from automation.variants import (
    VariantCounts,
    VariantStats,
    chance_best,
    choose_variant,
    pick_winner,
    split_test,
)


def test_thompson_sampling_sends_most_traffic_to_the_clearly_better_variant():
    rng = random.Random(7)
    stats = {"A": VariantStats(1000, 20), "B": VariantStats(1000, 80)}
    picks = Counter(choose_variant(stats, rng) for _ in range(2000))
    assert picks["B"] > 0.97 * 2000


def test_thompson_sampling_still_tries_an_untried_variant():
    rng = random.Random(7)
    stats = {"A": VariantStats(200, 10), "B": VariantStats(200, 30), "new": VariantStats(0, 0)}
    picks = Counter(choose_variant(stats, rng) for _ in range(2000))
    # Beta(1, 1) is above B's posterior (around 15%) most of the time: it gets tried at once.
    assert picks["new"] > 0.5 * 2000
    assert picks["B"] > picks["A"]


def test_thompson_sampling_with_no_data_spreads_traffic_across_all_variants():
    rng = random.Random(3)
    stats = {name: VariantStats(0, 0) for name in "ABC"}
    picks = Counter(choose_variant(stats, rng) for _ in range(3000))
    assert all(800 < picks[name] < 1200 for name in "ABC")


def test_a_success_count_above_the_sends_does_not_break_sampling():
    rng = random.Random(1)
    assert choose_variant({"A": VariantStats(2, 5), "B": VariantStats(0, 0)}, rng) in "AB"
    with pytest.raises(ValueError):
        choose_variant({}, rng)


def test_chance_best_sums_to_one_and_ranks_the_variants():
    stats = {
        "A": VariantStats(500, 10),
        "B": VariantStats(500, 25),
        "C": VariantStats(500, 40),
    }
    chances = chance_best(stats, draws=5000, rng=random.Random(11))
    assert sum(chances.values()) == pytest.approx(1.0)
    assert chances["C"] > chances["B"] > chances["A"]
    assert chances["C"] > 0.9


def test_chance_best_is_even_when_the_data_is_the_same():
    stats = {"A": VariantStats(100, 10), "B": VariantStats(100, 10)}
    chances = chance_best(stats, draws=4000, rng=random.Random(5))
    assert chances["A"] == pytest.approx(0.5, abs=0.05)
    assert chance_best({}) == {}


COUNTS = {
    # A: more human opens; B: more human clicks; A also has many machine opens and clicks.
    "A": VariantCounts(
        messages=5,
        sends=5,
        human_opens=4,
        human_clicks=1,
        machine_opens=5,
        machine_clicks=5,
    ),
    "B": VariantCounts(messages=5, sends=5, human_opens=2, human_clicks=3, machine_opens=0),
}


def test_the_winner_follows_the_metric():
    assert pick_winner({n: c.stats("open") for n, c in COUNTS.items()}) == "A"
    assert pick_winner({n: c.stats("click") for n, c in COUNTS.items()}) == "B"


def test_machine_opens_do_not_make_a_winner():
    counts = {
        "A": VariantCounts(sends=10, human_opens=1, machine_opens=9),
        "B": VariantCounts(sends=10, human_opens=2, machine_opens=0),
    }
    assert counts["A"].stats("open") == VariantStats(10, 1)
    assert pick_winner({n: c.stats("open") for n, c in counts.items()}) == "B"
    with pytest.raises(ValueError):
        counts["A"].stats("reply")


def test_winner_ties_go_to_more_sends_then_to_the_name():
    # 1/2 and 2/4 are the same rate: the variant sent more often wins.
    assert pick_winner({"A": VariantStats(2, 1), "B": VariantStats(4, 2)}) == "B"
    assert pick_winner({"B": VariantStats(4, 2), "A": VariantStats(4, 2)}) == "A"
    # A variant that was never sent rates 0, below any success.
    assert pick_winner({"A": VariantStats(0, 0), "B": VariantStats(10, 1)}) == "B"
    assert pick_winner({"B": VariantStats(0, 0), "A": VariantStats(0, 0)}) == "A"


def test_the_test_share_is_split_evenly_across_the_variants():
    contacts = list(range(1, 51))
    split = split_test(contacts, 20, ["A", "B"], random.Random(2))
    assert len(split) == 10
    assert Counter(split.values()) == {"A": 5, "B": 5}
    assert set(split) <= set(contacts)
    # Rounded to the nearest contact; three variants differ by one at most.
    split = split_test(list(range(7)), 50, ["A", "B", "C"], random.Random(2))
    assert len(split) == 4 and sorted(Counter(split.values()).values()) == [1, 1, 2]
    assert split_test([], 20, ["A", "B"], random.Random(2)) == {}
