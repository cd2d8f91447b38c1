"""Operator commands for broadcasts and A/B reports: `broadcasts …`, `templates stats`."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from tracker.db import db

broadcasts_cli = AppGroup("broadcasts", help="One-off sends to a segment, A/B tested first.")
templates_cli = AppGroup("templates", help="Email templates: how their variants do.")

REPORT_SEED = 0
"""Seed of the draws behind "chance best", so the same counts always print the same chances."""


def _safe(text: Any) -> str:
    """Marketer-typed text made safe for a terminal (control characters shown as ?)."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in lines
    ]


def variant_table(
    variants: Mapping[str, Any],
    chances: Mapping[str, float] | None = None,
    winner: str | None = None,
) -> list[str]:
    """Lines of a per-variant table: sends, human and machine opens and clicks, rates."""
    headers = [
        "variant",
        "messages",
        "sent",
        "human opens",
        "machine opens",
        "human clicks",
        "machine clicks",
        "open rate",
        "click rate",
    ]
    if chances is not None:
        headers.append("chance best")
    rows = []
    for name, c in variants.items():
        label = _safe(name) + (" (winner)" if name == winner else "")
        row = [
            label,
            str(c.messages),
            str(c.sends),
            str(c.human_opens),
            str(c.machine_opens),
            str(c.human_clicks),
            str(c.machine_clicks),
            _percent(c.human_opens, c.sends),
            _percent(c.human_clicks, c.sends),
        ]
        if chances is not None:
            row.append(f"{100 * chances.get(name, 0.0):.1f}%")
        rows.append(row)
    return _table(headers, rows)


def _dispatch(message_ids: list[int]) -> None:
    from automation.outgoing import dispatch
    from tracker.redis_conn import get_redis

    dispatch(get_redis(), message_ids, current_app.config["MAIL_BATCH"])


@broadcasts_cli.command("send")
@click.argument("name")
def broadcasts_send(name: str) -> None:
    """Start a broadcast: its A/B test share now, or everyone when it has no test."""
    from automation.broadcasts import BroadcastError, start
    from automation.outgoing import UnknownTemplate

    try:
        with db.engine.begin() as conn:
            started = start(conn, name)
    except (BroadcastError, UnknownTemplate) as e:
        raise click.ClickException(f"{e}; nothing was sent") from e
    finally:
        db.session.remove()
    _dispatch(started.message_ids)
    if started.status == "testing":
        split = ", ".join(f"{n} get {_safe(v)}" for v, n in sorted(started.test.items()))
        rest = started.audience - sum(started.test.values())
        click.echo(
            f"broadcast {_safe(name)!r}: A/B test queued for {sum(started.test.values())} of "
            f"{started.audience} contacts ({split})"
        )
        click.echo(
            f"the winner is picked at {_when(started.decide_at)} and sent to the other "
            f"{rest} (and anyone who joins the audience until then)"
        )
    else:
        click.echo(
            f"broadcast {_safe(name)!r}: {len(started.message_ids)} messages queued "
            f"for {started.audience} contacts"
        )
    if started.note:
        click.echo(f"note: {started.note}")


@broadcasts_cli.command("decide")
@click.argument("name")
def broadcasts_decide(name: str) -> None:
    """Pick a testing broadcast's winner now, without waiting for the test period to end."""
    from automation.broadcasts import BroadcastError, decide_now
    from automation.outgoing import UnknownTemplate

    try:
        with db.engine.begin() as conn:
            decided = decide_now(conn, name)
    except (BroadcastError, UnknownTemplate) as e:
        raise click.ClickException(str(e)) from e
    finally:
        db.session.remove()
    _dispatch(decided.message_ids)
    click.echo(
        f"broadcast {_safe(name)!r}: {_safe(decided.winner)} wins by {decided.metric} rate; "
        f"{len(decided.message_ids)} messages queued for the rest of the audience"
    )


@broadcasts_cli.command("show")
@click.argument("name", required=False)
def broadcasts_show(name: str | None) -> None:
    """List broadcasts, or show one: status, audience, each variant's results, the winner."""
    from automation.broadcasts import BroadcastError, format_duration, listing, report

    with db.engine.connect() as conn:
        if name is None:
            rows = listing(conn)
            if not rows:
                click.echo("no broadcasts yet: add them under `broadcasts:` in a rules file")
            for row in rows:
                click.echo(
                    "\t".join(
                        _safe(v)
                        for v in (
                            row["id"],
                            row["name"],
                            row["status"],
                            f"template {row['template']}",
                            f"segment {row['segment']}" if row["segment"] else "every contact",
                            f"{row['messages']} messages",
                            f"winner {row['winner']}" if row["winner"] else "",
                        )
                    ).rstrip()
                )
            return
        try:
            shown = report(conn, name)
        except BroadcastError as e:
            raise click.ClickException(str(e)) from e
    segment = f"segment {_safe(shown['segment'])!r}" if shown["segment"] else "every contact"
    click.echo(f"broadcast {_safe(shown['name'])!r}: {shown['status']}")
    click.echo(f"  template {_safe(shown['template'])!r} to {segment}")
    click.echo(f"  audience now: {shown['audience']} contacts that may be emailed")
    if shown["test_percent"]:
        click.echo(
            f"  test: {shown['test_percent']}% of the audience, winner by human "
            f"{shown['metric']} rate after {format_duration(shown['decide_after_seconds'] or 0)}"
        )
    click.echo(f"  started: {_when(shown['started_at'])}")
    if shown["decide_at"]:
        click.echo(f"  deciding at: {_when(shown['decide_at'])}")
    if shown["winner"]:
        click.echo(f"  winner: {_safe(shown['winner'])} (decided {_when(shown['decided_at'])})")
    if shown["variants"]:
        for line in variant_table(shown["variants"], winner=shown["winner"]):
            click.echo(f"  {line}")


@templates_cli.command("stats")
@click.argument("name")
def templates_stats(name: str) -> None:
    """Each variant of a template across sequences and broadcasts, and its chance to be best."""
    from sqlalchemy import select

    from automation.broadcasts import variant_counts
    from automation.outgoing import UnknownTemplate, current_version
    from automation.variants import VariantCounts, chance_best
    from tracker.email_models import EmailTemplate

    with db.engine.connect() as conn:
        template_id = conn.execute(
            select(EmailTemplate.id).where(EmailTemplate.name == name)
        ).scalar()
        if template_id is None:
            raise click.ClickException(f"no email template named {name!r}")
        try:
            current = current_version(conn, template_id).variants
        except UnknownTemplate:
            current = []
        counts = variant_counts(conn, template_id=template_id)
    # Variants of the current version first, then those only older versions had.
    variants = {n: counts.get(n, VariantCounts()) for n in current}
    variants.update({n: c for n, c in counts.items() if n not in variants})
    if not variants:
        click.echo(f"template {_safe(name)!r} has no saved version and no messages yet")
        return
    chances = chance_best(
        {n: c.stats("click") for n, c in variants.items()}, rng=random.Random(REPORT_SEED)
    )
    click.echo(f"template {_safe(name)!r}: human clicks per message sent, all versions")
    for line in variant_table(variants, chances):
        click.echo(line)
