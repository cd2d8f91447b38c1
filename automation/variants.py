"""A/B statistics: Thompson sampling, the chance each variant is best, broadcast winners.

Each variant's success rate (human clicks, or human opens, per message sent)
gets a Beta(1 + successes, 1 + failures) posterior. Thompson sampling draws
once from every posterior and takes the largest draw, so a variant gets traffic
in proportion to the chance that it is the best one: a clearly better variant
wins nearly all sends, while an untried one (Beta(1, 1), anything is possible)
still gets tried. Everything here is pure except `pick_variant`, the one
reading of the messages table that `automation.outgoing.create_messages` calls.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import Connection, func, select

from tracker.email_models import Message

CHANCE_DRAWS = 10_000
"""Monte Carlo draws `chance_best` takes by default (± about 1 percentage point)."""

STATS_SECONDS = 30.0
"""How long `pick_variant` reuses a template's counts before reading them again.

Counting a template's messages reads every one of them, so doing it for each
new message would make a long-running sequence quadratic; Thompson sampling on
counts a few seconds old chooses just as well.
"""


@dataclass(frozen=True)
class VariantStats:
    """A variant's trials for one metric: messages sent, and how many succeeded."""

    sends: int
    successes: int

    @property
    def rate(self) -> float:
        """Successes per send (0 when nothing was sent)."""
        return self.successes / self.sends if self.sends else 0.0


@dataclass(frozen=True)
class VariantCounts:
    """What a variant's messages did: sends and human / machine opens and clicks.

    Opens and clicks count messages (five opens of one message count once);
    only human ones count towards rates, winners and Thompson sampling.
    """

    messages: int = 0
    sends: int = 0
    human_opens: int = 0
    human_clicks: int = 0
    machine_opens: int = 0
    machine_clicks: int = 0

    def stats(self, metric: str) -> VariantStats:
        """Trials for `metric` ("open" or "click"): sends and human successes."""
        if metric not in ("open", "click"):
            raise ValueError(f"metric must be 'open' or 'click', not {metric!r}")
        return VariantStats(self.sends, self.human_opens if metric == "open" else self.human_clicks)


def _beta_draw(stats: VariantStats, rng: random.Random) -> float:
    # A success count above the sends (an open recorded before its send was) is capped,
    # so the posterior stays a valid Beta.
    successes = min(max(stats.successes, 0), max(stats.sends, 0))
    return rng.betavariate(1 + successes, 1 + max(stats.sends, 0) - successes)


def choose_variant(stats: Mapping[str, VariantStats], rng: random.Random) -> str:
    """Thompson sampling: the variant whose posterior draw is largest (first one on a tie)."""
    if not stats:
        raise ValueError("choose_variant needs at least one variant")
    best, best_draw = "", -1.0
    for name, variant in stats.items():
        draw = _beta_draw(variant, rng)
        if draw > best_draw:
            best, best_draw = name, draw
    return best


def chance_best(
    stats: Mapping[str, VariantStats],
    draws: int = CHANCE_DRAWS,
    rng: random.Random | None = None,
) -> dict[str, float]:
    """The probability that each variant has the highest rate; they sum to 1."""
    if not stats:
        return {}
    rng = rng or random.Random()
    wins = dict.fromkeys(stats, 0)
    for _ in range(max(draws, 1)):
        wins[choose_variant(stats, rng)] += 1
    total = sum(wins.values())
    return {name: count / total for name, count in wins.items()}


def pick_winner(stats: Mapping[str, VariantStats]) -> str:
    """The variant with the highest rate; ties go to more sends, then to the first by name."""
    if not stats:
        raise ValueError("pick_winner needs at least one variant")

    def rank(name: str) -> tuple[Fraction, int, str]:
        variant = stats[name]
        # Exact fractions, so 1/2 and 2/4 tie and the tie-breaks decide.
        rate = Fraction(min(variant.successes, variant.sends), variant.sends or 1)
        return (-rate, -variant.sends, name)

    return min(stats, key=rank)


def split_test(
    contact_ids: Sequence[int], percent: int, variants: Sequence[str], rng: random.Random
) -> dict[int, str]:
    """A random `percent` of the contacts (rounded), dealt evenly across the variants."""
    size = (len(contact_ids) * percent + 50) // 100
    chosen = rng.sample(list(contact_ids), min(size, len(contact_ids)))
    return {contact_id: variants[i % len(variants)] for i, contact_id in enumerate(chosen)}


_rng = random.Random()
_stats_cache: dict[tuple[str, int], tuple[float, dict[str, VariantStats]]] = {}


def click_stats(conn: Connection, template_id: int) -> dict[str, VariantStats]:
    """Sends and human clicks of every variant name a template has had (all versions).

    Test sends (to the marketer) are left out: their clicks say nothing about readers.
    """
    rows = conn.execute(
        select(Message.variant, func.count(Message.sent_at), func.count(Message.clicked_at))
        .where(Message.template_id == template_id, Message.kind != "test")
        .group_by(Message.variant)
    ).all()
    return {variant: VariantStats(sends, clicks) for variant, sends, clicks in rows}


def pick_variant(conn: Connection, template_id: int, names: list[str]) -> str:
    """Thompson-sample one of `names` on the template's human clicks per send.

    Counts are read at most once every STATS_SECONDS per template and process.
    """
    key = (str(conn.engine.url), template_id)
    now = time.monotonic()
    cached = _stats_cache.get(key)
    if cached is None or cached[0] < now:
        cached = (now + STATS_SECONDS, click_stats(conn, template_id))
        _stats_cache[key] = cached
    known = cached[1]
    return choose_variant({name: known.get(name, VariantStats(0, 0)) for name in names}, _rng)


def forget_stats() -> None:
    """Drop the cached counts, so the next pick reads them afresh (tests, reloads)."""
    _stats_cache.clear()
