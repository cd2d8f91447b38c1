"""A nurture sequence as written: checked at load time, stored normalised, compiled.

Pure. `build_sequence` checks one `sequences:` item of a rules file (everything
but whether the segments and templates it names exist, which needs the
database); `make_sequence` compiles the stored form for the engine in
`automation.sequence_steps`; `sequence_document` writes it back as a file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from automation.scoring import EVENT_TYPES
from automation.thresholds import STAGES

FUNNEL = STAGES[: STAGES.index("customer") + 1]
"""Lifecycle stages in order; `stage_at_least` exits compare positions in it."""

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
STEP_KINDS = ("send", "wait", "branch", "end")
TARGETS = ("next", "end")
BRANCH_ON = ("opened", "clicked")
REENTRY = ("never", "after_exit", "after_days")
SEQUENCE_FIELDS = {"name", "entry", "reentry", "send_window", "exit", "steps", "enabled"}
EXIT_FIELDS = {"stage_at_least", "score_at_least", "left_segment", "goal"}

_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class SequenceError(ValueError):
    """A sequence that cannot work as written; the message names the step and the field."""


@dataclass(frozen=True)
class WallClock:
    """A moment of the week on the contact's own clock: weekday (0 = Monday; None = any)."""

    weekday: int | None
    hour: int
    minute: int = 0


@dataclass(frozen=True)
class Step:
    """One step; branch targets are positions, `len(steps)` meaning the end."""

    kind: str
    name: str | None = None
    template: str | None = None
    seconds: int | None = None
    until: WallClock | None = None
    on: str | None = None
    within: int | None = None
    then: int | None = None
    otherwise: int | None = None


@dataclass(frozen=True)
class Exits:
    """When an enrolment ends early, checked before every step."""

    stage_at_least: str | None = None
    score_at_least: int | None = None
    left_segment: bool = False
    goal_event: str | None = None
    goal_name: str | None = None


@dataclass(frozen=True)
class SendWindow:
    """When sends may go out, on the contact's clock: weekdays, and minutes after midnight."""

    days: frozenset[int]
    start: int
    end: int


@dataclass(frozen=True)
class SequenceDef:
    """A stored sequence as the engine takes it."""

    id: int
    name: str
    steps: tuple[Step, ...]
    exits: Exits = Exits()
    window: SendWindow | None = None
    entry_segment_id: int | None = None
    on_not_ready: bool = False
    reentry: str = "never"
    reentry_days: int | None = None
    enabled: bool = True


@dataclass
class SequenceSpec:
    """A sequence as a rules file states it, checked and normalised: what gets stored."""

    name: str
    steps: list[Any]
    entry_segment: str | None = None
    on_not_ready: bool = False
    exits: dict[str, Any] = field(default_factory=dict)
    send_window: dict[str, Any] | None = None
    reentry: str = "never"
    reentry_days: int | None = None
    enabled: bool = True
    line: int = 0
    template_lines: dict[str, int] = field(default_factory=dict)
    """The line each template is first named on, for errors about templates that do not exist."""

    @property
    def templates(self) -> set[str]:
        """The templates its send steps name."""
        return {s.template for s in read_steps(self.steps)[1] if s.template}


def format_duration(seconds: int) -> str:
    """Seconds as the shortest duration `parse_duration` reads back: "2d", "1d 12h", "90s"."""
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts) or "0s"


def _duration(value: Any, what: str) -> int:
    from automation.config_file import parse_duration  # config_file imports this module

    try:
        return parse_duration(value)
    except ValueError as e:
        raise SequenceError(f"{what}: {e}") from e


def _where(index: int, raw: Any) -> str:
    line = getattr(raw, "line", 0)
    return f"step {index + 1}" + (f" (line {line})" if line else "")


def _wall_clock(raw: Any, where: str) -> tuple[dict[str, Any], WallClock]:
    if not isinstance(raw, Mapping):
        raise SequenceError(f"{where}: 'until' takes {{weekday: tue, hour: 10}}")
    unknown = set(raw) - {"weekday", "hour", "minute"}
    if unknown:
        raise SequenceError(
            f"{where}: unknown field {sorted(unknown)[0]!r} in 'until' (allowed: weekday, hour, "
            "minute)"
        )
    weekday = raw.get("weekday")
    if weekday is not None and weekday not in DAYS:
        raise SequenceError(f"{where}: weekday {weekday!r} is not one of {', '.join(DAYS)}")
    hour, minute = raw.get("hour"), raw.get("minute", 0)
    for value, top, label in ((hour, 23, "hour"), (minute, 59, "minute")):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise SequenceError(f"{where}: {label} must be 0 to {top}, not {value!r}")
    normal = {"weekday": weekday, "hour": hour, "minute": minute}
    if weekday is None:
        del normal["weekday"]
    return normal, WallClock(DAYS.index(weekday) if weekday else None, hour, minute)


