"""Operator commands for mail: send a template as a test, list the local outbox."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select, update

from tracker.db import db
from tracker.models import Contact
from tracker.payload import normalise_email

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
    from automation.mailer import SendFailed
    from automation.outgoing import UnknownTemplate, create_messages, current_version
    from automation.sending import send_batch, send_preview, settings_from
    from tracker.email_models import Message
    from tracker.redis_conn import get_redis

    try:
        to = normalise_email(to_addr)
    except Exception as e:
        raise click.BadParameter(str(e), param_hint="--to") from e
    lookup = normalise_email(contact_email) if contact_email else to
    contact_id = db.session.scalar(select(Contact.id).where(Contact.email == lookup))
    if contact_email and contact_id is None:
        raise click.ClickException(f"no contact has the email {contact_email!r}")
    config = current_app.config
    try:
        with db.engine.begin() as conn:
            version = current_version(conn, template)
            chosen = variant or version.variants[0]
            if chosen not in version.variants:
                raise click.ClickException(
                    f"template {template!r} has no variant {chosen!r} "
                    f"(it has {', '.join(version.variants)})"
                )
            if contact_id is None:
                try:
                    outcome = send_preview(
                        conn, version.version_id, chosen, to, settings_from(config)
                    )
                except SendFailed as e:
                    raise click.ClickException(f"not sent: {e.text}") from e
                click.echo(f"sent {template!r} ({chosen}) to {to} with sample data: {outcome}")
                return
            (message_id,) = create_messages(
                conn, version.template_id, [{"contact_id": contact_id}], kind="test", variant=chosen
            )
            conn.execute(update(Message).where(Message.id == message_id).values(to_addr=to))
    except UnknownTemplate as e:
        raise click.ClickException(str(e)) from e
    counts = send_batch(db.engine, get_redis(), [message_id], settings_from(config))
    outcome = next((k for k, v in counts.items() if v), "not sent")
    where = "the outbox (flask --app wsgi outbox list)" if not config["SMTP_URL"] else "SMTP"
    click.echo(f"message {message_id}: {outcome} via {where}, with {lookup}'s data")
    if outcome != "sent":
        error = db.session.scalar(select(Message.error).where(Message.id == message_id))
        raise click.ClickException(f"not sent: {error}")


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
