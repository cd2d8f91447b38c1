"""The scoring engine: which rules an event earns, within their caps, and the fit score.

Pure functions over plain data: no database, no Redis, no app. The job layer
loads rules, events and past awards, calls these, and writes the results.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

EVENT_TYPES = frozenset(
    {
        "pageview",
        "engage",
        "outbound",
        "download",
        "search",
        "custom",
        "identify",
        "email_open",
        "email_click",
    }
)
EVENT_CONDITIONS = frozenset(
    {
        "path",
        "path_regex",
        "target",
        "query_contains",
        "name",
        "props",
        "template",
    }
)
FIT_OPERATORS = frozenset({"equals", "in", "contains", "gte", "lte", "exists", "regex"})
ENGAGEMENT, FIT = "engagement", "fit"


class RuleError(ValueError):
    """A rule that cannot work as written; the message names the field."""


@dataclass(frozen=True)
class Rule:
    """An engagement rule (event → points) or a fit rule (attribute → points)."""

    id: int
    name: str
    kind: str
    points: int
    event_type: str | None = None
    site_id: int | None = None
    conditions: Mapping[str, Any] = field(default_factory=dict)
    max_times: int | None = None
    once_per: timedelta | None = None
    _regex: re.Pattern[str] | None = None

    @property
    def capped(self) -> bool:
        """True when past awards must be known to apply this rule."""
        return self.max_times is not None or self.once_per is not None


@dataclass(frozen=True)
class ScoredEvent:
    """What scoring needs to know of a stored event."""

    id: int
    contact_id: int
    type: str
    site_id: int
    occurred_at: datetime
    path: str | None = None
    target: str | None = None
    query: str | None = None
    name: str | None = None
    props: Mapping[str, Any] | None = None
    is_bot: bool = False


@dataclass
class Usage:
    """How often a rule has paid a contact so far, and when last."""

    count: int = 0
    last_at: datetime | None = None


@dataclass(frozen=True)
class Award:
    """Points one rule gives one contact for one event."""

    contact_id: int
    rule_id: int
    event_id: int
    delta: int
    at: datetime


def make_rule(
    id: int,
    name: str,
    kind: str,
    points: int,
    *,
    event_type: str | None = None,
    site_id: int | None = None,
    conditions: Mapping[str, Any] | None = None,
    max_times: int | None = None,
    once_per_seconds: int | None = None,
    first_time_only: bool = False,
) -> Rule:
    """Build a rule, checking it can work: known type, known conditions, valid regex."""
    conditions = dict(conditions or {})
    regex = None
    if kind == ENGAGEMENT:
        if event_type not in EVENT_TYPES:
            raise RuleError(f"event type {event_type!r} is not one of {sorted(EVENT_TYPES)}")
        unknown = set(conditions) - EVENT_CONDITIONS
        if unknown:
            raise RuleError(
                f"unknown condition {sorted(unknown)[0]!r}; use one of {sorted(EVENT_CONDITIONS)}"
            )
        if "path_regex" in conditions:
            regex = _compile(conditions["path_regex"], "path_regex")
        if "props" in conditions and not isinstance(conditions["props"], Mapping):
            raise RuleError("'props' must map property names to the values they must equal")
    elif kind == FIT:
        check_fit_condition(conditions)
        if conditions.get("regex") is not None:
            regex = _compile(conditions["regex"], "regex")
    else:
        raise RuleError(f"rule kind {kind!r} is not 'engagement' or 'fit'")
    if first_time_only:
        max_times = 1
    for value, label in ((max_times, "max_times"), (once_per_seconds, "once_per_seconds")):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise RuleError(f"{label} must be a whole number of at least 1, not {value!r}")
    return Rule(
        id,
        name,
        kind,
        int(points),
        event_type,
        site_id,
        conditions,
        max_times,
        timedelta(seconds=once_per_seconds) if once_per_seconds else None,
        regex,
    )


def _compile(pattern: Any, label: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise RuleError(f"{label} must be a string")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise RuleError(f"{label} {pattern!r} is not a valid regular expression: {e}") from e


def check_fit_condition(condition: Mapping[str, Any]) -> None:
    """Raise RuleError unless `condition` is {"field": name, <one operator>: value}."""
    if not isinstance(condition.get("field"), str) or not condition["field"]:
        raise RuleError("a fit condition needs 'field': the contact field or attribute name")
    operators = set(condition) - {"field"}
    unknown = operators - FIT_OPERATORS
    if unknown:
        raise RuleError(
            f"unknown operator {sorted(unknown)[0]!r}; use one of {sorted(FIT_OPERATORS)}"
        )
    if len(operators) != 1:
        raise RuleError(f"a fit condition takes exactly one operator, not {sorted(operators)}")
    if "in" in condition and not isinstance(condition["in"], list):
        raise RuleError("'in' takes a list of values")


def event_matches(rule: Rule, event: ScoredEvent) -> bool:
    """True when the event is of the rule's type, site and conditions."""
    if rule.event_type != event.type or (
        rule.site_id is not None and rule.site_id != event.site_id
    ):
        return False
    c = rule.conditions
    if "path" in c and not fnmatch.fnmatchcase(event.path or "", c["path"]):
        return False
    if rule._regex is not None and not rule._regex.search(event.path or ""):
        return False
    if "target" in c and not fnmatch.fnmatchcase(event.target or "", c["target"]):
        return False
    if (
        "query_contains" in c
        and str(c["query_contains"]).lower() not in (event.query or "").lower()
    ):
        return False
    if "name" in c and event.name != c["name"]:
        return False
    props = event.props or {}
    if "props" in c and any(props.get(k) != v for k, v in c["props"].items()):
        return False
    return not ("template" in c and props.get("template_id") != c["template"])


