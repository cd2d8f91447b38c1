"""The nurture sequence engine: what an enrolment does next, on the contact's own clock.

Pure: a sequence (`automation.sequence_defs`), an enrolment, facts about the
contact and `now` in; a `Decision` out (exit, send, wait, branch, complete,
postpone). The runner (`automation.sequence_runner`) reads the facts and
writes what was decided. Every time is timezone-aware; times handed back are UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from automation.sequence_defs import (
    FUNNEL,
    Exits,
    SendWindow,
    SequenceDef,
    Step,
    WallClock,
    format_duration,
)

UNDELIVERED = frozenset({"failed", "suppressed", "bounced"})
"""Message statuses that will never reach the inbox: a branch on them is false at once."""

POSTPONE_ROUNDS = 50
"""Most alternations of frequency cap and send window `earliest_send` tries (it needs few)."""


# --- Time on the contact's clock -------------------------------------------------------


def zone(name: Any) -> ZoneInfo | None:
    """The IANA timezone of that name, or None when it is not one."""
    if not isinstance(name, str) or not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def contact_zone(*candidates: Any) -> tzinfo:
    """The first valid IANA timezone of the candidates (the contact's, then its site's), or UTC."""
    for name in candidates:
        found = zone(name)
        if found is not None:
            return found
    return UTC


def _instant(day: date, minutes: int, where: tzinfo) -> datetime:
    """`day` at `minutes` after midnight on the local clock, as a UTC instant.

    A wall time skipped by a DST change (02:30 on a spring-forward night)
    falls an hour later; a repeated one means its first occurrence.
    """
    if minutes >= 24 * 60:
        day, minutes = day + timedelta(days=1), minutes - 24 * 60
    local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=where)
    return local.astimezone(UTC)


def next_wall_time(after: datetime, where: tzinfo, clock: WallClock) -> datetime:
    """The first instant at or after `after` when the local clock shows `clock`."""
    local = after.astimezone(where)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if clock.weekday is not None and day.weekday() != clock.weekday:
            continue
        candidate = _instant(day, clock.hour * 60 + clock.minute, where)
        if candidate >= after:
            return candidate
    raise AssertionError("a weekday recurs within 8 days")  # pragma: no cover


def window_opens(at: datetime, where: tzinfo, window: SendWindow | None) -> datetime:
    """The first instant at or after `at` inside the send window (local days and hours)."""
    if window is None:
        return at
    local = at.astimezone(where)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        if at < _instant(day, window.end, where):
            return max(at, _instant(day, window.start, where))
    raise AssertionError("a send window has at least one day")  # pragma: no cover


@dataclass(frozen=True)
class Caps:
    """The cap across sequences: most sends per contact in any 24 h and any 7 days (0: none)."""

    per_day: int = 0
    per_week: int = 0


def _spans(caps: Caps) -> list[tuple[timedelta, int]]:
    return [
        (span, limit)
        for span, limit in ((timedelta(days=1), caps.per_day), (timedelta(days=7), caps.per_week))
        if limit > 0
    ]


def cap_clears(sends: Sequence[datetime], at: datetime, caps: Caps) -> datetime:
    """The first instant at or after `at` when one more send stays within the caps.

    A send at s counts in the rolling window (t - span, t]; the count can only
    drop when a send leaves it, so the answer is `at` or one of those moments.
    """
    spans = _spans(caps)
    if not spans:
        return at

    def fits(moment: datetime) -> bool:
        return all(
            sum(1 for s in sends if moment - span < s <= moment) < limit for span, limit in spans
        )

    candidates = sorted({at} | {s + span for s in sends for span, _ in spans if s + span > at})
    for candidate in candidates:
        if fits(candidate):
            return candidate
    raise AssertionError("every send leaves the window eventually")  # pragma: no cover


def earliest_send(
    now: datetime,
    where: tzinfo,
    window: SendWindow | None,
    sends: Sequence[datetime],
    caps: Caps,
) -> datetime:
    """The first instant at or after `now` that both the caps and the send window allow."""
    at = now
    for _ in range(POSTPONE_ROUNDS):
        at = cap_clears(sends, at, caps)
        opened = window_opens(at, where, window)
        if opened == at:
            return at
        at = opened
    return at


# --- What an enrolment does next -------------------------------------------------------


@dataclass(frozen=True)
class MessageFacts:
    """The previous message of the enrolment; opened_at / clicked_at are HUMAN ones only."""

    status: str
    queued_at: datetime
    sent_at: datetime | None = None
    opened_at: datetime | None = None
    clicked_at: datetime | None = None


@dataclass(frozen=True)
class EnrolmentFacts:
    """Where an enrolment stands: its step, and since when that step has been due."""

    position: int
    due_at: datetime
    last_message: MessageFacts | None = None


@dataclass(frozen=True)
class ContactFacts:
    """What the exit criteria and the clock need to know about the contact."""

    email_status: str = "ok"
    stage: str = "lead"
    score: int = 0
    in_entry_segment: bool = True
    goal_reached: bool = False
    zone: tzinfo = UTC


@dataclass(frozen=True)
class Decision:
    """What to do: `action` is exited, completed, sent, waited, branched or postponed.

    `position` is where the enrolment stands afterwards and `at` when that step
    is due: a moment after `now` means sleep until then, else go on at once.
    """

    action: str
    position: int
    at: datetime
    template: str | None = None
    detail: str = ""

    @property
    def final(self) -> bool:
        """True when the enrolment ends here."""
        return self.action in ("exited", "completed")


def exit_reason(exits: Exits, contact: ContactFacts) -> str | None:
    """Why the contact leaves the sequence now, or None."""
    if contact.email_status != "ok":
        return f"do-not-contact (email {contact.email_status})"
    if (
        exits.stage_at_least is not None
        and contact.stage in FUNNEL
        and FUNNEL.index(contact.stage) >= FUNNEL.index(exits.stage_at_least)
    ):
        return f"stage {contact.stage} (exit at {exits.stage_at_least} or later)"
    if exits.score_at_least is not None and contact.score >= exits.score_at_least:
        return f"score {contact.score} (exit at {exits.score_at_least})"
    if exits.left_segment and not contact.in_entry_segment:
        return "left the entry segment"
    if exits.goal_event is not None and contact.goal_reached:
        goal = exits.goal_event + (f" {exits.goal_name}" if exits.goal_name else "")
        return f"goal reached ({goal})"
    return None


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="minutes")


def decide(
    sequence: SequenceDef,
    enrolment: EnrolmentFacts,
    contact: ContactFacts,
    now: datetime,
    recent_sends: Sequence[datetime] = (),
    caps: Caps = Caps(),
) -> Decision:
    """The next thing the enrolment does; exits are checked first, before every step.

    Waits count from when their step fell due (`enrolment.due_at`), so steps
    that fell due while nothing ran are caught up in order, each once. Sends
    are postponed, never skipped, to the first moment the send window and the
    frequency cap (over `recent_sends`: the contact's sequence messages of the
    last 7 days, queued or sent) both allow.
    """
    position = enrolment.position
    due = min(enrolment.due_at, now)
    reason = exit_reason(sequence.exits, contact)
    if reason:
        return Decision("exited", position, now, detail=reason)
    if position >= len(sequence.steps) or sequence.steps[position].kind == "end":
        return Decision("completed", position, now)
    step = sequence.steps[position]
    if step.kind == "send":
        at = earliest_send(now, contact.zone, sequence.window, recent_sends, caps)
        if at > now:
            capped = cap_clears(recent_sends, now, caps) > now
            why = "frequency cap" if capped else "send window"
            return Decision("postponed", position, at, step.template, f"until {_stamp(at)} ({why})")
        return Decision("sent", position + 1, now, step.template, step.template or "")
    if step.kind == "wait":
        if step.until is not None:
            end = next_wall_time(due, contact.zone, step.until)
        else:
            end = due + timedelta(seconds=step.seconds or 0)
        return Decision("waited", position + 1, end.astimezone(UTC), detail=f"until {_stamp(end)}")
    return _branch(sequence, step, position, enrolment.last_message, due, now)


def _branch(
    sequence: SequenceDef,
    step: Step,
    position: int,
    message: MessageFacts | None,
    due: datetime,
    now: datetime,
) -> Decision:
    def to(index: int | None) -> str:
        if index is None or index >= len(sequence.steps):
            return "end"
        return sequence.steps[index].name or f"step {index + 1}"

    assert step.then is not None and step.otherwise is not None
    if message is None or message.status in UNDELIVERED:
        why = "no previous message" if message is None else f"previous message {message.status}"
        return Decision("branched", step.otherwise, now, detail=f"{why} → {to(step.otherwise)}")
    start = message.sent_at or message.queued_at
    deadline = start + timedelta(seconds=step.within or 0)
    if step.on == "clicked":
        hit = message.clicked_at
    else:  # a click is also an open, even when the pixel was never loaded
        hit = min((t for t in (message.opened_at, message.clicked_at) if t), default=None)
    if hit is not None and hit <= deadline:
        at = min(max(due, hit), now)
        return Decision("branched", step.then, at, detail=f"{step.on} → {to(step.then)}")
    if now >= deadline:
        return Decision(
            "branched",
            step.otherwise,
            max(due, deadline),
            detail=f"not {step.on} within {format_duration(step.within or 0)} → "
            f"{to(step.otherwise)}",
        )
    return Decision(
        "waited", position, deadline, detail=f"for a human {step.on[:-2]} until {_stamp(deadline)}"
    )


# --- Who may enter ---------------------------------------------------------------------


@dataclass(frozen=True)
class PastEnrolment:
    """An earlier (or the current) enrolment of the contact in the same sequence."""

    status: str
    ended_at: datetime | None = None


def entry_refusal(
    reentry: str, reentry_days: int | None, history: Sequence[PastEnrolment], now: datetime
) -> str | None:
    """Why the contact may not be enrolled now under the re-entry policy, or None."""
    if any(past.status == "active" for past in history):
        return "already active in this sequence"
    if not history or reentry == "after_exit":
        return None
    if reentry == "never":
        return "was enrolled before (re-entry: never)"
    ended = [past.ended_at for past in history if past.ended_at is not None]
    if ended and max(ended) + timedelta(days=reentry_days or 0) > now:
        return (
            f"left on {max(ended).date().isoformat()}; may re-enter {reentry_days} days after that"
        )
    return None
