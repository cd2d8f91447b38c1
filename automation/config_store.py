"""Write a checked rules file to the database by name, and read it back out as YAML."""

from __future__ import annotations

from typing import Any

import yaml
from sqlalchemy import Connection, or_, select

from automation.broadcasts import apply_specs as apply_broadcasts
from automation.broadcasts import export_specs as export_broadcasts
from automation.bulk import insert_rows
from automation.config_file import AutomationSpec, ConfigFileError
from automation.segment_rules import SegmentError
from automation.segments import SegmentDef, dependency_order
from automation.sequence_config import apply_sequences, export_sequences
from automation.template_source import export_templates, save_template
from tracker.automation_models import DecayPolicy, ScoringRule, Segment, Threshold, Webhook
from tracker.db import take_write_lock
from tracker.models import Site, utcnow


def _site_ids(conn: Connection, spec: AutomationSpec, filename: str) -> dict[str, int]:
    referring = [*spec.rules, *spec.decay]
    wanted = {r.site for r in referring if r.site}
    found: dict[str, int] = {}
    problems = []
    for ref in sorted(wanted):
        site_id = conn.execute(
            select(Site.id).where(or_(Site.key == ref, Site.name == ref))
        ).scalar()
        if site_id is None:
            for id_, domains in conn.execute(select(Site.id, Site.domains)):
                if ref.lower() in (domains or []):
                    site_id = id_
        if site_id is None:
            line = next(r.line for r in referring if r.site == ref)
            problems.append(f"{filename}:{line}: no site has the key, name or domain {ref!r}")
        else:
            found[ref] = site_id
    if problems:
        raise ConfigFileError(problems)
    return found


def _segments(conn: Connection, spec: AutomationSpec, filename: str, now: Any) -> list[int]:
    """Write the file's segments; return the ids whose rules are new or changed."""
    existing = {
        name: (id_, rules)
        for id_, name, rules in conn.execute(select(Segment.id, Segment.name, Segment.rules))
    }
    stored = [
        SegmentDef(id_, name, rules)
        for name, (id_, rules) in existing.items()
        if name not in {s.name for s in spec.segments}
    ]
    stored += [SegmentDef(0, s.name, s.match) for s in spec.segments]
    try:
        dependency_order(stored)
    except SegmentError as e:
        line = spec.segments[0].line if spec.segments else 1
        raise ConfigFileError([f"{filename}:{line}: {e}"]) from e
    changed = [s for s in spec.segments if s.name not in existing or existing[s.name][1] != s.match]
    written = insert_rows(
        conn,
        Segment.__table__,
        [{"name": s.name, "rules": s.match, "updated_at": now} for s in changed],
        conflict=("name",),
        update={"rules": "new", "updated_at": "new"},
        returning=("id",),
    )
    return [id_ for (id_,) in written]


def _segment_ids(conn: Connection, spec: AutomationSpec, filename: str) -> dict[str, int]:
    found, problems = {}, []
    for threshold in spec.thresholds:
        if threshold.segment:
            segment_id = conn.execute(
                select(Segment.id).where(Segment.name == threshold.segment)
            ).scalar()
            if segment_id is None:
                problems.append(
                    f"{filename}:{threshold.line}: no segment named {threshold.segment!r}"
                )
            else:
                found[threshold.segment] = segment_id
    webhooks = {w.name for w in spec.webhooks} | set(conn.execute(select(Webhook.name)).scalars())
    for threshold in spec.thresholds:
        for action in threshold.actions:
            if action["type"] == "webhook" and action["webhook"] not in webhooks:
                problems.append(
                    f"{filename}:{threshold.line}: threshold {threshold.name!r}: "
                    f"no webhook named {action['webhook']!r}"
                )
    if problems:
        raise ConfigFileError(problems)
    return found


