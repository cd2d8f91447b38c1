"""Deleting things: what a deletion takes with it, or what refers to the item and forbids it.

A `Plan` is read in the caller's transaction: the item's name, the blockers
(each says what refers to the item and what to do about it), what goes with
the item, and the statements that delete it. `carry_out` refuses a plan with
blockers and otherwise runs its statements in that same transaction; the
caller commits. The admin shows a plan on a confirmation page and carries it
out on the POST. The plans themselves are in `automation.removal_config`
(rules-file items) and `automation.removal_records` (sites, users, campaigns,
opportunities).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Executable, func, select

from automation.segment_rules import GROUPS
from tracker.automation_models import Threshold

NAMES_SHOWN = 5
"""Names a message lists before it says "and N more"."""


@dataclass
class Plan:
    """What deleting one item would do, or why it cannot be deleted."""

    what: str
    name: str
    blockers: list[str] = field(default_factory=list)
    consequences: list[str] = field(default_factory=list)
    statements: list[Executable] = field(default_factory=list)
    # What the page may offer instead of deleting ("disable", "deactivate"), if anything.
    alternative: str | None = None


class RemovalRefused(Exception):
    """A deletion that something forbids; `plan.blockers` say what, and what to do."""

    def __init__(self, plan: Plan) -> None:
        super().__init__("; ".join(plan.blockers))
        self.plan = plan


def carry_out(conn: Connection, plan: Plan) -> Plan:
    """Run the plan's statements in the caller's transaction, or raise RemovalRefused."""
    if plan.blockers:
        raise RemovalRefused(plan)
    for statement in plan.statements:
        conn.execute(statement)
    return plan


def count_rows(conn: Connection, model: Any, *where: Any) -> int:
    """How many rows of `model` match `where`."""
    return conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def counted(number: int, one: str, many: str | None = None) -> str:
    """A count with its noun: "1 member", "3 members"."""
    return f"{number} {one if number == 1 else (many or one + 's')}"


def named(names: Iterable[str]) -> str:
    """Names quoted and listed: 'a', 'b' and 'c' (at most NAMES_SHOWN, then "and N more")."""
    names = sorted(names)
    shown = [repr(n) for n in names[:NAMES_SHOWN]]
    if len(names) > NAMES_SHOWN:
        shown.append(f"{len(names) - NAMES_SHOWN} more")
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def the(names: list[str], one: str, many: str | None = None) -> str:
    """Names with their noun: "the sequence 'Welcome'", "the sequences 'A' and 'B'"."""
    return f"the {one if len(names) == 1 else (many or one + 's')} {named(names)}"


def segment_leaves(tree: Any) -> Iterator[tuple[str, Any]]:
    """Every leaf rule of a stored segment tree, as (kind, spec): `visited`, `in_segment`…"""
    if not isinstance(tree, Mapping):
        return
    for kind, spec in tree.items():
        if kind == "not":
            yield from segment_leaves(spec)
        elif kind in GROUPS:
            for child in spec if isinstance(spec, list) else ():
                yield from segment_leaves(child)
        else:
            yield kind, spec


def segments_whose_leaves(
    segments: Iterable[tuple[str, Any]], kind: str, key: str, value: Any
) -> list[str]:
    """Names of the segments with a `kind` leaf whose `key` is `value` (templates, sites)."""
    return [
        name
        for name, rules in segments
        if any(
            leaf == kind and isinstance(spec, Mapping) and spec.get(key) == value
            for leaf, spec in segment_leaves(rules)
        )
    ]


def thresholds_with_action(
    conn: Connection, kind: str, key: str, value: str, fold: bool = False
) -> list[str]:
    """Names of the thresholds with an action of `kind` whose `key` is `value` (webhook, owner).

    `fold`: compare as email addresses are (case and spaces ignored).
    """

    def same(given: Any) -> bool:
        if fold:
            return str(given).strip().lower() == value.strip().lower()
        return given == value

    return [
        name
        for name, actions in conn.execute(select(Threshold.name, Threshold.actions))
        if any(
            isinstance(a, Mapping) and a.get("type") == kind and same(a.get(key))
            for a in actions or ()
        )
    ]
