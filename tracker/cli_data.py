"""Operator commands for bulk data: import contacts from CSV, purge old events."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

events_cli = AppGroup("events", help="Raw events: retention.")


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--map",
    "choices",
    multiple=True,
    metavar="COLUMN=FIELD",
    help="Map a column (by its header) to email, first_name, last_name, company, stage, "
    "owner, tags, trait:NAME or ignore; repeatable. Unmapped columns are detected by name.",
)
@click.option("--dry-run", is_flag=True, help="Check every row and count, change nothing.")
def contacts_import(path: str, choices: tuple[str, ...], dry_run: bool) -> None:
    """Create or update contacts from a CSV file (deduplicated by email), with a progress bar.

    The import is kept in the history the admin's import page lists (a dry run is not).
    """
    from automation.contact_import import (
        ImportFileError,
        ImportSummary,
        check_mapping,
        decode,
        detect_mapping,
        import_contacts,
        override,
    )
    from automation.dispatch import enqueue_action_runs
    from automation.import_history import (
        ProgressRecorder,
        record_done,
        record_failed,
        record_started,
    )
    from tracker.cli import printable
    from tracker.db import db
    from tracker.models import utcnow
    from tracker.redis_conn import get_redis

    pairs = {}
    for choice in choices:
        column, sep, target = choice.partition("=")
        if not sep or not column.strip():
            raise click.BadParameter(f"{choice!r}: write COLUMN=FIELD", param_hint="--map")
        pairs[column] = target
    try:
        source = decode(Path(path).read_bytes())
        mapping = override(source.headers, detect_mapping(source.headers), pairs)
    except ImportFileError as e:
        raise click.ClickException(f"{path}: {e}") from e
    problems = check_mapping(mapping)
    if problems:
        raise click.ClickException("nothing was imported:\n" + "\n".join(problems))
    for header, target in zip(source.headers, mapping, strict=True):
        click.echo(f"  {printable(header) or '(no name)'} -> {target}")
    engine, name = db.engine, Path(path).name
    summary = ImportSummary()
    token = None if dry_run else record_started(engine, name, 0, utcnow())
    recorder = None if token is None else ProgressRecorder(engine, token, summary)
    with click.progressbar(length=1, label="importing" if not dry_run else "checking") as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)
            if recorder is not None:
                recorder(done, total)

        try:
            _, queued = import_contacts(
                engine,
                source,
                mapping,
                f"import: {name}",
                progress=progress,
                dry_run=dry_run,
                summary=summary,
            )
        except BaseException as e:
            if token is not None:
                failure = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
                record_failed(engine, token, f"{type(e).__name__}: {failure}", utcnow(), recorder)
            if isinstance(e, ImportFileError):
                raise click.ClickException(f"{path}: {e}") from e
            raise
        finally:
            db.session.remove()
    if token is not None:
        record_done(engine, token, summary, utcnow())
    enqueue_action_runs(get_redis(), queued)
    verb = "would be" if dry_run else "were"
    click.echo(
        f"{summary.rows} rows: {summary.created} contacts {verb} created, {summary.updated} "
        f"updated, {summary.unchanged} unchanged; {summary.skipped} rows skipped"
        + (f"; {summary.repeated} repeated an earlier email (merged)" if summary.repeated else "")
    )
    for line, message in summary.problems[:100]:
        click.echo(f"  line {line}: {printable(message)}")
    if summary.skipped > 100:
        click.echo(f"  … and {summary.skipped - 100} more")
    if token is not None:
        click.echo(f"kept in the import history: /admin/import/{token}")


@events_cli.command("purge")
@click.option(
    "--months",
    type=click.IntRange(min=1),
    help="Delete events older than this many months; default RETENTION_MONTHS.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted, delete nothing.")
def events_purge(months: int | None, dry_run: bool) -> None:
    """Delete raw events older than N months that the daily rollups hold (the daily job, now)."""
    from automation.retention import purge_expired_events
    from tracker.db import db
    from tracker.models import utcnow

    months = months or current_app.config["RETENTION_MONTHS"]
    if not months:
        raise click.ClickException(
            "RETENTION_MONTHS is 0 (keep events forever): set it, or pass --months N"
        )
    with click.progressbar(length=0, label="counting" if dry_run else "deleting") as bar:
        try:
            result = purge_expired_events(
                db.engine, months, utcnow(), dry_run=dry_run, progress=bar.update
            )
        finally:
            db.session.remove()
    assert result.cutoff is not None
    when = result.cutoff.isoformat(timespec="seconds")
    if dry_run:
        click.echo(f"{result.deleted} events from before {when} would be deleted")
    else:
        click.echo(
            f"{result.deleted} events from before {when} deleted; "
            f"{result.points_detached} points keep their score without the event"
        )
    if result.uncovered_days:
        days = sorted(result.uncovered_days)
        click.echo(
            f"kept the events of {len(days)} days the daily rollups do not hold "
            f"({days[0]} … {days[-1]}): rebuild them with `reports rollup --from {days[0]} "
            f"--to {days[-1]}`, then purge again"
        )
