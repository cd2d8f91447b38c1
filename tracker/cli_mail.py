"""Operator commands for mail: send a template as a test, list the local outbox."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from tracker.db import db

mail_cli = AppGroup("mail", help="Email templates: send one as a test.")
outbox_cli = AppGroup("outbox", help="Mail kept in the database when no SMTP_URL is set.")


@mail_cli.command("test")
@click.argument("template")
@click.option("--to", "to_addr", required=True, help="Where to send the test.")
@click.option(
    "--contact",
    "contact_email",
    default=None,
    help="Personalise with this contact's data (default: the contact with the --to address, "
    "else sample data).",
)
@click.option("--variant", default=None, help="Which variant (default: the first).")
def mail_test(template: str, to_addr: str, contact_email: str | None, variant: str | None) -> None:
    """Render TEMPLATE and send it now, through SMTP or into the outbox."""
    from tracker.admin.config_templates import PreviewError, send_test

    try:
        click.echo(send_test(template, to_addr, contact_email or "", variant or ""))
    except PreviewError as e:
        raise click.ClickException(str(e)) from e
    if not current_app.config["SMTP_URL"]:
        click.echo("see it with: flask --app wsgi outbox list")


@outbox_cli.command("list")
@click.option("--limit", default=50, show_default=True, help="How many, newest first.")
def outbox_list(limit: int) -> None:
    """List kept messages, newest first: id, time, to, subject."""
    from tracker.cli import printable
    from tracker.email_models import OutboxMessage

    rows = db.session.execute(
        select(
            OutboxMessage.id, OutboxMessage.created_at, OutboxMessage.to_addr, OutboxMessage.subject
        )
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    ).all()
    for id_, at, to, subject in rows:
        click.echo(f"{id_}\t{at:%Y-%m-%d %H:%M:%S}\t{printable(to)}\t{printable(subject)}")
    if not rows:
        click.echo("the outbox is empty")
