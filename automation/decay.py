"""Score decay, as HubSpot does it: points expire after a window, or the score fades by
a percentage every N days. Pure: policies and numbers in, decisions out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

EXPIRE, PERCENT = "expire", "percent"


class DecayError(ValueError):
    """A decay policy that cannot work as written."""


@dataclass(frozen=True)
class DecayPolicy:
    """Expire engagement points older than `window_days`, or drop `percent` every `every_days`."""

    id: int
    name: str
    mode: str
    site_id: int | None = None
    window_days: int | None = None
    percent: int | None = None
    every_days: int | None = None
    last_run_at: datetime | None = None


def make_policy(
    id: int,
    name: str,
    *,
    site_id: int | None = None,
    expire_after_days: int | None = None,
    drop_percent: int | None = None,
    every_days: int | None = None,
    last_run_at: datetime | None = None,
) -> DecayPolicy:
    """Build a policy: either expire_after_days, or drop_percent with every_days."""

    def whole(value: object, label: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise DecayError(f"{label} must be a whole number from {low} to {high}, not {value!r}")
        return value

    if expire_after_days is not None:
        if drop_percent is not None or every_days is not None:
            raise DecayError(
                "a policy either expires points (expire_after_days) or drops a "
                "percentage (drop_percent, every_days), not both"
            )
        return DecayPolicy(
            id,
            name,
            EXPIRE,
            site_id,
            window_days=whole(expire_after_days, "expire_after_days", 1, 3650),
            last_run_at=last_run_at,
        )
    if drop_percent is None or every_days is None:
        raise DecayError("give expire_after_days, or drop_percent together with every_days")
    return DecayPolicy(
        id,
        name,
        PERCENT,
        site_id,
        percent=whole(drop_percent, "drop_percent", 1, 100),
        every_days=whole(every_days, "every_days", 1, 3650),
        last_run_at=last_run_at,
    )


def expiry_cutoff(policy: DecayPolicy, now: datetime) -> datetime:
    """Points awarded before this moment have expired."""
    return now - timedelta(days=policy.window_days or 0)


def percent_due(policy: DecayPolicy, now: datetime) -> bool:
    """True when a percentage policy has not run for `every_days`."""
    return policy.last_run_at is None or now - policy.last_run_at >= timedelta(
        days=policy.every_days or 0
    )


def percent_drop(score: int, percent: int) -> int:
    """The (negative) change of a positive engagement score; half a point rounds up."""
    if score <= 0:
        return 0
    return -int(score * percent / 100 + 0.5)
