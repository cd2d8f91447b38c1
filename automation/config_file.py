"""Read a rules file (YAML or JSON): scoring rules, thresholds and webhooks, by name.

`parse` turns text into checked specs, or raises ConfigFileError listing every
problem with its line; `apply` writes the specs in one transaction, updating
what already exists by name. Nothing is half-applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automation.decay import DecayError, make_policy
from automation.scoring import RuleError, make_rule
from automation.segment_rules import SegmentError, check_tree
from automation.sequence_defs import SEQUENCE_FIELDS, SequenceError, SequenceSpec, build_sequence
from automation.template_source import TEMPLATE_FIELDS, TemplateSpec, template_entry
from automation.thresholds import ThresholdError, check_action, make_threshold
from tracker.errors import ClosedLoopError

SECTIONS = (
    "segments",
    "rules",
    "thresholds",
    "webhooks",
    "decay",
    "templates",
    "sequences",
    "broadcasts",
)
RULE_FIELDS = {
    "name",
    "kind",
    "event",
    "site",
    "when",
    "points",
    "max_times",
    "once_per",
    "first_time_only",
    "enabled",
}
THRESHOLD_FIELDS = {"name", "score", "at_least", "segment", "stage", "refire", "actions", "enabled"}
WEBHOOK_FIELDS = {"name", "url", "secret"}
SEGMENT_FIELDS = {"name", "match"}
DECAY_FIELDS = {"name", "site", "expire_after_days", "drop_percent", "every_days", "enabled"}
ACTION_SHORTHAND = {
    "set_stage": "stage",
    "webhook": "webhook",
    "enrol": "sequence",
    "add_tag": "tag",
    "remove_tag": "tag",
}
DURATION = re.compile(r"(\d+)\s*([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigFileError(ClosedLoopError):
    """The file cannot be applied; `problems` says where and why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Mapping(dict):
    line: int = 0


class _LineLoader(yaml.SafeLoader):
    """A safe loader whose mappings remember the line they start on."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class RuleSpec:
    name: str
    kind: str
    points: int
    event_type: str | None = None
    site: str | None = None
    conditions: dict[str, Any] = field(default_factory=dict)
    max_times: int | None = None
    once_per_seconds: int | None = None
    first_time_only: bool = False
    enabled: bool = True
    line: int = 0


@dataclass
class ThresholdSpecFile:
    name: str
    score: str
    minimum: int
    segment: str | None = None
    stage: str | None = None
    refire: bool = False
    actions: list[dict[str, Any]] = field(default_factory=list)
    enabled: bool = True
    line: int = 0


@dataclass
class WebhookSpec:
    name: str
    url: str
    secret: str
    line: int = 0


@dataclass
class DecaySpec:
    name: str
    site: str | None = None
    expire_after_days: int | None = None
    drop_percent: int | None = None
    every_days: int | None = None
    enabled: bool = True
    line: int = 0


@dataclass
class SegmentSpec:
    name: str
    match: dict[str, Any]
    line: int = 0


@dataclass
class AutomationSpec:
    """Everything a rules file says, checked."""

    rules: list[RuleSpec] = field(default_factory=list)
    thresholds: list[ThresholdSpecFile] = field(default_factory=list)
    webhooks: list[WebhookSpec] = field(default_factory=list)
    decay: list[DecaySpec] = field(default_factory=list)
    segments: list[SegmentSpec] = field(default_factory=list)
    templates: list[TemplateSpec] = field(default_factory=list)
    sequences: list[SequenceSpec] = field(default_factory=list)
    broadcasts: list[BroadcastSpec] = field(default_factory=list)


def parse_duration(value: Any) -> int:
    """Seconds in "1d", "12h", "30m", "1w 2d" or a plain number of seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        parts = DURATION.findall(text)
        if parts and DURATION.sub("", text).strip() == "":
            return sum(int(n) * UNIT_SECONDS[unit] for n, unit in parts)
    raise ValueError(f"{value!r} is not a duration such as 30m, 12h, 1d or 2w")


def _action(raw: Any) -> dict[str, Any]:
    """Expand an action's short forms: "notify_owner", {set_stage: mql}, {assign_owner: …}."""
    if isinstance(raw, str):
        return {"type": raw}
    if not isinstance(raw, dict):
        raise ThresholdError(f"an action must be a name or a mapping, not {raw!r}")
    if "type" in raw:
        return {k: v for k, v in raw.items()}
    if len(raw) != 1:
        raise ThresholdError(
            f"an action is one of its short forms, e.g. {{set_stage: mql}}; got {sorted(raw)}"
        )
    ((kind, value),) = raw.items()
    if kind == "assign_owner":
        return {
            "type": kind,
            **({"round_robin": True} if value == "round_robin" else {"owner": value}),
        }
    if kind in ACTION_SHORTHAND:
        return {"type": kind, ACTION_SHORTHAND[kind]: value}
    return {"type": kind}


