"""A full segment rebuild, with the thresholds that depend on membership."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Connection, update

from automation.points import ScoringResult, load_rulebook, run_thresholds
from automation.segments import Refresh, SegmentDef, refresh
from automation.sequence_runner import enrol_joined
from tracker.automation_models import Segment
from tracker.models import utcnow


def rebuild(
    conn: Connection,
    segment_ids: Iterable[int] | None = None,
    progress: Callable[[SegmentDef, int, int], None] | None = None,
) -> tuple[Refresh, list[int]]:
    """Refresh membership for everyone; return who moved and the action runs left queued."""
    now = utcnow()
    only = list(segment_ids) if segment_ids is not None else None
    moved = refresh(conn, now, only=only, progress=progress)
    enrol_joined(conn, moved.joined, now)
    table = Segment.__table__
    done = list(moved.joined) or []
    if done:
        conn.execute(update(table).where(table.c.id.in_(done)).values(rebuilt_at=now))
    result = ScoringResult()
    run_thresholds(conn, load_rulebook(conn), moved.contacts, now, result)
    return moved, result.queued_runs
