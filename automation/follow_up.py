"""Follow-up health: how quickly sales acts on MQLs, from (became MQL, first action) pairs.

An MQL counts as followed up on time when its first lead action came within the
allowed hours. An MQL still inside its allowance with no action yet is neither on
time nor late: it is pending and left out of the share, so a lead that turned MQL
five minutes ago does not drag the figure down. Pure: the page gathers the pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median

WINDOW_DAYS = 30
"""Follow-up health looks at MQLs of this many days back."""


@dataclass(frozen=True)
class Health:
    """The follow-up figures of a set of MQLs."""

    mqls: int  # became MQL inside the window
    on_time: int  # first action within the allowance
    late: int  # acted on after the allowance, or not at all with the allowance over
    pending: int  # no action yet, allowance not over
    untouched: int  # no action at all (pending ones included)
    share_on_time: float | None  # on_time / (on_time + late); None when both are 0
    median_hours_to_action: float | None  # over those acted on; None when none was

    @property
    def percent_on_time(self) -> str:
        """The share as a whole percentage for a page, or a dash."""
        return "-" if self.share_on_time is None else f"{round(self.share_on_time * 100)} %"


def follow_up_health(
    pairs: Iterable[tuple[datetime, datetime | None]],
    now: datetime,
    hours: float,
    window_days: int = WINDOW_DAYS,
) -> Health:
    """Figures for the MQLs that became MQL within `window_days` before `now`.

    Each pair is (when the contact became MQL, its first lead action since, or None).
    """
    allowance = timedelta(hours=hours)
    since = now - timedelta(days=window_days)
    mqls = on_time = late = pending = untouched = 0
    waits: list[float] = []
    for mql_at, acted_at in pairs:
        if mql_at < since or mql_at > now:
            continue
        mqls += 1
        if acted_at is None:
            untouched += 1
            if now - mql_at <= allowance:
                pending += 1
            else:
                late += 1
            continue
        wait = max(acted_at - mql_at, timedelta(0))
        waits.append(wait.total_seconds() / 3600)
        if wait <= allowance:
            on_time += 1
        else:
            late += 1
    decided = on_time + late
    return Health(
        mqls=mqls,
        on_time=on_time,
        late=late,
        pending=pending,
        untouched=untouched,
        share_on_time=on_time / decided if decided else None,
        median_hours_to_action=median(waits) if waits else None,
    )
