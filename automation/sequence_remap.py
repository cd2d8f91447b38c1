"""Where a sequence's active enrolments stand after its steps are edited: old step → new step.

Pure. An enrolment stores its place as a plain step index; when steps are
inserted, removed or moved before it, the same index names another step. So a
save works out which old step became which new one, and moves the enrolments
(and their messages' step numbers) along with their step:

- the steps editor knows it: each row carries the index it had (`match_origins`);
- a rules file or the YAML editor does not: steps that are equal (as stored)
  are matched in order by a longest common subsequence; in each stretch
  between two matches a step with the same name, or without names of the same
  kind, is the same step edited — changing a send's template keeps the people
  waiting for it there; and a step left over that is equal to exactly one
  left-over new step was moved there (`match_steps`).

An old step matched to nothing was removed: whoever stands at it moves on to
the next old step that is still there, or, with none left, to the end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

ALIGN_CELLS = 1_000_000
"""Most cells (changed old steps times changed new steps) an alignment compares; beyond, only
unique moved steps are found in the changed stretch (a nurture sequence is a few dozen steps)."""

STEP_KINDS = ("send", "wait", "branch", "end")


def steps_digest(steps: Sequence[Any]) -> str:
    """A fingerprint of stored steps, so a form's row origins are used only on what they index."""
    return hashlib.sha256(_key(list(steps)).encode()).hexdigest()


# ---------------------------------------------------------------- matching old steps to new


def _kind(step: Any) -> str | None:
    if step == "end":
        return "end"
    if isinstance(step, Mapping):
        return next((kind for kind in STEP_KINDS if kind in step), None)
    return None


def _name(step: Any) -> Any:
    return step.get("name") if isinstance(step, Mapping) else None


def _edited(old: Any, new: Any) -> bool:
    """Whether `new` reads as `old` edited: the same name, or both unnamed and of one kind."""
    if _name(old) is not None or _name(new) is not None:
        return _name(old) == _name(new)
    return _kind(old) is not None and _kind(old) == _kind(new)


def _common(
    old: Sequence[Any], new: Sequence[Any], same: Callable[[Any, Any], bool]
) -> list[tuple[int, int]]:
    """Pairs (old index, new index) of a longest common subsequence under `same`, in order."""
    head = 0
    while head < min(len(old), len(new)) and same(old[head], new[head]):
        head += 1
    tail = 0
    while tail < min(len(old), len(new)) - head and same(
        old[len(old) - 1 - tail], new[len(new) - 1 - tail]
    ):
        tail += 1
    pairs = [(i, i) for i in range(head)]
    middle_old, middle_new = old[head : len(old) - tail], new[head : len(new) - tail]
    if middle_old and middle_new and len(middle_old) * len(middle_new) <= ALIGN_CELLS:
        # lengths[i][j]: the longest common subsequence of middle_old[i:] and middle_new[j:].
        lengths = [[0] * (len(middle_new) + 1) for _ in range(len(middle_old) + 1)]
        for i in range(len(middle_old) - 1, -1, -1):
            row, below = lengths[i], lengths[i + 1]
            for j in range(len(middle_new) - 1, -1, -1):
                if same(middle_old[i], middle_new[j]):
                    row[j] = below[j + 1] + 1
                else:
                    row[j] = max(below[j], row[j + 1])
        i = j = 0
        while i < len(middle_old) and j < len(middle_new):
            if same(middle_old[i], middle_new[j]):
                pairs.append((head + i, head + j))
                i, j = i + 1, j + 1
            elif lengths[i + 1][j] >= lengths[i][j + 1]:
                i += 1
            else:
                j += 1
    pairs += [(len(old) - tail + k, len(new) - tail + k) for k in range(tail)]
    return pairs


def match_steps(old: Sequence[Any], new: Sequence[Any]) -> list[int | None]:
    """Per old step, the index of the same step among `new` (None: removed), without row ids.

    Equal steps are matched first, in order; between two of those, a step
    edited in place (same name; unnamed: same kind) is still the same step;
    then a left-over step equal to one left-over new step has moved there.
    """
    found: list[int | None] = [None] * len(old)
    exact = _common(old, new, lambda a, b: a == b)
    for i, j in exact:
        found[i] = j
    bounds = [(-1, -1), *exact, (len(old), len(new))]
    for (i0, j0), (i1, j1) in pairwise(bounds):
        if i1 - i0 > 1 and j1 - j0 > 1:
            for i, j in _common(old[i0 + 1 : i1], new[j0 + 1 : j1], _edited):
                found[i0 + 1 + i] = j0 + 1 + j
    _match_moved(old, new, found)
    return found


