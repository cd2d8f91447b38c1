"""The threshold engine: which contacts just crossed a score line, and what that fires.

Pure: contact standings and past states in, firings and new states out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCORES = ("engagement", "fit", "total")
STAGES = ("subscriber", "lead", "mql", "sql", "opportunity", "customer", "nurture", "disqualified")
ACTION_TYPES = frozenset(
    {
        "set_stage",
        "assign_owner",
        "notify_owner",
        "webhook",
        "enrol",
        "add_tag",
        "remove_tag",
    }
)


class ThresholdError(ValueError):
    """A threshold or action that cannot work as written; the message names the field."""


@dataclass(frozen=True)
class ThresholdSpec:
    """A score line: contacts at or above `minimum` (and in the segment/stage) qualify."""

    id: int
    name: str
    score: str
    minimum: int
    segment_id: int | None = None
    stage: str | None = None
    refire: bool = False
    actions: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class Standing:
    """Where a contact stands now."""

    contact_id: int
    engagement: int
    fit: int
    stage: str
    segments: frozenset[int] = field(default_factory=frozenset)

    def score(self, which: str) -> int:
        """The engagement, fit or total score."""
        if which == "total":
            return self.engagement + self.fit
        return self.engagement if which == "engagement" else self.fit


@dataclass(frozen=True)
class State:
    """A contact's last known position against a threshold."""

    above: bool = False
    fired: int = 0


@dataclass(frozen=True)
class Firing:
    """A threshold crossed by a contact: its actions run once for this `number`."""

    threshold: ThresholdSpec
    contact_id: int
    number: int


def check_action(action: Mapping[str, Any]) -> None:
    """Raise ThresholdError unless `action` is one of the known action shapes."""
    kind = action.get("type")
    if kind not in ACTION_TYPES:
        raise ThresholdError(f"action type {kind!r} is not one of {sorted(ACTION_TYPES)}")
    needs = {
        "set_stage": "stage",
        "webhook": "webhook",
        "enrol": "sequence",
        "add_tag": "tag",
        "remove_tag": "tag",
    }.get(kind)
    if needs and not action.get(needs):
        raise ThresholdError(f"action {kind!r} needs {needs!r}")
    if kind == "set_stage" and action["stage"] not in STAGES:
        raise ThresholdError(f"stage {action['stage']!r} is not one of {list(STAGES)}")
    if kind == "assign_owner" and not (action.get("owner") or action.get("round_robin")):
        raise ThresholdError(
            "action 'assign_owner' needs 'owner' (an email) or 'round_robin': true"
        )


def make_threshold(
    id: int,
    name: str,
    score: str,
    minimum: int,
    *,
    segment_id: int | None = None,
    stage: str | None = None,
    refire: bool = False,
    actions: Sequence[Mapping[str, Any]] = (),
) -> ThresholdSpec:
    """Build a threshold, checking its score, stage and actions."""
    if score not in SCORES:
        raise ThresholdError(f"score {score!r} is not one of {list(SCORES)}")
    if stage is not None and stage not in STAGES:
        raise ThresholdError(f"stage {stage!r} is not one of {list(STAGES)}")
    if not isinstance(minimum, int) or isinstance(minimum, bool):
        raise ThresholdError(f"minimum must be a whole number, not {minimum!r}")
    for action in actions:
        check_action(action)
    return ThresholdSpec(id, name, score, minimum, segment_id, stage, refire, tuple(actions))


def qualifies(threshold: ThresholdSpec, standing: Standing) -> bool:
    """True when the contact is at or above the line and in its segment and stage."""
    return (
        standing.score(threshold.score) >= threshold.minimum
        and (threshold.segment_id is None or threshold.segment_id in standing.segments)
        and (threshold.stage is None or threshold.stage == standing.stage)
    )


def evaluate(
    thresholds: Iterable[ThresholdSpec],
    standings: Iterable[Standing],
    states: Mapping[tuple[int, int], State],
) -> tuple[list[Firing], dict[tuple[int, int], State]]:
    """Return the firings and every (threshold, contact) state that changed.

    A threshold fires when a contact goes from not qualifying to qualifying; it
    fires again after the contact fell below and crossed again only when the
    threshold says `refire`.
    """
    firings: list[Firing] = []
    changed: dict[tuple[int, int], State] = {}
    thresholds = list(thresholds)
    for standing in standings:
        for threshold in thresholds:
            key = (threshold.id, standing.contact_id)
            before = states.get(key, State())
            now_above = qualifies(threshold, standing)
            if now_above == before.above:
                continue
            fired = before.fired
            if now_above and (threshold.refire or before.fired == 0):
                fired += 1
                firings.append(Firing(threshold, standing.contact_id, fired))
            changed[key] = State(now_above, fired)
    return firings, changed