def apply(conn: Connection, spec: AutomationSpec, filename: str = "<rules>") -> dict[str, Any]:
    """Create or update (by name) everything in `spec`, in the caller's transaction.

    The result's "changed segments" lists the ids whose membership must be rebuilt.
    """
    # What is read below decides what is written (a sequence's old steps, its enrolments'
    # new places): on SQLite nobody may commit in between.
    take_write_lock(conn)
    sites = _site_ids(conn, spec, filename)
    now = utcnow()
    changed_segments = _segments(conn, spec, filename, now)
    segments = _segment_ids(conn, spec, filename)
    insert_rows(
        conn,
        Webhook.__table__,
        [{"name": w.name, "url": w.url, "secret": w.secret, "failures": 0} for w in spec.webhooks],
        conflict=("name",),
        update={"url": "new", "secret": "new"},
    )
    insert_rows(
        conn,
        ScoringRule.__table__,
        [
            {
                "name": r.name,
                "kind": r.kind,
                "event_type": r.event_type,
                "site_id": sites.get(r.site) if r.site else None,
                "conditions": r.conditions,
                "points": r.points,
                "max_times": r.max_times,
                "once_per_seconds": r.once_per_seconds,
                "first_time_only": r.first_time_only,
                "enabled": r.enabled,
                "updated_at": now,
            }
            for r in spec.rules
        ],
        conflict=("name",),
        update={
            c: "new"
            for c in (
                "kind",
                "event_type",
                "site_id",
                "conditions",
                "points",
                "max_times",
                "once_per_seconds",
                "first_time_only",
                "enabled",
                "updated_at",
            )
        },
    )
    insert_rows(
        conn,
        Threshold.__table__,
        [
            {
                "name": t.name,
                "score": t.score,
                "minimum": t.minimum,
                "segment_id": segments.get(t.segment) if t.segment else None,
                "stage": t.stage,
                "refire": t.refire,
                "actions": t.actions,
                "enabled": t.enabled,
                "updated_at": now,
            }
            for t in spec.thresholds
        ],
        conflict=("name",),
        update={
            c: "new"
            for c in (
                "score",
                "minimum",
                "segment_id",
                "stage",
                "refire",
                "actions",
                "enabled",
                "updated_at",
            )
        },
    )
    insert_rows(
        conn,
        DecayPolicy.__table__,
        [
            {
                "name": d.name,
                "site_id": sites.get(d.site) if d.site else None,
                "mode": "expire" if d.expire_after_days else "percent",
                "window_days": d.expire_after_days,
                "percent": d.drop_percent,
                "every_days": d.every_days,
                "enabled": d.enabled,
            }
            for d in spec.decay
        ],
        conflict=("name",),
        update={
            c: "new" for c in ("site_id", "mode", "window_days", "percent", "every_days", "enabled")
        },
    )
    for template in spec.templates:  # unchanged content writes no new version
        save_template(conn, template.name, template.spec, now)
    # Sequences name templates and segments, and thresholds enrol into sequences.
    apply_sequences(conn, spec, filename)
    # Last: broadcasts name templates and segments, which the steps above may have written.
    apply_broadcasts(conn, spec.broadcasts, filename)
    return {
        "segments": len(spec.segments),
        "rules": len(spec.rules),
        "thresholds": len(spec.thresholds),
        "webhooks": len(spec.webhooks),
        "decay policies": len(spec.decay),
        "templates": len(spec.templates),
        "sequences": len(spec.sequences),
        "broadcasts": len(spec.broadcasts),
        "changed segments": changed_segments,
    }


def export(conn: Connection, secrets: bool = False) -> str:
    """Everything configured, as a rules file that `automation load` takes back.

    Webhook secrets are masked unless `secrets`.
    """
    sites = dict(conn.execute(select(Site.id, Site.key)).all())
    segments = dict(conn.execute(select(Segment.id, Segment.name)).all())
    rules: list[dict[str, Any]] = []
    for r in conn.execute(select(ScoringRule.__table__).order_by(ScoringRule.id)):
        rule = {
            "name": r.name,
            "kind": r.kind,
            "event": r.event_type,
            "site": sites.get(r.site_id),
            "when": r.conditions or None,
            "points": r.points,
            "max_times": r.max_times,
            "once_per": r.once_per_seconds,
            "first_time_only": r.first_time_only or None,
            "enabled": None if r.enabled else False,
        }
        rules.append({k: v for k, v in rule.items() if v is not None})
    thresholds = []
    for t in conn.execute(select(Threshold.__table__).order_by(Threshold.id)):
        threshold = {
            "name": t.name,
            "score": t.score,
            "at_least": t.minimum,
            "segment": segments.get(t.segment_id),
            "stage": t.stage,
            "refire": t.refire or None,
            "actions": t.actions or None,
            "enabled": None if t.enabled else False,
        }
        thresholds.append({k: v for k, v in threshold.items() if v is not None})
    webhooks = [
        {"name": w.name, "url": w.url, "secret": w.secret if secrets else "(hidden)"}
        for w in conn.execute(select(Webhook.__table__).order_by(Webhook.id))
    ]
    decay = []
    for d in conn.execute(select(DecayPolicy.__table__).order_by(DecayPolicy.id)):
        policy = {
            "name": d.name,
            "site": sites.get(d.site_id),
            "expire_after_days": d.window_days,
            "drop_percent": d.percent,
            "every_days": d.every_days,
            "enabled": None if d.enabled else False,
        }
        decay.append({k: v for k, v in policy.items() if v is not None})
    segment_list = [
        {"name": name, "match": rules}
        for name, rules in conn.execute(select(Segment.name, Segment.rules).order_by(Segment.id))
    ]
    document = {
        "segments": segment_list,
        "rules": rules,
        "thresholds": thresholds,
        "webhooks": webhooks,
        "decay": decay,
        "templates": export_templates(conn),
        "sequences": export_sequences(conn),
        "broadcasts": export_broadcasts(conn),
    }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
