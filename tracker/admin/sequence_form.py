"""The sequence steps editor's form: posted fields to a rules file's `sequences` item and back.

Pure: no database, no request. The form holds what the marketer typed, as
text. `sequence_item` turns it into the item `automation load` would read
(whole numbers become numbers, everything else is passed on as typed for the
parser to judge, so its messages are the YAML editor's); `form_of` fills the
form from the item `automation show` prints. Adding, removing and moving a
step change the form only: nothing is saved until the item is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from werkzeug.datastructures import MultiDict

MAX_STEPS = 200
"""Most steps the form editor takes (longer sequences: the YAML editor)."""

NEW_STEP_DEFAULTS: dict[str, dict[str, str]] = {
    "send": {},
    "wait": {"duration": "1d"},
    "branch": {"on": "clicked", "within": "3d", "then": "end", "otherwise": "next"},
    "end": {},
}
"""What a step added with the form starts with, per kind: a working example to adjust."""

ROW_FIELDS = (
    "kind",
    "name",
    "template",
    "duration",
    "weekday",
    "hour",
    "minute",
    "on",
    "within",
    "then",
    "otherwise",
)
"""A step row's text fields, posted as `step-<index>-<field>`."""

_ROW_KEY = re.compile(r"^step-(\d{1,6})-kind$")
_WHOLE = re.compile(r"^[+-]?\d{1,30}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class FormRefused(ValueError):
    """A posted form the editor cannot even show again (too many steps, an unknown button)."""


@dataclass
class StepRow:
    """One step as its row of the form shows it; `origin` is its stored position (None: a new
    row), for its stats and to keep the enrolments standing at it there on save."""

    kind: str = "send"
    name: str = ""
    template: str = ""
    duration: str = ""
    weekday: str = ""
    hour: str = ""
    minute: str = ""
    on: str = "opened"
    within: str = ""
    then: str = "end"
    otherwise: str = "next"
    origin: int | None = None


@dataclass
class SequenceForm:
    """The whole editor, as typed; `based_on` fingerprints the stored steps the origins index."""

    name: str = ""
    entry_segment: str = ""
    not_ready: bool = False
    reentry: str = "never"
    reentry_days: str = ""
    window_days: list[str] = field(default_factory=list)
    window_hours: str = ""
    stage_at_least: str = ""
    score_at_least: str = ""
    left_segment: bool = False
    goal_event: str = ""
    goal_name: str = ""
    enabled: bool = True
    steps: list[StepRow] = field(default_factory=list)
    based_on: str = ""

    @property
    def step_names(self) -> list[str]:
        """The names given to steps, in order: what branch targets may be."""
        return [row.name.strip() for row in self.steps if row.name.strip()]


def new_step(kind: str, template: str = "") -> StepRow:
    """A fresh row of `kind` (a send names `template`)."""
    row = StepRow(kind=kind, **NEW_STEP_DEFAULTS.get(kind, {}))
    if kind == "send":
        row.template = template
    return row


def new_form(template: str = "") -> SequenceForm:
    """The form for a new sequence: one send step."""
    return SequenceForm(steps=[new_step("send", template)])


# ---------------------------------------------------------------- item -> form


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _step_row(raw: Any, origin: int | None) -> StepRow:
    """A stored step (the normalised form `build_sequence` gives) as a row."""
    if raw == "end":
        return StepRow(kind="end", origin=origin)
    if not isinstance(raw, Mapping):
        return StepRow(kind=_text(raw), origin=origin)
    row = StepRow(kind="end", name=_text(raw.get("name")), origin=origin)
    if "send" in raw:
        row.kind, row.template = "send", _text(raw["send"])
    elif "wait" in raw:
        row.kind = "wait"
        wait = raw["wait"]
        if isinstance(wait, Mapping):
            until = wait.get("until") or {}
            row.weekday = _text(until.get("weekday"))
            row.hour = _text(until.get("hour"))
            row.minute = _text(until.get("minute"))
        else:
            row.duration = _text(wait)
    elif "branch" in raw:
        branch = raw["branch"] or {}
        row.kind = "branch"
        row.on = _text(branch.get("if"))
        row.within = _text(branch.get("within"))
        row.then = _text(branch.get("then"))
        row.otherwise = _text(branch.get("else", "next"))
    return row


def form_of(item: Mapping[str, Any]) -> SequenceForm:
    """A sequence as `automation show` prints it, as the editor's fields."""
    entry = item.get("entry") or {}
    reentry = item.get("reentry") or "never"
    window = item.get("send_window") or {}
    exits = item.get("exit") or {}
    goal = exits.get("goal") or {}
    return SequenceForm(
        name=_text(item.get("name")),
        entry_segment=_text(entry.get("segment")),
        not_ready=bool(entry.get("not_ready")),
        reentry="after_days" if isinstance(reentry, Mapping) else _text(reentry),
        reentry_days=_text(reentry.get("after_days")) if isinstance(reentry, Mapping) else "",
        window_days=[_text(day) for day in window.get("days") or []],
        window_hours=_text(window.get("hours")),
        stage_at_least=_text(exits.get("stage_at_least")),
        score_at_least=_text(exits.get("score_at_least")),
        left_segment=bool(exits.get("left_segment")),
        goal_event=_text(goal.get("event")),
        goal_name=_text(goal.get("name")),
        enabled=item.get("enabled", True) is not False,
        steps=[_step_row(raw, position) for position, raw in enumerate(item.get("steps") or [])],
    )


# ---------------------------------------------------------------- posted fields -> form


def _origin(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None


def read_form(fields: MultiDict[str, str], name: str | None = None) -> SequenceForm:
    """The posted editor, rows in index order; `name` is the stored name when editing.

    Raises FormRefused for more than MAX_STEPS rows.
    """

    def text(key: str) -> str:
        # No browser sends NUL, and PostgreSQL text cannot hold it: drop it, not the request.
        return (fields.get(key) or "").replace("\r\n", "\n").replace("\x00", "")

    indices = sorted({int(m.group(1)) for key in fields if (m := _ROW_KEY.match(key))})
    if len(indices) > MAX_STEPS:
        raise FormRefused(
            f"the form editor takes up to {MAX_STEPS} steps: edit a longer sequence as YAML"
        )
    steps = []
    for index in indices:
        values = {key: text(f"step-{index}-{key}") for key in ROW_FIELDS}
        steps.append(StepRow(**values, origin=_origin(text(f"step-{index}-origin"))))
    based_on = text("based_on")
    return SequenceForm(
        name=name if name is not None else text("name").strip(),
        entry_segment=text("entry_segment"),
        not_ready=bool(fields.get("not_ready")),
        reentry=text("reentry") or "never",
        reentry_days=text("reentry_days"),
        window_days=[day for day in fields.getlist("window_days") if day],
        window_hours=text("window_hours"),
        stage_at_least=text("stage_at_least"),
        score_at_least=text("score_at_least"),
        left_segment=bool(fields.get("left_segment")),
        goal_event=text("goal_event"),
        goal_name=text("goal_name"),
        enabled=bool(fields.get("enabled")),
        steps=steps,
        based_on=based_on if _DIGEST.match(based_on) else "",
    )


# ---------------------------------------------------------------- editing the rows


def apply_op(
    form: SequenceForm, op: str, add_kind: str = "send", template: str = ""
) -> SequenceForm:
    """The form after a button other than Save: `add:I` (a step of `add_kind` after row I;
    -1: first), `remove:I`, `up:I`, `down:I`, or `refresh` (as typed, each row showing the
    fields of its kind). Raises FormRefused for a button the form does not have.
    """
    if op == "refresh":
        return form
    verb, _, where = op.partition(":")
    index = int(where) if re.fullmatch(r"-?\d{1,6}", where) else None
    steps = list(form.steps)
    lowest = -1 if verb == "add" else 0
    if verb not in ("add", "remove", "up", "down") or index is None:
        raise FormRefused(f"unknown button {op[:40]!r}: reload the page")
    if not lowest <= index < len(steps):
        raise FormRefused(f"there is no step {index + 1} (any more): reload the page")
    if verb == "add":
        if add_kind not in NEW_STEP_DEFAULTS:
            raise FormRefused(f"{add_kind[:40]!r} is not a kind of step")
        steps.insert(index + 1, new_step(add_kind, template))
    elif verb == "remove":
        del steps[index]
    elif verb == "up" and index > 0:
        steps[index - 1], steps[index] = steps[index], steps[index - 1]
    elif verb == "down" and index < len(steps) - 1:
        steps[index + 1], steps[index] = steps[index], steps[index + 1]
    return replace(form, steps=steps)


# ---------------------------------------------------------------- form -> item


def _number(text: str) -> int | str:
    """A whole number as a number (as YAML would read it); anything else as typed."""
    text = text.strip()
    return int(text) if _WHOLE.match(text) else text


def step_item(row: StepRow) -> Any:
    """A row as a step of a rules file."""
    body: Any = None
    if row.kind == "send":
        body = row.template.strip()
    elif row.kind == "wait":
        until: dict[str, Any] = {}
        if row.weekday:
            until["weekday"] = row.weekday
        if row.hour.strip():
            until["hour"] = _number(row.hour)
        if row.minute.strip():
            until["minute"] = _number(row.minute)
        duration = row.duration.strip()
        # A duration, or a time: given both, the parser says a wait takes one or the other.
        body = {"until": until} if until else duration
        if until and duration:
            body = {"for": duration, "until": until}
    elif row.kind == "branch":
        body = {"if": row.on, "within": row.within.strip(), "then": row.then, "else": row.otherwise}
    elif row.kind == "end":
        body = True
    name = row.name.strip()
    if not name and row.kind == "end":
        return "end"
    return {**({"name": name} if name else {}), row.kind: body}


def sequence_item(form: SequenceForm) -> dict[str, Any]:
    """The form as a rules file's `sequences` item, for `automation.config_file.parse`."""
    item: dict[str, Any] = {"name": form.name.strip()}
    entry: dict[str, Any] = {}
    if form.entry_segment:
        entry["segment"] = form.entry_segment
    if form.not_ready:
        entry["not_ready"] = True
    if entry:
        item["entry"] = entry
    if form.reentry == "after_days":
        days = form.reentry_days.strip()
        item["reentry"] = {"after_days": _number(days) if days else None}
    else:
        item["reentry"] = form.reentry
    window: dict[str, Any] = {}
    if form.window_days:
        window["days"] = list(form.window_days)
    if form.window_hours.strip():
        window["hours"] = form.window_hours.strip()
    if window:
        item["send_window"] = window
    exits: dict[str, Any] = {}
    if form.stage_at_least:
        exits["stage_at_least"] = form.stage_at_least
    if form.score_at_least.strip():
        exits["score_at_least"] = _number(form.score_at_least)
    if form.left_segment:
        exits["left_segment"] = True
    if form.goal_event:
        goal = {"event": form.goal_event}
        if form.goal_name.strip():
            goal["name"] = form.goal_name.strip()
        exits["goal"] = goal
    if exits:
        item["exit"] = exits
    item["steps"] = [step_item(row) for row in form.steps]
    item["enabled"] = form.enabled
    return item


# ---------------------------------------------------------------- the parser's messages


_STEP = re.compile(r"\bstep (\d+)\b")
_LINE = re.compile(r"^line \d+: |\s\(line \d+\)")


def form_problems(problems: list[str], steps: int) -> tuple[list[str], dict[int, list[str]]]:
    """The parser's messages without line numbers (of YAML the marketer never saw),
    and those about a step by its row index, to show beside it.
    """
    cleaned = [_LINE.sub("", problem) for problem in problems]
    by_row: dict[int, list[str]] = {}
    for problem in cleaned:
        match = _STEP.search(problem)
        if match and 1 <= int(match.group(1)) <= steps:
            by_row.setdefault(int(match.group(1)) - 1, []).append(problem)
    return cleaned, by_row