def _check_fields(item: Any, allowed: set[str], what: str, where: str, problems: list[str]) -> bool:
    if not isinstance(item, dict):
        problems.append(f"{where}: each {what} must be a mapping")
        return False
    for key in sorted(set(item) - allowed):
        problems.append(
            f"{where}: {what} {item.get('name', '?')!r}: unknown field {key!r} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    if not isinstance(item.get("name"), str) or not item["name"].strip():
        problems.append(f"{where}: every {what} needs a 'name'")
        return False
    return not (set(item) - allowed)


def _rule(item: dict[str, Any]) -> RuleSpec:
    kind = item.get("kind", "engagement")
    once_per = item.get("once_per")
    spec = RuleSpec(
        name=item["name"].strip(),
        kind=kind,
        points=item.get("points"),
        event_type=item.get("event"),
        site=item.get("site"),
        conditions=dict(item.get("when") or {}),
        max_times=item.get("max_times"),
        once_per_seconds=parse_duration(once_per) if once_per is not None else None,
        first_time_only=bool(item.get("first_time_only", False)),
        enabled=bool(item.get("enabled", True)),
    )
    if not isinstance(spec.points, int) or isinstance(spec.points, bool):
        raise RuleError(f"'points' must be a whole number, not {spec.points!r}")
    make_rule(
        0,
        spec.name,
        spec.kind,
        spec.points,
        event_type=spec.event_type,
        conditions=spec.conditions,
        max_times=spec.max_times,
        once_per_seconds=spec.once_per_seconds,
        first_time_only=spec.first_time_only,
    )
    return spec


def _threshold(item: dict[str, Any]) -> ThresholdSpecFile:
    actions = item.get("actions") or []
    if not isinstance(actions, list):
        raise ThresholdError("'actions' must be a list")
    spec = ThresholdSpecFile(
        name=item["name"].strip(),
        score=item.get("score", "total"),
        minimum=item.get("at_least"),
        segment=item.get("segment"),
        stage=item.get("stage"),
        refire=bool(item.get("refire", False)),
        actions=[_action(a) for a in actions],
        enabled=bool(item.get("enabled", True)),
    )
    if spec.minimum is None:
        raise ThresholdError("'at_least' (the score to reach) is required")
    make_threshold(
        0,
        spec.name,
        spec.score,
        spec.minimum,
        stage=spec.stage,
        refire=spec.refire,
        actions=spec.actions,
    )
    for action in spec.actions:
        check_action(action)
    return spec


def _webhook(item: dict[str, Any]) -> WebhookSpec:
    url, secret = item.get("url"), item.get("secret")
    if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
        raise ValueError(f"'url' must be an http(s) URL, not {url!r}")
    if not isinstance(secret, str) or len(secret) < 16:
        raise ValueError("'secret' must be a string of at least 16 characters (it signs calls)")
    return WebhookSpec(item["name"].strip(), url, secret)


def _segment(item: dict[str, Any]) -> SegmentSpec:
    match = item.get("match")
    if not isinstance(match, dict):
        raise SegmentError("'match' must be a rule tree, e.g. {all: [{tag: hot}]}")
    check_tree(match)
    return SegmentSpec(item["name"].strip(), _plain(match))


def _plain(value: Any) -> Any:
    """The tree as plain dicts and lists (the loader's mappings remember lines)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _decay(item: dict[str, Any]) -> DecaySpec:
    spec = DecaySpec(
        name=item["name"].strip(),
        site=item.get("site"),
        expire_after_days=item.get("expire_after_days"),
        drop_percent=item.get("drop_percent"),
        every_days=item.get("every_days"),
        enabled=bool(item.get("enabled", True)),
    )
    make_policy(
        0,
        spec.name,
        expire_after_days=spec.expire_after_days,
        drop_percent=spec.drop_percent,
        every_days=spec.every_days,
    )
    return spec


BROADCAST_FIELDS = {"name", "template", "segment", "test"}
BROADCAST_TEST_FIELDS = {"percent", "metric", "decide_after"}
BROADCAST_DECIDE_AFTER = "4h"
"""How long a broadcast's test runs before the winner is picked, when the file does not say."""


@dataclass
class BroadcastSpec:
    name: str
    template: str
    segment: str | None = None
    test_percent: int | None = None
    metric: str = "open"
    decide_after_seconds: int | None = None
    line: int = 0


def _broadcast(item: dict[str, Any]) -> BroadcastSpec:
    template, segment, test = item.get("template"), item.get("segment"), item.get("test")
    if not isinstance(template, str) or not template.strip():
        raise ValueError("'template' (the name of the email template to send) is required")
    if segment is not None and (not isinstance(segment, str) or not segment.strip()):
        raise ValueError(f"'segment' must be a segment name, not {segment!r}")
    spec = BroadcastSpec(item["name"].strip(), template.strip(), segment and segment.strip())
    if test is None:
        return spec
    if not isinstance(test, dict):
        raise ValueError("'test' must be a mapping, e.g. {percent: 20, metric: click}")
    unknown = sorted(set(test) - BROADCAST_TEST_FIELDS)
    if unknown:
        allowed = ", ".join(sorted(BROADCAST_TEST_FIELDS))
        raise ValueError(f"unknown field {unknown[0]!r} in 'test' (allowed: {allowed})")
    percent = test.get("percent")
    if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 99:
        raise ValueError(f"test 'percent' must be a whole number from 1 to 99, not {percent!r}")
    metric = test.get("metric", "open")
    if metric not in ("open", "click"):
        raise ValueError(f"test 'metric' must be open or click, not {metric!r}")
    spec.test_percent, spec.metric = percent, metric
    spec.decide_after_seconds = parse_duration(test.get("decide_after", BROADCAST_DECIDE_AFTER))
    return spec


def _holds_nul(value: Any) -> bool:
    """Whether a NUL character hides in any key or string of a loaded document."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def parse(text: str, filename: str = "<rules>") -> AutomationSpec:
    """Check a rules file; raise ConfigFileError naming every problem and its line."""
    try:
        document = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigFileError(
            [f"{filename}{line}: not valid YAML or JSON: {getattr(e, 'problem', e)}"]
        ) from e
    if document is None:
        document = _Mapping()
    if _holds_nul(document):
        # YAML's "\0" escape makes one; no database text column can store it.
        raise ConfigFileError([f"{filename}: a value holds a NUL character (\\0): remove it"])
    if not isinstance(document, dict):
        sections = ", ".join(SECTIONS)
        raise ConfigFileError([f"{filename}:1: the file must be a mapping of {sections}"])
    problems: list[str] = []
    for key in sorted(set(document) - set(SECTIONS)):
        problems.append(
            f"{filename}:{document.line}: unknown section {key!r} (allowed: {', '.join(SECTIONS)})"
        )
    spec = AutomationSpec()
    base = Path(filename).parent

    def _template(item: dict[str, Any]) -> TemplateSpec:
        return template_entry(item, base)

    for section, allowed, build, target, what in (
        ("segments", SEGMENT_FIELDS, _segment, spec.segments, "segment"),
        ("rules", RULE_FIELDS, _rule, spec.rules, "rule"),
        ("thresholds", THRESHOLD_FIELDS, _threshold, spec.thresholds, "threshold"),
        ("webhooks", WEBHOOK_FIELDS, _webhook, spec.webhooks, "webhook"),
        ("decay", DECAY_FIELDS, _decay, spec.decay, "decay policy"),
        ("templates", TEMPLATE_FIELDS, _template, spec.templates, "template"),
        ("sequences", SEQUENCE_FIELDS, build_sequence, spec.sequences, "sequence"),
        ("broadcasts", BROADCAST_FIELDS, _broadcast, spec.broadcasts, "broadcast"),
    ):
        items = document.get(section) or []
        if not isinstance(items, list):
            problems.append(f"{filename}:{document.line}: {section!r} must be a list")
            continue
        seen: set[str] = set()
        for item in items:
            where = f"{filename}:{getattr(item, 'line', document.line)}"
            if not _check_fields(item, allowed, what, where, problems):
                continue
            if item["name"].strip() in seen:
                problems.append(f"{where}: {what} {item['name']!r} appears twice")
                continue
            seen.add(item["name"].strip())
            try:
                built = build(item)
                built.line = getattr(item, "line", 0)
                target.append(built)
            except (
                RuleError,
                ThresholdError,
                DecayError,
                SegmentError,
                SequenceError,
                ValueError,
                TypeError,
            ) as e:
                problems.append(f"{where}: {what} {item['name']!r}: {e}")
    if problems:
        raise ConfigFileError(problems)
    return spec