def _send(value: Any, where: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(value, str) or not value.strip():
        raise SequenceError(f"{where}: 'send' takes a template name")
    return {"send": value.strip()}, {"template": value.strip()}


def _wait(value: Any, where: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(value, Mapping):
        seconds = _duration(value, where)
        return {"wait": format_duration(seconds)}, {"seconds": seconds}
    if set(value) != {"until"}:
        raise SequenceError(
            f"{where}: 'wait' takes a duration (2d) or {{until: {{weekday: tue, hour: 10}}}}"
        )
    until, clock = _wall_clock(value["until"], where)
    return {"wait": {"until": until}}, {"until": clock}


def _branch(value: Any, where: str) -> tuple[Any, dict[str, Any]]:
    if not isinstance(value, Mapping):
        raise SequenceError(
            f"{where}: 'branch' takes {{if: clicked, within: 3d, then: STEP, else: next}}"
        )
    unknown = set(value) - {"if", "within", "then", "else"}
    if unknown:
        raise SequenceError(
            f"{where}: unknown branch field {sorted(unknown)[0]!r} "
            "(allowed: if, within, then, else)"
        )
    if value.get("if") not in BRANCH_ON:
        raise SequenceError(
            f"{where}: branch 'if' must be one of {', '.join(BRANCH_ON)}, not {value.get('if')!r}"
        )
    if "within" not in value:
        raise SequenceError(f"{where}: branch needs 'within' (a duration such as 3d)")
    if "then" not in value:
        raise SequenceError(f"{where}: branch needs 'then' (a later step's name, or end)")
    within = _duration(value["within"], where)
    then, otherwise = value["then"], value.get("else", "next")
    normal = {
        "branch": {
            "if": value["if"],
            "within": format_duration(within),
            "then": then,
            "else": otherwise,
        }
    }
    # The targets stay names until every step's name is known.
    return normal, {"on": value["if"], "within": within, "then": then, "otherwise": otherwise}


def _end(value: Any, where: str) -> tuple[Any, dict[str, Any]]:
    if value not in (True, None):
        raise SequenceError(f"{where}: 'end' takes no value")
    return "end", {}


_KINDS = {"send": _send, "wait": _wait, "branch": _branch, "end": _end}


def _read_step(raw: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """One step as written → (normalised form, Step fields with branch targets as names)."""
    if raw == "end":
        raw = {"end": True}
    if not isinstance(raw, Mapping):
        raise SequenceError(f"{where}: a step is a mapping (send, wait, branch) or 'end'")
    unknown = set(raw) - {"name", *STEP_KINDS}
    if unknown:
        raise SequenceError(
            f"{where}: unknown step field {sorted(unknown)[0]!r} "
            f"(a step is one of {', '.join(STEP_KINDS)}, with an optional name)"
        )
    kinds = [k for k in STEP_KINDS if k in raw]
    if len(kinds) != 1:
        raise SequenceError(f"{where}: a step is exactly one of {', '.join(STEP_KINDS)}")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip() or name in TARGETS):
        raise SequenceError(f"{where}: a step name must be text other than next and end")
    normal, fields = _KINDS[kinds[0]](raw[kinds[0]], where)
    if name is not None:
        normal = {"name": name, **(normal if isinstance(normal, dict) else {"end": True})}
    return normal, {"kind": kinds[0], "name": name, **fields}


def _target(target: Any, index: int, names: dict[str, int], count: int, where: str) -> int:
    if target == "next":
        return index + 1
    if target == "end":
        return count
    if not isinstance(target, str) or target not in names:
        raise SequenceError(f"{where}: branch target {target!r} is not a step name, next or end")
    if names[target] <= index:
        raise SequenceError(
            f"{where}: branch target {target!r} is not after the branch "
            "(branches only go forward, so a sequence always finishes)"
        )
    return names[target]


def read_steps(raw_steps: Any) -> tuple[list[Any], tuple[Step, ...]]:
    """Check steps as written; return them normalised (for storing) and compiled.

    Branch targets are a later step's name, "next" or "end": forward only, so a
    sequence always finishes. A branch needs a send before it; every step must
    be reachable.
    """
    if not isinstance(raw_steps, list) or not raw_steps:
        raise SequenceError("'steps' must be a non-empty list")
    wheres = [_where(index, raw) for index, raw in enumerate(raw_steps)]
    read = [_read_step(raw, where) for raw, where in zip(raw_steps, wheres, strict=True)]
    names: dict[str, int] = {}
    for index, (_, fields) in enumerate(read):
        if fields["name"] in names:
            raise SequenceError(f"{wheres[index]}: two steps are named {fields['name']!r}")
        if fields["name"] is not None:
            names[fields["name"]] = index
    steps = []
    for index, (_, fields) in enumerate(read):
        if fields["kind"] == "branch":
            if not any(step.kind == "send" for step in steps):
                raise SequenceError(
                    f"{wheres[index]}: a branch looks at the previous message; "
                    "put a send step before it"
                )
            for key in ("then", "otherwise"):
                fields[key] = _target(fields[key], index, names, len(read), wheres[index])
        steps.append(Step(**fields))
    _check_reachable(steps, wheres)
    return [normal for normal, _ in read], tuple(steps)


def _successors(step: Step, index: int) -> tuple[int, ...]:
    if step.kind == "end":
        return ()
    if step.kind == "branch":
        return (step.then, step.otherwise)  # type: ignore[return-value]
    return (index + 1,)


def _check_reachable(steps: Sequence[Step], wheres: Sequence[str]) -> None:
    reachable = {0}
    for index, step in enumerate(steps):
        if index not in reachable:
            raise SequenceError(
                f"{wheres[index]}: can never be reached (name it as a branch target, or remove it)"
            )
        reachable.update(_successors(step, index))


def _read_window(raw: Any) -> tuple[dict[str, Any] | None, SendWindow | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, Mapping) or not raw or set(raw) - {"days", "hours"}:
        raise SequenceError(
            "'send_window' takes days and/or hours, e.g. {days: [mon, tue], hours: '09:00-17:00'}"
        )
    days = raw.get("days", list(DAYS))
    if (
        not isinstance(days, list)
        or not days
        or any(d not in DAYS for d in days)
        or len(set(days)) != len(days)
    ):
        raise SequenceError(f"send_window days must be a list of {', '.join(DAYS)}, not {days!r}")
    hours = raw.get("hours", "00:00-24:00")
    match = _HOURS.match(hours) if isinstance(hours, str) else None
    if not match:
        raise SequenceError(f"send_window hours must look like '09:00-17:00', not {hours!r}")
    h1, m1, h2, m2 = map(int, match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if m1 > 59 or m2 > 59 or not 0 <= start < end <= 24 * 60:
        raise SequenceError(
            f"send_window hours {hours!r}: the start must come before the end, within one day "
            "(00:00-24:00)"
        )
    ordered = [d for d in DAYS if d in days]
    normal = {"days": ordered, "hours": f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}"}
    return normal, SendWindow(frozenset(DAYS.index(d) for d in ordered), start, end)


def _read_exits(raw: Any, has_segment: bool) -> tuple[dict[str, Any], Exits]:
    if raw is None:
        return {}, Exits()
    if not isinstance(raw, Mapping):
        raise SequenceError("'exit' must be a mapping, e.g. {stage_at_least: sql}")
    unknown = set(raw) - EXIT_FIELDS
    if unknown:
        raise SequenceError(
            f"unknown exit field {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(EXIT_FIELDS))})"
        )
    normal: dict[str, Any] = {}
    stage = raw.get("stage_at_least")
    if stage is not None:
        if stage not in FUNNEL:
            raise SequenceError(f"exit stage_at_least {stage!r} is not one of {list(FUNNEL)}")
        normal["stage_at_least"] = stage
    score = raw.get("score_at_least")
    if score is not None:
        if not isinstance(score, int) or isinstance(score, bool):
            raise SequenceError(f"exit score_at_least must be a whole number, not {score!r}")
        normal["score_at_least"] = score
    left = raw.get("left_segment", False)
    if not isinstance(left, bool):
        raise SequenceError(f"exit left_segment must be true or false, not {left!r}")
    if left:
        if not has_segment:
            raise SequenceError("exit left_segment needs an entry segment ({segment: NAME})")
        normal["left_segment"] = True
    goal = raw.get("goal")
    event, name = None, None
    if goal is not None:
        if not isinstance(goal, Mapping) or set(goal) - {"event", "name"} or "event" not in goal:
            raise SequenceError("exit goal takes {event: TYPE, name: NAME}, e.g. a custom event")
        event, name = goal["event"], goal.get("name")
        if event not in EVENT_TYPES:
            raise SequenceError(
                f"exit goal event {event!r} is not one of {', '.join(sorted(EVENT_TYPES))}"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise SequenceError(f"exit goal name must be text, not {name!r}")
        normal["goal"] = {"event": event, **({"name": name} if name else {})}
    exits = Exits(normal.get("stage_at_least"), normal.get("score_at_least"), left, event, name)
    return normal, exits


def _read_reentry(raw: Any) -> tuple[str, int | None]:
    if raw is None:
        return "never", None
    if raw in ("never", "after_exit"):
        return raw, None
    if isinstance(raw, Mapping) and set(raw) == {"after_days"}:
        days = raw["after_days"]
        if isinstance(days, int) and not isinstance(days, bool) and days > 0:
            return "after_days", days
    raise SequenceError(f"'reentry' is never, after_exit or {{after_days: N}}, not {raw!r}")


def build_sequence(item: Mapping[str, Any]) -> SequenceSpec:
    """Check one `sequences:` item of a rules file (all but the names it refers to)."""
    entry = item.get("entry") or {}
    if not isinstance(entry, Mapping) or set(entry) - {"segment", "not_ready"}:
        raise SequenceError(
            "'entry' takes segment (enrol on joining it) and/or not_ready: true; "
            "leave it out for manual, CLI and threshold enrolment only"
        )
    segment = entry.get("segment")
    if segment is not None and (not isinstance(segment, str) or not segment.strip()):
        raise SequenceError(f"entry segment must be a segment's name, not {segment!r}")
    not_ready = entry.get("not_ready", False)
    if not isinstance(not_ready, bool):
        raise SequenceError(f"entry not_ready must be true or false, not {not_ready!r}")
    reentry, days = _read_reentry(item.get("reentry"))
    window, _ = _read_window(item.get("send_window"))
    exits, _ = _read_exits(item.get("exit"), segment is not None)
    steps, _ = read_steps(item.get("steps"))
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SequenceError(f"'enabled' must be true or false, not {enabled!r}")
    raw_steps = item["steps"]
    template_lines: dict[str, int] = {}
    for raw in raw_steps:
        if isinstance(raw, Mapping) and isinstance(raw.get("send"), str):
            line = getattr(raw, "line", 0) or getattr(item, "line", 0)
            template_lines.setdefault(raw["send"].strip(), line)
    return SequenceSpec(
        name=item["name"].strip(),
        steps=steps,
        entry_segment=segment.strip() if segment else None,
        on_not_ready=not_ready,
        exits=exits,
        send_window=window,
        reentry=reentry,
        reentry_days=days,
        enabled=enabled,
        template_lines=template_lines,
    )


def make_sequence(
    id: int,
    name: str,
    steps: Sequence[Any],
    *,
    exits: Mapping[str, Any] | None = None,
    send_window: Mapping[str, Any] | None = None,
    entry_segment_id: int | None = None,
    on_not_ready: bool = False,
    reentry: str = "never",
    reentry_days: int | None = None,
    enabled: bool = True,
) -> SequenceDef:
    """Compile a stored sequence (the normalised form `build_sequence` gives) for the engine."""
    _, compiled = read_steps(list(steps))
    _, window = _read_window(send_window)
    _, exit_rules = _read_exits(exits or None, entry_segment_id is not None)
    if reentry not in REENTRY:
        raise SequenceError(f"re-entry {reentry!r} is not one of {', '.join(REENTRY)}")
    return SequenceDef(
        id,
        name,
        compiled,
        exit_rules,
        window,
        entry_segment_id,
        on_not_ready,
        reentry,
        reentry_days,
        enabled,
    )


def sequence_document(
    spec: SequenceSpec,
) -> dict[str, Any]:
    """A stored sequence as a rules file writes it (what `automation show` prints)."""
    entry = {}
    if spec.entry_segment:
        entry["segment"] = spec.entry_segment
    if spec.on_not_ready:
        entry["not_ready"] = True
    document: dict[str, Any] = {"name": spec.name}
    if entry:
        document["entry"] = entry
    document["reentry"] = (
        {"after_days": spec.reentry_days} if spec.reentry == "after_days" else spec.reentry
    )
    if spec.send_window:
        document["send_window"] = spec.send_window
    if spec.exits:
        document["exit"] = spec.exits
    document["steps"] = spec.steps
    if not spec.enabled:
        document["enabled"] = False
    return document


def describe(sequence: SequenceDef, position: int) -> str:
    """The step at `position` in words, for people: "send welcome", "wait until Tue 10:00"."""
    if position >= len(sequence.steps):
        return "complete"
    step = sequence.steps[position]

    def target(index: int | None) -> str:
        if index is None or index >= len(sequence.steps):
            return "end"
        return sequence.steps[index].name or f"step {index + 1}"

    if step.kind == "send":
        return f"send {step.template}"
    if step.kind == "wait" and step.until is not None:
        day = DAYS[step.until.weekday].capitalize() + " " if step.until.weekday is not None else ""
        return f"wait until {day}{step.until.hour:02d}:{step.until.minute:02d}"
    if step.kind == "wait":
        return f"wait {format_duration(step.seconds or 0)}"
    if step.kind == "branch":
        return (
            f"branch: {step.on} within {format_duration(step.within or 0)} → "
            f"{target(step.then)}, else {target(step.otherwise)}"
        )
    return "end"
