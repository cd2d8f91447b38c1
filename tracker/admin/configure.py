"""Configuration screens: one item of a rules file at a time, through the file's own parser.

Whatever `flask --app wsgi automation load FILE` accepts, these pages accept,
with the same checks and messages: an edited item is wrapped as a one-item
file (`{section: [item]}`), parsed by `automation.config_file.parse` and
written by `automation.config_store.apply` in one transaction, or refused
with the parser's problems and nothing changed. This module holds that
mechanism, the hub page, and the list and edit pages of the sections that need
nothing more (scoring rules, thresholds, decay policies, webhooks).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml
from flask import Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.exc import DataError

from tracker.admin import bp
from tracker.admin.deleting import Offer, delete_page
from tracker.auth import current_user, roles
from tracker.automation_models import DecayPolicy, ScoringRule, Segment, Threshold, Webhook
from tracker.db import db
from tracker.email_models import EmailTemplate, Sequence
from tracker.models import utcnow

MAX_ITEM_CHARS = 200_000
"""Longest item text a form may send (a template's HTML included)."""

TOO_LARGE = (
    "a value does not fit: whole numbers go up to 2147483647 (days and counts far less), "
    "names up to 200 characters"
)
"""What a refused item says when the database (or date arithmetic) cannot hold a value."""

UNFIT = (OverflowError, DataError)
"""Errors of values the parser let through but no column or date can hold."""

HIDDEN_SECRET = "(hidden)"
"""What `automation show` prints for a webhook secret; kept as the stored secret on save."""


@dataclass(frozen=True)
class Section:
    """A section of the rules file as the configuration pages show it."""

    key: str
    what: str
    title: str
    model: Any
    columns: tuple[str, ...]
    example: str


SECTIONS: dict[str, Section] = {
    section.key: section
    for section in (
        Section(
            "segments",
            "segment",
            "Segments",
            Segment,
            (),
            "name: Engaged leads\nmatch:\n  all:\n    - stage: {in: [lead, mql]}\n"
            "    - score: {kind: total, gte: 20}\n",
        ),
        Section(
            "rules",
            "rule",
            "Scoring rules",
            ScoringRule,
            ("kind", "event", "site", "when", "points", "max_times", "once_per", "enabled"),
            "name: Visited pricing\nevent: pageview\nwhen:\n  path: /pricing\npoints: 10\n",
        ),
        Section(
            "thresholds",
            "threshold",
            "Thresholds",
            Threshold,
            ("score", "at_least", "segment", "stage", "actions", "enabled"),
            "name: Marketing qualified\nat_least: 50\nactions:\n  - set_stage: mql\n"
            "  - assign_owner: round_robin\n  - notify_owner\n",
        ),
        Section(
            "decay",
            "decay policy",
            "Decay policies",
            DecayPolicy,
            ("site", "expire_after_days", "drop_percent", "every_days", "enabled"),
            "name: Forget old interest\nexpire_after_days: 90\n",
        ),
        Section(
            "webhooks",
            "webhook",
            "Webhooks",
            Webhook,
            ("url", "secret"),
            "name: CRM\nurl: https://crm.example.com/hooks/closed-loop\n"
            "secret: at-least-sixteen-characters\n",
        ),
        Section("templates", "template", "Email templates", EmailTemplate, (), ""),
        Section(
            "sequences",
            "sequence",
            "Sequences",
            Sequence,
            (),
            "name: Welcome\nentry:\n  segment: Engaged leads\nsteps:\n  - send: welcome\n"
            "  - wait: 3d\n  - send: case-study\n",
        ),
    )
}
"""Every section the pages edit; `columns` are the fields the plain list pages show."""

PLAIN_SECTIONS = ("rules", "thresholds", "decay", "webhooks")
"""The sections whose list and edit pages are the generic ones of this module."""

DELETE_PLANS = {
    "rules": "plan_rule",
    "thresholds": "plan_threshold",
    "decay": "plan_decay",
    "webhooks": "plan_webhook",
}
"""Per plain section, the `automation.removal_config` function that plans a deletion."""

DISABLED = {
    "rules": "it awards no more points",
    "thresholds": "it fires no more",
    "decay": "nothing fades by it any more",
}
"""The plain sections whose items can be switched off, and what that means."""


@dataclass(frozen=True)
class Saved:
    """What a save wrote: the item's name, and the segments whose membership must be rebuilt."""

    name: str
    changed_segments: list[int]


class ItemRefused(Exception):
    """An item the parser (or the page) refused; `problems` are its messages, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# ---------------------------------------------------------------- reading


def exported(section: str) -> list[dict[str, Any]]:
    """The section's items as `automation show` prints them (webhook secrets hidden)."""
    from automation.config_store import export

    document = yaml.safe_load(export(db.session.connection())) or {}
    return document.get(section) or []


def exported_item(section: str, name: str) -> dict[str, Any] | None:
    """One item of the section, by name, as `automation show` prints it."""
    return next((item for item in exported(section) if item.get("name") == name), None)


def item_text(item: dict[str, Any]) -> str:
    """An item as the YAML mapping a marketer edits."""
    return yaml.safe_dump(item, sort_keys=False, allow_unicode=True, width=100)


# ---------------------------------------------------------------- saving


def wrap_item(section: str, text: str) -> str:
    """The item as a one-item rules file: the section, then the item indented as a list entry."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "\n".join(("- " if i == 0 else "  ") + line for i, line in enumerate(lines))
    return f"{section}:\n{body}\n"


def relabel(problems: list[str], label: str) -> list[str]:
    """The parser's "FILE:LINE: …" as "line N: …", N counted in the text the marketer typed."""
    prefix = re.compile(rf"^{re.escape(label)}:(\d+): ")

    def fix(problem: str) -> str:
        match = prefix.match(problem)
        if match is None:
            return problem.removeprefix(f"{label}: ")
        return f"line {max(int(match.group(1)) - 1, 1)}: {problem[match.end() :]}"

    return [fix(p) for p in problems]


def _keep_secret(text: str, name: str | None) -> str:
    """A webhook's "secret: (hidden)" replaced by the stored secret, so editing keeps it."""
    if name is None:
        return text
    secret = db.session.scalar(select(Webhook.secret).where(Webhook.name == name))
    if secret is None:
        return text
    hidden = re.compile(r"^(\s*secret:\s*)['\"]?\(hidden\)['\"]?\s*$", re.M)
    return hidden.sub(lambda m: m.group(1) + json.dumps(secret), text)


LARGEST = 2**31 - 1
"""The largest whole number an item may hold (the database's integer columns)."""


def _largest_number(value: Any) -> int:
    if isinstance(value, dict):
        return max((_largest_number(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_largest_number(v) for v in value), default=0)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    return 0


def refuse_huge_numbers(text: str) -> None:
    """Refuse numbers no column holds before they reach the database driver."""
    try:
        item = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # the parser reports it, with its line
    largest = _largest_number(item)
    if largest > LARGEST:
        raise ItemRefused([f"{largest} is too large: {TOO_LARGE}"])


def _refuse_server_files(text: str) -> None:
    """html_file/text_file read files beside a rules file: on a web form, the server's own."""
    try:
        item = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # the parser reports it, with its line
    if isinstance(item, dict) and {"html_file", "text_file"} & set(item):
        raise ItemRefused(["html_file and text_file work in rules files only: paste the content"])


def save_item(section: str, text: str, current_name: str | None = None) -> Saved:
    """Parse one item of `section` as `automation load` would, and apply it in one transaction.

    `current_name` is the item being edited (None: a new one). Raises
    ItemRefused with the parser's messages when anything is wrong; then
    nothing is written.
    """
    from automation.config_file import ConfigFileError, parse
    from automation.config_store import apply

    info = SECTIONS[section]
    if not text.strip():
        raise ItemRefused([f"the {info.what} is empty: write it as a YAML mapping"])
    if len(text) > MAX_ITEM_CHARS:
        raise ItemRefused([f"the {info.what} is longer than {MAX_ITEM_CHARS} characters"])
    if section == "webhooks":
        text = _keep_secret(text, current_name)
    if section == "templates":
        _refuse_server_files(text)
    refuse_huge_numbers(text)
    label = f"{info.what} {current_name!r}" if current_name else f"new {info.what}"
    try:
        spec = parse(wrap_item(section, text), label)
    except ConfigFileError as e:
        raise ItemRefused(relabel(e.problems, label)) from e
    items = getattr(spec, section)
    if len(items) != 1:
        raise ItemRefused([f"write one {info.what} as a YAML mapping"])
    item = items[0]
    if current_name is not None and item.name != current_name:
        raise ItemRefused(
            [
                f"line {item.line - 1}: the name must stay {current_name!r} (items are matched "
                f"by name); to make another {info.what}, use New"
            ]
        )
    if current_name is None and db.session.scalar(
        select(info.model.id).where(info.model.name == item.name)
    ):
        raise ItemRefused(
            [f"line {item.line - 1}: a {info.what} named {item.name!r} exists already; edit it"]
        )
    try:
        counts = apply(db.session.connection(), spec, label)
        db.session.commit()
    except ConfigFileError as e:
        db.session.rollback()
        raise ItemRefused(relabel(e.problems, label)) from e
    except UNFIT as e:
        db.session.rollback()
        raise ItemRefused([f"{info.what} {item.name!r}: {TOO_LARGE}"]) from e
    return Saved(item.name, counts["changed segments"])


def enqueue_rebuild(segment_ids: list[int]) -> None:
    """Have a worker rebuild these segments' membership, as `automation load` does."""
    if not segment_ids:
        return
    from rq import Queue

    from tracker.redis_conn import get_redis

    Queue("maintenance", connection=get_redis()).enqueue(
        "automation.jobs.rebuild_segments", segment_ids, job_timeout=3600
    )


def item_form(section: str, text: str, current_name: str | None) -> Saved | list[str]:
    """Save the posted item: what was saved, or the problems to show with the form."""
    try:
        saved = save_item(section, text, current_name)
    except ItemRefused as e:
        return e.problems
    enqueue_rebuild(saved.changed_segments)
    return saved


def row_or_404(model: Any, row_id: int) -> Any:
    """The row with this id, or a 404 page."""
    row = db.session.get(model, row_id)
    if row is None:
        abort(404)
    return row


# ---------------------------------------------------------------- pages


@bp.get("/configure")
@roles("marketer")
def configure() -> str:
    """The configuration screens, for the user's role."""
    return render_template(
        "admin/config/hub.html", sections=SECTIONS, is_admin=current_user().role == "admin"
    )


def _section_or_404(section: str) -> Section:
    if section not in PLAIN_SECTIONS:
        abort(404)
    return SECTIONS[section]


@bp.get("/configure/<section>")
@roles("marketer")
def config_items(section: str) -> str:
    """A section's items, with the fields that tell them apart."""
    info = _section_or_404(section)
    ids = dict(db.session.execute(select(info.model.name, info.model.id)).all())
    items = [(ids.get(item["name"]), item) for item in exported(section)]
    return render_template("admin/config/items.html", info=info, items=items)


@bp.route("/configure/<section>/new", methods=["GET", "POST"])
@roles("marketer")
def config_item_new(section: str) -> Response | str:
    """Create an item of the section from its YAML."""
    info = _section_or_404(section)
    return edit_page(info, None, "admin.config_item")


@bp.route("/configure/<section>/<int:item_id>", methods=["GET", "POST"])
@roles("marketer")
def config_item(section: str, item_id: int) -> Response | str:
    """Edit an item of the section as YAML."""
    info = _section_or_404(section)
    row = row_or_404(info.model, item_id)
    return edit_page(info, row, "admin.config_item")


def edit_page(
    info: Section,
    row: Any,
    endpoint: str,
    template: str = "admin/config/item.html",
    **extra: Any,
) -> Response | str:
    """GET: the item's YAML in a form; POST: save it, or show the problems (400)."""
    name = row.name if row is not None else None
    if row is not None:
        extra.setdefault("delete_url", _delete_url(info.key, row.id))
    if request.method == "GET":
        item = exported_item(info.key, name) if name is not None else None
        text = item_text(item) if item is not None else info.example
        return render_template(template, info=info, row=row, text=text, **extra)
    text = request.form.get("item") or ""
    outcome = item_form(info.key, text, name)
    if isinstance(outcome, list):
        page = render_template(template, info=info, row=row, text=text, problems=outcome, **extra)
        return Response(page, 400)
    saved_id = db.session.scalar(select(info.model.id).where(info.model.name == outcome.name))
    if info.key in PLAIN_SECTIONS:
        return redirect(url_for(endpoint, section=info.key, item_id=saved_id, saved=1))
    return redirect(url_for(endpoint, item_id=saved_id, saved=1))


def _delete_url(section: str, item_id: int) -> str | None:
    """Where the item's delete page is (None: this module gives its section none)."""
    if section in DELETE_PLANS:
        return url_for("admin.config_item_delete", section=section, item_id=item_id)
    if section == "segments":
        return url_for("admin.segment_delete", item_id=item_id)
    return None


@bp.route("/configure/<section>/<int:item_id>/delete", methods=["GET", "POST"])
@roles("marketer")
def config_item_delete(section: str, item_id: int) -> Response:
    """Delete an item after a confirmation page (GET deletes nothing); 409 while it is needed."""
    from automation import removal_config

    info = _section_or_404(section)
    row = row_or_404(info.model, item_id)
    plan = getattr(removal_config, DELETE_PLANS[section])
    offer = None
    if section in DISABLED:
        offer = Offer(
            "Disable it instead",
            url_for("admin.config_item_disable", section=section, item_id=row.id),
            f"Disabled, {DISABLED[section]}, and everything it did stays as it is.",
        )
    return delete_page(
        lambda conn: plan(conn, row.id),
        back=url_for("admin.config_item", section=section, item_id=row.id),
        done=url_for("admin.config_items", section=section),
        offer=offer,
    )


@bp.post("/configure/<section>/<int:item_id>/disable")
@roles("marketer")
def config_item_disable(section: str, item_id: int) -> Response:
    """Switch an item off (what a scoring rule with history gets instead of deletion)."""
    info = _section_or_404(section)
    if section not in DISABLED:
        abort(404)
    row = row_or_404(info.model, item_id)
    row.enabled = False
    if hasattr(row, "updated_at"):
        row.updated_at = utcnow()
    db.session.commit()
    flash(f"Disabled the {info.what} {row.name!r}: {DISABLED[section]}.")
    return redirect(url_for("admin.config_item", section=section, item_id=row.id))