def award_points(
    rules: Iterable[Rule],
    events: Iterable[ScoredEvent],
    usage: Mapping[tuple[int, int], Usage],
) -> list[Award]:
    """Return the awards a batch earns, oldest event first, honouring every rule's caps.

    `usage` is what each (contact, rule) pair had earned before this batch; it is
    not changed. Bot and machine events earn nothing.
    """
    engagement = [r for r in rules if r.kind == ENGAGEMENT]
    seen: dict[tuple[int, int], Usage] = {}
    awards = []
    for event in sorted(events, key=lambda e: (e.occurred_at, e.id)):
        if event.is_bot:
            continue
        for rule in engagement:
            if not event_matches(rule, event):
                continue
            key = (event.contact_id, rule.id)
            used = seen.get(key)
            if used is None:
                before = usage.get(key)
                used = seen[key] = Usage(before.count, before.last_at) if before else Usage()
            if rule.max_times is not None and used.count >= rule.max_times:
                continue
            if (
                rule.once_per is not None
                and used.last_at is not None
                and event.occurred_at - used.last_at < rule.once_per
            ):
                continue
            used.count += 1
            used.last_at = event.occurred_at
            awards.append(
                Award(event.contact_id, rule.id, event.id, rule.points, event.occurred_at)
            )
    return awards


def _attribute_matches(rule: Rule, attributes: Mapping[str, Any]) -> bool:
    c = rule.conditions
    value = attributes.get(c["field"])
    if "exists" in c:
        return (value not in (None, "")) == bool(c["exists"])
    if value is None:
        return False
    if "equals" in c:
        return str(value).strip().lower() == str(c["equals"]).strip().lower()
    if "in" in c:
        return str(value).strip().lower() in {str(v).strip().lower() for v in c["in"]}
    if "contains" in c:
        return str(c["contains"]).lower() in str(value).lower()
    if "regex" in c:
        return rule._regex is not None and rule._regex.search(str(value)) is not None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number >= float(c["gte"]) if "gte" in c else number <= float(c["lte"])


def fit_score(rules: Iterable[Rule], attributes: Mapping[str, Any]) -> int:
    """The fit score of a contact with these fields and attributes: the sum of matching rules."""
    return sum(r.points for r in rules if r.kind == FIT and _attribute_matches(r, attributes))