def _match_moved(old: Sequence[Any], new: Sequence[Any], found: list[int | None]) -> None:
    """Match, in place, a left-over old step to the one left-over new step equal to it (moved),
    when no other left-over old step is equal to it too: the steps form moves rows the same way.
    """
    taken = {j for j in found if j is not None}
    spare_new: dict[str, list[int]] = {}
    for j in range(len(new)):
        if j not in taken:
            spare_new.setdefault(_key(new[j]), []).append(j)
    spare_old: dict[str, list[int]] = {}
    for i, j in enumerate(found):
        if j is None:
            spare_old.setdefault(_key(old[i]), []).append(i)
    for key, olds in spare_old.items():
        news = spare_new.get(key, [])
        if len(olds) == 1 and len(news) == 1:
            found[olds[0]] = news[0]


def _key(step: Any) -> str:
    return json.dumps(step, sort_keys=True, default=str)


def match_origins(origins: Sequence[int | None], old_count: int) -> list[int | None]:
    """Per old step, the new row that says it came from there (None: removed).

    `origins` holds, per new row, the index it had in the stored sequence (None:
    a new row). Indices out of range are new rows; of two rows claiming one
    index (a forged form), the first keeps it.
    """
    found: list[int | None] = [None] * old_count
    for new_index, origin in enumerate(origins):
        if origin is not None and 0 <= origin < old_count and found[origin] is None:
            found[origin] = new_index
    return found


# ---------------------------------------------------------------- places


@dataclass(frozen=True)
class Remap:
    """Where each old position goes: `places[p]` for p in 0..len(old) (len(old): the end).

    `step_map[i]` is old step i's new index, None when it was removed.
    """

    step_map: tuple[int | None, ...]
    places: tuple[int, ...]
    new_count: int

    @property
    def old_count(self) -> int:
        """How many steps the sequence had."""
        return len(self.step_map)

    def place(self, position: int) -> int:
        """Where an enrolment at old `position` stands now (past the old end: the new end)."""
        return self.places[position] if 0 <= position < len(self.places) else self.new_count

    def removed(self, position: int) -> bool:
        """Whether the step at old `position` is gone (its enrolments move on)."""
        return 0 <= position < self.old_count and self.step_map[position] is None

    @property
    def moves_places(self) -> bool:
        """Whether any enrolment's stored position changes."""
        return any(place != position for position, place in enumerate(self.places))

    @property
    def moves_steps(self) -> bool:
        """Whether any old step's index changes or goes (what messages' step numbers follow)."""
        return any(new != old for old, new in enumerate(self.step_map))


def remap(step_map: Sequence[int | None], new_count: int) -> Remap:
    """The places that follow from a step map: a removed step's go to the next old step still
    there (at its new index), or to the end when none is left.
    """
    places = [new_count] * (len(step_map) + 1)
    following = new_count
    for position in range(len(step_map) - 1, -1, -1):
        if step_map[position] is not None:
            following = step_map[position]  # type: ignore[assignment]
        places[position] = following
    return Remap(tuple(step_map), tuple(places), new_count)


# ---------------------------------------------------------------- telling the marketer


@dataclass(frozen=True)
class PlaceReport:
    """What a save did to a sequence's active enrolments.

    `moved_on` counts, per new position, those whose step was removed; `completed`
    those with no step left after theirs; `steps` says what each new position does.
    """

    sequence: str
    kept: int
    moved_on: Mapping[int, int]
    completed: int
    steps: Mapping[int, str]

    def summary(self, where: str = "") -> str:
        """In words: "3 people in this sequence kept their place; 1 at a removed step moved on
        to step 4 (send welcome-2)". `where` names the sequence (default: by name)."""
        where = where or f"sequence {self.sequence!r}"
        outcomes = [
            (
                n,
                f"moved on to step {position + 1}"
                + (f" ({self.steps[position]})" if position in self.steps else ""),
            )
            for position, n in sorted(self.moved_on.items())
        ]
        if self.completed:
            outcomes.append((self.completed, "completed, as no step is left after it"))
        parts = [f"{_people(self.kept)} in {where} kept their place"] if self.kept else []
        for n, outcome in outcomes:
            who = f"{n}" if parts else f"{_people(n)} in {where}"
            parts.append(f"{who} at a removed step {outcome}")
        return "; ".join(parts)


def _people(n: int) -> str:
    return f"{n} {'person' if n == 1 else 'people'}"
