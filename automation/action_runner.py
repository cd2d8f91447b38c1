"""The I/O of the queued actions: claim a run, execute it, record the outcome."""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import select, update

from automation import mailer, webhooks
from automation.notify import Reason, owner_notification
from automation.sequence_runner import enrol, load_sequence, refusal
from tracker.automation_models import ActionRun, PointsEntry, ScoringRule, Threshold, Webhook
from tracker.db import db
from tracker.models import Contact, Event, User, utcnow

RUNS = ActionRun.__table__


def claim(run_id: int) -> dict[str, Any] | None:
    """Mark a queued run as running (one attempt more); None when it is not queued."""
    with db.engine.begin() as conn:
        claimed = conn.execute(
            update(RUNS)
            .where(RUNS.c.id == run_id, RUNS.c.status == "queued")
            .values(status="running", attempts=RUNS.c.attempts + 1)
        ).rowcount
        if claimed != 1:
            return None
        return dict(conn.execute(select(RUNS).where(RUNS.c.id == run_id)).mappings().one())


def finish(
    run_id: int, ok: bool, error: str | None = None, final: bool = False, status: str | None = None
) -> None:
    """Record the outcome: done (or `status`), queued again for a retry, or failed for good."""
    status = status or ("done" if ok else ("failed" if final else "queued"))
    with db.engine.begin() as conn:
        conn.execute(
            update(RUNS)
            .where(RUNS.c.id == run_id)
            .values(
                status=status,
                last_error=error[:2000] if error else None,
                done_at=utcnow() if ok or final else None,
            )
        )


def _action(run: dict[str, Any]) -> tuple[Threshold, dict[str, Any]]:
    threshold = db.session.get(Threshold, run["threshold_id"])
    return threshold, threshold.actions[run["position"]]


def execute(run: dict[str, Any]) -> tuple[str, str | None]:
    """Do what the run's action says; return (status, note), or raise to have it retried."""
    try:
        threshold, action = _action(run)
        contact = db.session.get(Contact, run["contact_id"])
        if action["type"] == "notify_owner":
            return "done", _notify_owner(contact, threshold)
        if action["type"] == "webhook":
            return "done", _call_webhook(run, contact, threshold, action["webhook"])
        if action["type"] == "enrol":
            return "done", _enrol(contact, threshold, action["sequence"])
        return "failed", f"unknown action {action['type']!r}"
    finally:
        db.session.remove()


def _enrol(contact: Contact, threshold: Threshold, name: str) -> str | None:
    """Enrol the contact in the named sequence; a note says why it was not, if it was not."""
    now = utcnow()
    with db.engine.begin() as conn:
        sequence = load_sequence(conn, name)
        if sequence is None:
            return f"no sequence named {name!r}"
        if enrol(conn, [contact.id], sequence, f"threshold {threshold.name}", now):
            return None
        return f"not enrolled in {name!r}: {refusal(conn, contact.id, sequence, now)}"


def _reasons(contact_id: int, limit: int = 10) -> list[Reason]:
    rows = db.session.execute(
        select(
            ScoringRule.name,
            PointsEntry.delta,
            Event.type,
            Event.path,
            Event.query,
            Event.name,
            PointsEntry.created_at,
        )
        .join(ScoringRule, ScoringRule.id == PointsEntry.rule_id)
        .outerjoin(Event, Event.id == PointsEntry.event_id)
        .where(PointsEntry.contact_id == contact_id)
        .order_by(PointsEntry.created_at.desc(), PointsEntry.id.desc())
        .limit(limit)
    ).all()
    return [
        Reason(rule, delta, kind, path or query or name, at)
        for rule, delta, kind, path, query, name, at in rows
    ]


def _contact_dict(contact: Contact) -> dict[str, Any]:
    return {
        k: getattr(contact, k)
        for k in (
            "id",
            "email",
            "first_name",
            "last_name",
            "company",
            "stage",
            "engagement_score",
            "fit_score",
        )
    }


def _notify_owner(contact: Contact, threshold: Threshold) -> str | None:
    if contact.owner_id is None:
        return "no owner to notify (add an assign_owner action before notify_owner)"
    owner = db.session.get(User, contact.owner_id)
    config = current_app.config
    message = owner_notification(
        _contact_dict(contact),
        {"name": owner.name, "email": owner.email},
        threshold.name,
        _reasons(contact.id),
        config["MAIL_FROM"],
        config["BASE_URL"],
    )
    mailer.send(message, config["SMTP_URL"] or None)  # no SMTP_URL: kept in the outbox table
    return None


def _call_webhook(
    run: dict[str, Any], contact: Contact, threshold: Threshold, name: str
) -> str | None:
    hook = db.session.scalar(select(Webhook).where(Webhook.name == name))
    if hook is None:
        return f"no webhook named {name!r}"
    if hook.disabled_at is not None:
        return f"webhook {name!r} is disabled after repeated failures"
    payload = {
        "event": "threshold.crossed",
        "threshold": threshold.name,
        "contact": {
            **_contact_dict(contact),
            "owner_id": contact.owner_id,
            "score": contact.engagement_score + contact.fit_score,
        },
        "firing": run["firing"],
    }
    table = Webhook.__table__
    try:
        webhooks.deliver(hook.url, hook.secret, payload, f"action-run-{run['id']}")
    except webhooks.WebhookFailed:
        failures = hook.failures + 1
        with db.engine.begin() as conn:
            conn.execute(
                update(table)
                .where(table.c.id == hook.id)
                .values(
                    failures=failures,
                    disabled_at=utcnow() if failures >= webhooks.DISABLE_AFTER_FAILURES else None,
                )
            )
        raise
    if hook.failures:
        with db.engine.begin() as conn:
            conn.execute(update(table).where(table.c.id == hook.id).values(failures=0))
    return None
