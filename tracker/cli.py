"""Operator commands, under `flask --app wsgi …` (or the `closedloop` script)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext
from sqlalchemy import select

from tracker.auth import ROLES
from tracker.cli_broadcasts import broadcasts_cli, templates_cli
from tracker.cli_data import contacts_import, events_cli
from tracker.cli_mail import mail_cli, outbox_cli
from tracker.cli_reports import reports_cli
from tracker.cli_sequences import leads_cli, sequences_cli
from tracker.db import db
from tracker.models import Contact, Event, Site
from tracker.payload import EMAIL_RE, normalise_email
from tracker.sites import create_site

sites_cli = AppGroup("sites", help="Create and list tracked websites.")
contacts_cli = AppGroup("contacts", help="Look up contacts.")
contacts_cli.add_command(contacts_import)
users_cli = AppGroup("users", help="The people leads are handed to (sales) and marketers.")
automation_cli = AppGroup("automation", help="Segments, scoring rules, thresholds, webhooks.")
segments_cli = AppGroup("segments", help="Segment membership: list, rebuild, preview.")


def script_tag(base_url: str, site: Site) -> str:
    """The tag a website pastes into every page."""
    dnt = " data-respect-dnt" if site.respect_dnt else ""
    return f'<script async src="{base_url}/s.js" data-site="{site.key}"{dnt}></script>'


@sites_cli.command("create")
@click.option("--name", required=True, help="What the site is called in reports.")
@click.option(
    "--domain",
    "domains",
    required=True,
    multiple=True,
    help="A domain allowed to send events (subdomains included); repeatable.",
)
@click.option(
    "--respect-dnt", is_flag=True, help="Record nothing from browsers sending DNT or GPC."
)
def sites_create(name: str, domains: tuple[str, ...], respect_dnt: bool) -> None:
    """Create a site and print its key and the script tag to paste."""
    try:
        site = create_site(name, domains, respect_dnt)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--domain") from e
    db.session.commit()
    base = current_app.config["BASE_URL"]
    click.echo(f"site key: {site.key}")
    click.echo("paste this into every page, before </head>:")
    click.echo(script_tag(base, site))
    click.echo(f'<noscript><img src="{base}/p.gif?k={site.key}" alt=""></noscript>')


@sites_cli.command("list")
def sites_list() -> None:
    """List sites with their keys and domains."""
    for site in db.session.scalars(select(Site).order_by(Site.id)):
        click.echo(f"{site.id}\t{site.key}\t{site.name}\t{','.join(site.domains)}")


@contacts_cli.command("show")
@click.argument("email")
def contacts_show(email: str) -> None:
    """Print a contact, its visitors, score, stage and last 50 events as JSON."""
    from tracker.contact_report import contact_report

    report = contact_report(email)
    if report is None:
        raise click.ClickException(f"no contact has the email {email!r}")
    click.echo(json.dumps(report, indent=2, ensure_ascii=False))


def _contact_id(email: str) -> int:
    found = db.session.scalar(select(Contact.id).where(Contact.email == normalise_email(email)))
    if found is None:
        raise click.ClickException(f"no contact has the email {email!r}")
    return found


@contacts_cli.command("export")
@click.argument("email")
def contacts_export(email: str) -> None:
    """Print everything known about a contact as JSON (a data subject's access request)."""
    from tracker.privacy import export_contact

    click.echo(json.dumps(export_contact(_contact_id(email)), indent=2, ensure_ascii=False))


@contacts_cli.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def contacts_erase(email: str, yes: bool) -> None:
    """Delete a contact and everything about it; its opportunities stay, anonymous."""
    from tracker.privacy import erase_contact

    contact_id = _contact_id(email)
    if not yes:
        click.confirm(
            f"Erase {normalise_email(email)} with its events, messages, points and notes for good?",
            abort=True,
        )
    counts = erase_contact(contact_id) or {}
    click.echo(
        "erased: " + ", ".join(f"{table} {count}" for table, count in counts.items() if count)
    )


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", help="Shown in the admin and in emails; default: the email's name part.")
@click.option(
    "--prompt",
    "prompt_password",
    is_flag=True,
    help="Ask for the password instead of generating one (printed once).",
)
def users_create(email: str, role: str, name: str | None, prompt_password: bool) -> None:
    """Add a user who can log in; active salespeople share round-robin assignment."""
    from tracker.auth import MIN_PASSWORD, hash_password, new_password
    from tracker.models import User

    email = normalise_email(email)
    if not EMAIL_RE.fullmatch(email):
        raise click.BadParameter(f"{email!r} is not an email address", param_hint="--email")
    if db.session.scalar(select(User).where(User.email == email)):
        raise click.ClickException(f"a user with the email {email!r} exists already")
    if prompt_password:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        if len(password) < MIN_PASSWORD:
            raise click.ClickException(f"the password needs at least {MIN_PASSWORD} characters")
    else:
        password = new_password()
    name = (name or email.split("@")[0]).strip()[:200]
    db.session.add(User(email=email, name=name, role=role, password_hash=hash_password(password)))
    db.session.commit()
    click.echo(f"created {role} {name} <{email}>")
    if not prompt_password:
        click.echo(f"password (shown once): {password}")


@users_cli.command("list")
def users_list() -> None:
    """List users."""
    from tracker.models import User

    for user in db.session.scalars(select(User).order_by(User.id)):
        state = "" if user.active else "\t(inactive)"
        click.echo(f"{user.id}\t{user.role}\t{user.name} <{user.email}>{state}")


@automation_cli.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def automation_load(path: str) -> None:
    """Create or update (by name) everything in a YAML/JSON rules file, or nothing."""
    from automation.config_file import ConfigFileError, parse
    from automation.config_store import apply
    from automation.sequence_config import steps_edit
    from tracker.admin.configure import TOO_LARGE, UNFIT, ItemRefused, refuse_huge_numbers

    try:
        text = Path(path).read_text(encoding="utf-8")
        refuse_huge_numbers(text)
        spec = parse(text, path)
        with steps_edit() as edit, db.engine.begin() as conn:
            counts = apply(conn, spec, path)
    except ConfigFileError as e:
        raise click.ClickException("nothing was changed:\n" + "\n".join(e.problems)) from e
    except ItemRefused as e:
        raise click.ClickException("nothing was changed:\n" + "\n".join(e.problems)) from e
    except UNFIT as e:
        raise click.ClickException(f"nothing was changed: {TOO_LARGE}") from e
    except UnicodeDecodeError as e:
        raise click.ClickException(f"{path} is not UTF-8 text") from e
    changed = counts.pop("changed segments")
    click.echo(", ".join(f"{n} {what}" for what, n in counts.items()) + " loaded")
    for report in edit.reports:  # where sequences whose steps changed left their people
        click.echo(report.summary() + ".")
    if changed:
        from rq import Queue

        from tracker.redis_conn import get_redis

        Queue("maintenance", connection=get_redis()).enqueue(
            "automation.jobs.rebuild_segments", changed, job_timeout=3600
        )
        click.echo(
            f"{len(changed)} new or changed segments are being rebuilt by a worker "
            "(or now: flask --app wsgi segments rebuild)"
        )


@automation_cli.command("show")
@click.option("--with-secrets", is_flag=True, help="Print webhook secrets instead of hiding them.")
def automation_show(with_secrets: bool) -> None:
    """Print the rules, thresholds and webhooks as a file `automation load` takes back."""
    from automation.config_store import export

    with db.engine.connect() as conn:
        click.echo(export(conn, secrets=with_secrets), nl=False)


@segments_cli.command("list")
def segments_list() -> None:
    """List segments with their member counts and last full rebuild."""
    from tracker.automation_models import Segment, SegmentMember

    counts = dict(
        db.session.execute(
            select(SegmentMember.segment_id, db.func.count()).group_by(SegmentMember.segment_id)
        ).all()
    )
    for segment in db.session.scalars(select(Segment).order_by(Segment.id)):
        rebuilt = (
            segment.rebuilt_at.isoformat(timespec="seconds") if segment.rebuilt_at else "never"
        )
        click.echo(
            f"{segment.id}\t{segment.name}\t{counts.get(segment.id, 0)} members\trebuilt {rebuilt}"
        )


@segments_cli.command("rebuild")
@click.option(
    "--segment",
    "segment_ids",
    type=int,
    multiple=True,
    help="Only this segment id (repeatable); default all.",
)
def segments_rebuild(segment_ids: tuple[int, ...]) -> None:
    """Rebuild membership for everyone now, with a progress bar."""
    from automation.dispatch import enqueue_action_runs
    from automation.segment_jobs import rebuild
    from tracker.redis_conn import get_redis

    with (
        db.engine.begin() as conn,
        click.progressbar(length=1, label="rebuilding segments", show_pos=True) as bar,
    ):

        def progress(segment: Any, position: int, total: int) -> None:
            bar.length = total
            bar.label = f"rebuilt {segment.name!r}"
            bar.update(1)

        moved, queued = rebuild(conn, list(segment_ids) or None, progress=progress)
    enqueue_action_runs(get_redis(), queued)
    for segment_id in moved.joined:
        click.echo(
            f"segment {segment_id}: {len(moved.joined[segment_id])} joined, "
            f"{len(moved.left[segment_id])} left"
        )


@segments_cli.command("preview")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.argument("name")
def segments_preview(path: str, name: str) -> None:
    """Count (and sample) the contacts a segment in a rules file would hold, saving nothing."""
    from automation.config_file import ConfigFileError, parse
    from automation.segments import preview
    from tracker.models import utcnow

    try:
        spec = parse(Path(path).read_text(encoding="utf-8"), path)
    except ConfigFileError as e:
        raise click.ClickException("\n".join(e.problems)) from e
    found = [s for s in spec.segments if s.name == name]
    if not found:
        raise click.ClickException(f"{path} has no segment named {name!r}")
    with db.engine.connect() as conn:
        count, sample = preview(conn, found[0].match, utcnow())
    click.echo(f"{count} contacts match {name!r}")
    for email in sample:
        click.echo(f"  {email}")


@click.command("worker")
@with_appcontext
@click.option(
    "--queues",
    default="ingest,default,mail,maintenance",
    show_default=True,
    help="Comma-separated RQ queues, highest priority first.",
)
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--fork", is_flag=True, help="Run each job in a forked child (RQ's isolation).")
def worker_command(queues: str, burst: bool, fork: bool) -> None:
    """Run an RQ worker with the app context: ingestion, actions, sequences and mail."""
    from automation.worker import run_worker

    run_worker(current_app._get_current_object(), queues.split(","), burst=burst, fork=fork)


@click.command("scheduler")
@with_appcontext
def scheduler_command() -> None:
    """Run the scheduler; several may run, only one ticks."""
    from automation.scheduler import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(message)s")
    run(current_app._get_current_object())


def printable(text: str) -> str:
    """Visitor-typed text made safe for a terminal: control characters (escapes) shown as ?."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _ensure_demo_site() -> Site:
    """The demo site, a demo salesperson, and the demo rules when none exist yet."""
    from automation.config_file import parse
    from automation.config_store import apply
    from tracker.auth import hash_password, new_password
    from tracker.automation_models import ScoringRule
    from tracker.demo import DEMO_SITE_NAME
    from tracker.email_models import EmailTemplate
    from tracker.models import User

    site = db.session.scalar(select(Site).where(Site.name == DEMO_SITE_NAME))
    if site is None:
        site = create_site(DEMO_SITE_NAME, ["127.0.0.1", "localhost"])
        db.session.commit()
    for role, email, name, note in (
        ("admin", "admin@closedloop.local", "Admin", "the first admin"),
        ("sales", "sam.sales@demo.test", "Sam Sales", "the demo salesperson"),
    ):
        if db.session.scalar(select(User).where(User.role == role).limit(1)) is None:
            password = new_password()
            db.session.add(
                User(email=email, name=name, role=role, password_hash=hash_password(password))
            )
            db.session.commit()
            click.echo(f"created {note}: {email}, password {password} (shown once)")
    no_templates = db.session.scalar(select(EmailTemplate).limit(1)) is None
    if no_templates or db.session.scalar(select(ScoringRule).limit(1)) is None:
        rules = Path(__file__).parent / "templates" / "demo" / "rules.yaml"
        with db.engine.begin() as conn:
            apply(conn, parse(rules.read_text(), str(rules)), str(rules))
        click.echo(f"loaded the demo rules from {rules}")
    return site


def _feed(app: Flask, stop: threading.Event) -> None:
    """Print each stored event as it arrives, so the demo shows the loop working."""
    with app.app_context():
        last = db.session.scalar(select(db.func.max(Event.id))) or 0
        while not stop.wait(1.0):
            rows = db.session.execute(
                select(Event, Contact.email)
                .outerjoin(Contact, Contact.id == Event.contact_id)
                .where(Event.id > last)
                .order_by(Event.id)
                .limit(200)
            ).all()
            db.session.remove()
            for event, email in rows:
                last = event.id
                detail = event.target or event.query or event.name or event.email or ""
                if event.seconds is not None:
                    detail = f"{event.seconds}s"
                who = email or f"visitor {event.visitor_id}"
                bot = f" [bot: {event.bot_reason}]" if event.is_bot else ""
                line = f"  event  {event.type:<9} {event.path or ''} {detail}  ({who}){bot}"
                click.echo(printable(line))


@click.command("dev")
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option("--demo-port", default=5001, show_default=True)
def dev_command(host: str, port: int, demo_port: int) -> None:
    """Run everything on one machine: Redis if needed, schema, worker, scheduler, demo site."""
    from flask_migrate import upgrade
    from werkzeug.serving import make_server

    from tracker.demo import create_demo_app
    from tracker.redis_conn import answers, start_private_server

    app = current_app._get_current_object()
    # Stop cleanly (children and the private Redis too) on `kill` as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    url = app.config["REDIS_URL"]
    if not answers(url):
        click.echo(f"no Redis answers at {url}; starting a private one")
        start_private_server(url, Path(app.instance_path) / "redis")
    upgrade()
    site = _ensure_demo_site()
    tracker_url = f"http://{host}:{port}"
    demo_url = f"http://{host}:{demo_port}"

    app_spec = "tracker:create_app()"
    flask = [sys.executable, "-m", "flask", "--app", app_spec]
    # Ingestion jobs read the stream for a minute at a time: actions and mail get their own
    # worker.
    children = [
        subprocess.Popen([*flask, "worker", "--queues", "ingest"]),
        subprocess.Popen([*flask, "worker", "--queues", "default,mail"]),
        # Full segment rebuilds and decay take long: they never hold mail or actions up.
        subprocess.Popen([*flask, "worker", "--queues", "maintenance"]),
        subprocess.Popen([*flask, "scheduler"]),
    ]
    demo = make_server(host, demo_port, create_demo_app(tracker_url, site.key), threaded=True)
    threading.Thread(target=demo.serve_forever, daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=_feed, args=(app, stop), daemon=True).start()
    click.echo(f"\nClosed Loop is running: tracker {tracker_url}  (health: {tracker_url}/healthz)")
    click.echo(f"Admin: {tracker_url}/admin (the first admin's password was printed when made)")
    click.echo(f"Demo website: {demo_url}  — click around; events appear below.")
    click.echo("Inspect a contact: .venv/bin/flask --app wsgi contacts show EMAIL")
    click.echo(
        "Send the contact form and the new lead gets the 'Welcome nurture' email; click its "
        "links and the next step follows. Reach 30 points (pricing, tour, whitepaper, video, "
        "a search, a company in the form) and the lead becomes an MQL for Sam Sales. "
        f"All mail lands in the outbox: {tracker_url}/outbox (or `flask --app wsgi outbox list`)\n"
    )
    try:
        make_server(host, port, app, threaded=True).serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stop.set()
        demo.shutdown()
        # RQ stops after the current job on the first signal (an ingestion job reads
        # for a minute) and at once on the second; unacknowledged events stay in Redis.
        for child in children:
            child.terminate()
        time.sleep(1)
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


OPERATOR_COMMANDS = (
    sites_cli,
    contacts_cli,
    users_cli,
    automation_cli,
    segments_cli,
    broadcasts_cli,
    templates_cli,
    mail_cli,
    outbox_cli,
    sequences_cli,
    leads_cli,
    reports_cli,
    events_cli,
    worker_command,
    scheduler_command,
    dev_command,
)


def register(app: Flask) -> None:
    """Attach the commands to `flask --app wsgi`."""
    for command in OPERATOR_COMMANDS:
        app.cli.add_command(command)


def _create() -> Flask:
    from tracker import create_app

    return create_app()


main = FlaskGroup(create_app=_create, help="Closed Loop operator commands.")
