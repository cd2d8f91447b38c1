"""Segment rules: check a rule tree a marketer wrote, naming the bad part by its path.

Pure. `automation.segment_sql` compiles checked trees to SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from automation.thresholds import STAGES

MAX_DEPTH = 20
"""How deeply all/any/not may nest; deeper trees are a mistake, and costly SQL."""

GROUPS = ("all", "any", "not")
TEXT_FIELDS = ("email", "first_name", "last_name", "company", "stage")
NUMBER_FIELDS = ("score", "engagement_score", "fit_score")
FIELD_OPERATORS = ("equals", "in", "contains", "gte", "lte", "exists")
SCORE_COLUMNS = {"engagement": "engagement_score", "fit": "fit_score", "total": "score"}
EMAIL_EVENTS = {"opened": "email_open", "clicked": "email_click"}
TOUCHES = ("any", "first")
UTM_KEYS = ("source", "medium", "campaign")
ESCAPE = "!"


class SegmentError(ValueError):
    """A rule tree that cannot work as written; the message names the part by its path."""


@dataclass(frozen=True)
class _Node:
    kind: str  # a group or a leaf name
    path: str
    spec: Any  # children for groups, the checked spec for leaves


# -- checking --------------------------------------------------------------------------


def _fail(path: str, message: str) -> SegmentError:
    return SegmentError(f"{path or 'rules'}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, f"must be non-empty text, not {value!r}")
    return value


def _whole(value: Any, path: str) -> int:
    if not _is_int(value) or value < 1:
        raise _fail(path, f"must be a whole number of at least 1, not {value!r}")
    return value


def _number(value: Any, path: str) -> float:
    if not _is_number(value):
        raise _fail(path, f"must be a number, not {value!r}")
    return value


def _choice(*options: str) -> Callable[[Any, str], str]:
    def check(value: Any, path: str) -> str:
        if value not in options:
            raise _fail(path, f"{value!r} is not one of {list(options)}")
        return value

    return check


def _domain(value: Any, path: str) -> str:
    domain = _text(value, path).strip().lower().rstrip(".")
    if any(c in domain for c in "/:?#@* ") or domain.startswith("."):
        raise _fail(path, f"give a host name such as 'news.ycombinator.com', not {value!r}")
    return domain


def _keys(spec: Any, path: str, checks: Mapping[str, Callable[[Any, str], Any]]) -> dict:
    if not isinstance(spec, Mapping):
        raise _fail(path, f"must be a mapping with keys from {sorted(checks)}, not {spec!r}")
    for key in spec:
        if key not in checks:
            raise _fail(path, f"unknown key {key!r}; use one of {sorted(checks)}")
    return {key: checks[key](value, f"{path}.{key}") for key, value in spec.items()}


def _require(spec: Mapping[str, Any], path: str, *keys: str) -> None:
    for key in keys:
        if key not in spec:
            raise _fail(path, f"needs {key!r}")


def _visited(spec: Any, path: str) -> dict:
    checks = {"path": _text, "at_least": _whole, "within_days": _whole, "site": _whole}
    spec = _keys(spec, path, checks)
    _require(spec, path, "path")
    return spec


def _searched(spec: Any, path: str) -> dict:
    spec = _keys(spec, path, {"contains": _text, "within_days": _whole})
    _require(spec, path, "contains")
    return spec


def _utm(spec: Any, path: str) -> dict:
    checks: dict[str, Callable[[Any, str], Any]] = dict.fromkeys(UTM_KEYS, _text)
    spec = _keys(spec, path, {**checks, "touch": _choice(*TOUCHES)})
    if not any(key in spec for key in UTM_KEYS):
        raise _fail(path, f"needs at least one of {list(UTM_KEYS)}")
    return spec


def _referrer_domain(spec: Any, path: str) -> dict:
    spec = _keys(spec, path, {"is": _domain, "touch": _choice(*TOUCHES)})
    _require(spec, path, "is")
    return spec


def _field_value(value: Any, path: str, name: str) -> Any:
    if name in TEXT_FIELDS and not isinstance(value, str):
        raise _fail(path, f"{name!r} holds text; compare it with text, not {value!r}")
    if name in NUMBER_FIELDS and not _is_number(value):
        raise _fail(path, f"{name!r} holds a number; compare it with a number, not {value!r}")
    if not isinstance(value, str | int | float):
        raise _fail(path, f"must be text, a number or true/false, not {value!r}")
    return value


def _field(spec: Any, path: str) -> dict:
    if not isinstance(spec, Mapping):
        raise _fail(path, f"must be a mapping of 'name' and one of {list(FIELD_OPERATORS)}")
    name = _text(spec.get("name"), f"{path}.name")
    if '"' in name or "\\" in name:
        raise _fail(f"{path}.name", f"a field name cannot hold quotes or backslashes: {name!r}")
    operators = [key for key in spec if key != "name"]
    for key in operators:
        if key not in FIELD_OPERATORS:
            raise _fail(path, f"unknown operator {key!r}; use one of {list(FIELD_OPERATORS)}")
    if len(operators) != 1:
        raise _fail(path, f"takes exactly one of {list(FIELD_OPERATORS)}, not {operators}")
    operator = operators[0]
    value, at = spec[operator], f"{path}.{operator}"
    if operator == "equals":
        value = _field_value(value, at, name)
    elif operator == "in":
        if not isinstance(value, list) or not value:
            raise _fail(at, f"must be a non-empty list, not {value!r}")
        value = [_field_value(v, f"{at}[{i}]", name) for i, v in enumerate(value)]
        if any(isinstance(v, bool) for v in value):
            raise _fail(at, "use 'equals' to compare with true or false")
    elif operator == "contains":
        if name in NUMBER_FIELDS:
            raise _fail(at, f"{name!r} holds a number; use 'gte' or 'lte'")
        value = _text(value, at)
    elif operator in ("gte", "lte"):
        if name in TEXT_FIELDS:
            raise _fail(at, f"{name!r} holds text; use 'equals', 'in' or 'contains'")
        value = _number(value, at)
    elif not isinstance(value, bool):
        raise _fail(at, f"must be true or false, not {value!r}")
    return {"name": name, "operator": operator, "value": value}


def _tag(spec: Any, path: str) -> str:
    return _text(spec, path)


def _score(spec: Any, path: str) -> dict:
    checks = {"kind": _choice(*SCORE_COLUMNS), "gte": _number, "lte": _number}
    spec = _keys(spec, path, checks)
    _require(spec, path, "kind")
    if "gte" not in spec and "lte" not in spec:
        raise _fail(path, "needs 'gte', 'lte' or both")
    if spec.get("gte", float("-inf")) > spec.get("lte", float("inf")):
        raise _fail(path, f"gte {spec['gte']} is above lte {spec['lte']}: no one can match")
    return spec


def _stage_name(value: Any, path: str) -> str:
    if value not in STAGES:
        raise _fail(path, f"{value!r} is not one of {list(STAGES)}")
    return value


def _stage(spec: Any, path: str) -> list[str]:
    if isinstance(spec, str):
        return [_stage_name(spec, path)]
    spec = _keys(spec, path, {"in": lambda value, at: value})
    stages = spec.get("in")
    if not isinstance(stages, list) or not stages:
        raise _fail(f"{path}.in", f"must be a non-empty list of stages, not {stages!r}")
    return [_stage_name(s, f"{path}.in[{i}]") for i, s in enumerate(stages)]


def _email(spec: Any, path: str) -> dict:
    checks = {"action": _choice(*EMAIL_EVENTS), "template": _whole, "within_days": _whole}
    spec = _keys(spec, path, checks)
    _require(spec, path, "action")
    return spec


def _event(spec: Any, path: str) -> dict:
    spec = _keys(spec, path, {"name": _text, "at_least": _whole, "within_days": _whole})
    _require(spec, path, "name")
    return spec


def _in_segment(spec: Any, path: str) -> str:
    return _text(spec, path)


LEAVES: dict[str, Callable[[Any, str], Any]] = {
    "visited": _visited,
    "searched": _searched,
    "utm": _utm,
    "referrer_domain": _referrer_domain,
    "field": _field,
    "tag": _tag,
    "score": _score,
    "stage": _stage,
    "email": _email,
    "event": _event,
    "in_segment": _in_segment,
}


def _parse(node: Any, path: str = "", depth: int = 0) -> _Node:
    if depth > MAX_DEPTH:
        raise _fail(path, f"nested deeper than {MAX_DEPTH} levels; flatten the tree")
    known = [*GROUPS, *LEAVES]
    if not isinstance(node, Mapping) or len(node) != 1:
        raise _fail(path, f"must be a mapping with exactly one of {known}, not {node!r}")
    ((kind, spec),) = node.items()
    at = f"{path}.{kind}" if path else kind
    if kind == "not":
        return _Node(kind, at, [_parse(spec, at, depth + 1)])
    if kind in GROUPS:
        if not isinstance(spec, list) or not spec:
            raise _fail(at, f"must be a non-empty list of rules, not {spec!r}")
        children = [_parse(child, f"{at}[{i}]", depth + 1) for i, child in enumerate(spec)]
        return _Node(kind, at, children)
    if kind not in LEAVES:
        raise _fail(path, f"unknown rule {kind!r}; use one of {known}")
    return _Node(kind, at, LEAVES[kind](spec, at))


def check_tree(tree: Any) -> None:
    """Raise SegmentError, naming the part by its path, unless `tree` is a valid rule tree."""
    _parse(tree)


def _leaves(node: _Node) -> list[_Node]:
    if node.kind in GROUPS:
        return [leaf for child in node.spec for leaf in _leaves(child)]
    return [node]


def referenced_segments(tree: Any) -> set[str]:
    """The names of the segments the tree's `in_segment` rules use."""
    return {leaf.spec for leaf in _leaves(_parse(tree)) if leaf.kind == "in_segment"}
