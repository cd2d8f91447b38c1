"""Operator commands for the closed-loop reports."""

from __future__ import annotations

from datetime import date, datetime

import click
from flask.cli import AppGroup

reports_cli = AppGroup("reports", help="Closed-loop reports: campaign ROI.")


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError as e:
        raise click.BadParameter(
            f"{value!r} is not a date: write it as YYYY-MM-DD", param_hint=name
        ) from e


@reports_cli.command("roi")
@click.option(
    "--model",
    type=click.Choice(["first", "last", "linear"]),
    default="linear",
    show_default=True,
    help="Attribution model: first touch, last touch, or linear multi-touch.",
)
@click.option(
    "--from", "from_", metavar="DATE", help="First day (YYYY-MM-DD, UTC); default: no limit."
)
@click.option("--to", metavar="DATE", help="Last day, included; default: no limit.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (raw numbers) instead of a table.")
def reports_roi(model: str, from_: str | None, to: str | None, as_csv: bool) -> None:
    """Per campaign: visitors, leads, MQLs, opportunities, revenue, cost and ROI."""
    from automation.report_tables import csv_text, human, percent
    from automation.reports import ROI_COLUMNS, Period, roi_cells, roi_report
    from tracker.cli import printable

    try:
        period = Period(_day(from_, "--from"), _day(to, "--to"))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--to") from e
    report = roi_report(model, period)
    if report.waiting:
        click.echo(_catching_up(report.waiting), err=True)
    if as_csv:
        click.echo(csv_text(ROI_COLUMNS, (roi_cells(r) for r in report.rows)), nl=False)
        return
    lines = [list(ROI_COLUMNS)]
    for row in report.rows:
        cells = roi_cells(row)
        # Campaign names are typed by marketers: no terminal escapes.
        lines.append([printable(human(c)) for c in cells[:-1]] + [percent(cells[-1])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(ROI_COLUMNS))]
    for line in lines:
        click.echo(
            "  ".join(
                cell.ljust(width) if i < 2 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )


def _catching_up(waiting: int) -> str:
    return (
        f"note: {waiting} contact(s) wait for their campaign credit to be recomputed; the "
        "figures will move (a worker does it every minute; `reports attribute` does it now)."
    )


@reports_cli.command("attribute")
@click.option(
    "--all", "everyone", is_flag=True, help="Recompute every contact, not only those marked."
)
def reports_attribute(everyone: bool) -> None:
    """Recompute the stored campaign credit the ROI report sums, now.

    The scheduler's job does this every minute for contacts whose conversions or
    touches changed, and for everyone after a campaign's codes, emails or
    sequences changed; this runs it to the end, with a progress bar.
    """
    from automation import attribution_store as store
    from tracker.db import db

    try:
        with db.engine.begin() as conn:
            if everyone:
                store.mark_all(conn)
            total = store.pending(conn)
        with click.progressbar(length=max(total, 1), label="Attributing") as bar:
            done = 0
            while True:
                step = store.refresh(db.engine, seconds=0)
                done += step
                bar.update(min(step, bar.length - bar.pos))
                if not step:
                    break
            bar.update(bar.length - bar.pos)
    finally:
        db.session.remove()
    click.echo(f"Recomputed the campaign credit of {done} contact(s).")


@reports_cli.command("rollup")
@click.option(
    "--from",
    "from_",
    metavar="DATE",
    help="First day (YYYY-MM-DD, UTC); default: the first event's.",
)
@click.option("--to", metavar="DATE", help="Last day, included; default: today.")
def reports_rollup(from_: str | None, to: str | None) -> None:
    """Rebuild the dashboard's daily rollups for a range of days from the raw tables.

    Days whose raw events the retention setting deleted lose their event counts.
    """
    from automation.rollups import event_days, rebuild
    from tracker.db import db
    from tracker.models import utcnow

    first, last = _day(from_, "--from"), _day(to, "--to")
    try:
        with db.engine.begin() as conn:
            span = event_days(conn)
            first = first or (span[0] if span else utcnow().date())
            last = last or utcnow().date()
            if last < first:
                raise click.BadParameter("the range ends before it starts", param_hint="--to")
            with click.progressbar(length=1, label=f"Rolling up {first}..{last}") as bar:

                def progress(done: int, total: int) -> None:
                    bar.length = max(total, 1)
                    bar.update(done - bar.pos)

                rebuild(conn, first, last, progress)
                bar.update(bar.length - bar.pos)
    finally:
        db.session.remove()
    click.echo(f"Rolled up {(last - first).days + 1} day(s): {first}..{last}.")
