"""Email templates in the admin: the editor, its syntax check, a rendered preview, a test send.

The form's fields become a rules file's `templates` item and go through the
same parser and save as `automation load` (a new version only when the
content changed). The preview renders the current version, untracked, for a
chosen contact or the sample one; the test send is `mail test`'s. Deleting
one is refused once it sent mail, or while something sends it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from flask import Response, current_app, redirect, render_template, request, url_for
from sqlalchemy import func, select, update

from tracker.admin import bp
from tracker.admin.configure import SECTIONS, ItemRefused, row_or_404, save_item
from tracker.admin.deleting import delete_page
from tracker.auth import roles
from tracker.db import db
from tracker.email_models import EmailTemplate, Message, TemplateVersion
from tracker.models import Contact, User
from tracker.payload import EMAIL_RE, normalise_email

TEXT_FIELDS = ("preheader", "html", "text", "from", "reply_to")
"""Form fields that are a template spec's fields as they are."""


@dataclass
class TemplateForm:
    """The editor's fields, as typed."""

    name: str = ""
    subjects: str = ""
    variants: str = ""
    parts: dict[str, str] = field(default_factory=dict)


class PreviewError(ValueError):
    """A preview or test send that cannot be made; `field` is the form field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def form_of(name: str, source: dict[str, Any]) -> TemplateForm:
    """A stored version's source as the editor's fields."""
    subject = source.get("subject")
    subjects = "\n".join(subject) if isinstance(subject, list) else (subject or "")
    variants = source.get("variants")
    return TemplateForm(
        name=name,
        subjects=subjects,
        variants=yaml.safe_dump(variants, sort_keys=False, allow_unicode=True) if variants else "",
        parts={k: source.get(k) or "" for k in TEXT_FIELDS},
    )


def read_template_form(form: dict[str, str], name: str | None) -> TemplateForm:
    """The posted editor fields (line endings normalised as a browser's textarea sends them)."""

    def value(key: str) -> str:
        return (form.get(key) or "").replace("\r\n", "\n")

    return TemplateForm(
        name=name if name is not None else value("name").strip(),
        subjects=value("subjects"),
        variants=value("variants"),
        parts={k: value(k) for k in TEXT_FIELDS},
    )


def template_item(typed: TemplateForm) -> dict[str, Any]:
    """The editor's fields as a rules file's `templates` item."""
    item: dict[str, Any] = {"name": typed.name}
    subjects = [line.strip() for line in typed.subjects.split("\n") if line.strip()]
    if len(subjects) == 1:
        item["subject"] = subjects[0]
    elif subjects:
        item["subject"] = subjects
    if typed.variants.strip():
        try:
            item["variants"] = yaml.safe_load(typed.variants)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            problem = f"variants{where}: not valid YAML: {getattr(e, 'problem', e)}"
            raise ItemRefused([problem]) from e
    for key in TEXT_FIELDS:
        if typed.parts[key].strip():
            item[key] = (
                typed.parts[key].strip() if key in ("from", "reply_to") else typed.parts[key]
            )
    return item


def save_template_form(typed: TemplateForm, current_name: str | None) -> str:
    """Check and save the editor's template; raise ItemRefused with the parts and lines at fault."""
    if not typed.name:
        raise ItemRefused(["give the template a name"])
    text = yaml.safe_dump(template_item(typed), sort_keys=False, allow_unicode=True)
    try:
        return save_item("templates", text, current_name).name
    except ItemRefused as e:
        # The line numbers are of the YAML made from the form: the part's own line is the one.
        raise ItemRefused([re.sub(r"^line \d+: ", "", p) for p in e.problems]) from e


def _contact_context(email: str) -> tuple[str, dict[str, Any]]:
    """A contact's address and what templates see of it, or PreviewError."""
    from automation.render import template_context

    contact = db.session.scalar(select(Contact).where(Contact.email == normalise_email(email)))
    if contact is None:
        raise PreviewError("contact", f"no contact has the email {email!r}")
    owner = db.session.get(User, contact.owner_id) if contact.owner_id else None
    fields = {
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "company": contact.company,
        "stage": contact.stage,
        "score": contact.score,
        "engagement_score": contact.engagement_score,
        "fit_score": contact.fit_score,
    }
    owner_fields = {"name": owner.name, "email": owner.email} if owner else None
    return contact.email, template_context(fields, contact.traits, owner_fields)


def _no_variant(chosen: str, names: list[str]) -> PreviewError:
    return PreviewError("variant", f"no variant {chosen!r} (there are {', '.join(names)})")


def render_preview(template_id: int, contact_email: str, variant: str) -> dict[str, Any]:
    """The current version rendered for a contact (or the sample one), links left untracked."""
    from automation.outgoing import UnknownTemplate, current_version
    from automation.render import cached_version, render_message, template_context
    from automation.sending import settings_from
    from automation.template_source import SAMPLE_CONTACT, SAMPLE_OWNER
    from tracker.outbox_view import parts

    try:
        version = current_version(db.session.connection(), template_id)
    except UnknownTemplate as e:
        raise PreviewError("template", str(e)) from e
    chosen = variant or version.variants[0]
    if chosen not in version.variants:
        raise _no_variant(chosen, version.variants)
    if contact_email.strip():
        to_addr, context = _contact_context(contact_email)
    else:
        to_addr = SAMPLE_CONTACT["email"]
        context = template_context(SAMPLE_CONTACT, {}, SAMPLE_OWNER)

    def load(version_id: int) -> dict[str, Any]:
        row = db.session.get(TemplateVersion, version_id)
        return {
            "sender": row.sender,
            "reply_to": row.reply_to,
            "preheader": row.preheader,
            "variants": row.variants,
        }

    rendered = render_message(
        cached_version(version.version_id, load),
        chosen,
        message_id=0,
        to_addr=to_addr,
        context=context,
        settings=settings_from(current_app.config).render,
        track=False,
    )
    shown = parts(rendered.raw.decode("utf-8", "replace"))
    return {"subject": rendered.subject, "variant": chosen, "variants": version.variants, **shown}


def send_test(template: str, to_addr: str, contact_email: str, variant: str) -> str:
    """Send the current version now, as `flask --app wsgi mail test` does; say what happened.

    Personalised with `contact_email`'s data, else the contact with the
    recipient's address, else sample data (then nothing is tracked).
    """
    from automation.mailer import SendFailed
    from automation.outgoing import UnknownTemplate, create_messages, current_version
    from automation.sending import send_batch, send_preview, settings_from
    from tracker.redis_conn import get_redis

    to = normalise_email(to_addr)
    if not EMAIL_RE.fullmatch(to):
        raise PreviewError("to", f"{to_addr!r} is not an email address")
    lookup = normalise_email(contact_email) if contact_email.strip() else to
    contact_id = db.session.scalar(select(Contact.id).where(Contact.email == lookup))
    if contact_email.strip() and contact_id is None:
        raise PreviewError("contact", f"no contact has the email {contact_email!r}")
    config = current_app.config
    db.session.rollback()  # what follows writes through its own transactions
    try:
        with db.engine.begin() as conn:
            version = current_version(conn, template)
            chosen = variant or version.variants[0]
            if chosen not in version.variants:
                raise PreviewError(
                    "variant", f"no variant {chosen!r} (there are {version.variants})"
                )
            if contact_id is None:
                try:
                    outcome = send_preview(
                        conn, version.version_id, chosen, to, settings_from(config)
                    )
                except SendFailed as e:
                    raise PreviewError("to", f"not sent: {e.text}") from e
                return f"sent ({chosen}) to {to} with sample data: {outcome}"
            (message_id,) = create_messages(
                conn, version.template_id, [{"contact_id": contact_id}], kind="test", variant=chosen
            )
            conn.execute(update(Message).where(Message.id == message_id).values(to_addr=to))
    except UnknownTemplate as e:
        raise PreviewError("template", str(e)) from e
    counts = send_batch(db.engine, get_redis(), [message_id], settings_from(config))
    outcome = next((k for k, v in counts.items() if v), "not sent")
    if outcome != "sent":
        error = db.session.scalar(select(Message.error).where(Message.id == message_id))
        raise PreviewError("to", f"not sent: {error}")
    where = "the outbox" if not config["SMTP_URL"] else "SMTP"
    return f"message {message_id} ({chosen}) sent to {to} via {where}, with {lookup}'s data"


# ---------------------------------------------------------------- pages


@bp.get("/templates")
@roles("marketer")
def templates_list() -> str:
    """Templates with their number of versions and the current version's variants."""
    versions = dict(
        db.session.execute(
            select(TemplateVersion.template_id, func.count()).group_by(TemplateVersion.template_id)
        ).all()
    )
    rows = db.session.execute(
        select(EmailTemplate, TemplateVersion.variants)
        .outerjoin(TemplateVersion, TemplateVersion.id == EmailTemplate.current_version_id)
        .order_by(EmailTemplate.name)
    ).all()
    templates = [
        (template, versions.get(template.id, 0), [v["name"] for v in variants or []])
        for template, variants in rows
    ]
    return render_template("admin/config/templates.html", templates=templates)


def _editor(
    template: EmailTemplate | None, typed: TemplateForm, status: int = 200, **extra: Any
) -> Response:
    extra.setdefault("errors", {})
    page = render_template(
        "admin/config/template.html",
        info=SECTIONS["templates"],
        template=template,
        form=typed,
        **extra,
    )
    return Response(page, status)


@bp.route("/templates/new", methods=["GET", "POST"])
@roles("marketer")
def template_new() -> Response:
    """Write a new template; it is checked (part and line of each fault) before it is saved."""
    if request.method == "GET":
        return _editor(None, TemplateForm(parts={k: "" for k in TEXT_FIELDS}))
    typed = read_template_form(request.form, None)
    try:
        name = save_template_form(typed, None)
    except ItemRefused as e:
        return _editor(None, typed, 400, problems=e.problems)
    template_id = db.session.scalar(select(EmailTemplate.id).where(EmailTemplate.name == name))
    return redirect(url_for("admin.template_edit", template_id=template_id, saved=1))


@bp.route("/templates/<int:template_id>", methods=["GET", "POST"])
@roles("marketer")
def template_edit(template_id: int) -> Response:
    """The editor, with the current version rendered (for ?contact=EMAIL&variant=NAME)."""
    template = row_or_404(EmailTemplate, template_id)
    if request.method == "POST":
        typed = read_template_form(request.form, template.name)
        try:
            save_template_form(typed, template.name)
        except ItemRefused as e:
            return _editor(template, typed, 400, problems=e.problems)
        return redirect(url_for("admin.template_edit", template_id=template.id, saved=1))
    source = db.session.scalar(
        select(TemplateVersion.source).where(TemplateVersion.id == template.current_version_id)
    )
    typed = form_of(template.name, source or {})
    contact = (request.args.get("contact") or "").strip()[:320]
    variant = (request.args.get("variant") or "").strip()[:40]
    try:
        preview = render_preview(template.id, contact, variant)
    except PreviewError as e:
        status = 400 if contact or variant else 200  # bad input, or no version to show
        return _editor(template, typed, status, errors={e.field: str(e)}, contact=contact)
    return _editor(template, typed, preview=preview, contact=contact)


@bp.post("/templates/<int:template_id>/test")
@roles("marketer")
def template_test(template_id: int) -> Response:
    """Send the current version to a typed address now, as `mail test` does."""
    template = row_or_404(EmailTemplate, template_id)
    to_addr = (request.form.get("to") or "").strip()[:320]
    contact = (request.form.get("contact") or "").strip()[:320]
    variant = (request.form.get("variant") or "").strip()[:40]
    source = db.session.scalar(
        select(TemplateVersion.source).where(TemplateVersion.id == template.current_version_id)
    )
    typed = form_of(template.name, source or {})
    try:
        sent = send_test(template.name, to_addr, contact, variant)
    except PreviewError as e:
        return _editor(template, typed, 400, errors={e.field: str(e)}, to=to_addr, contact=contact)
    preview = render_preview(template.id, "", variant)
    return _editor(template, typed, sent=sent, preview=preview, to=to_addr, contact=contact)


@bp.route("/templates/<int:template_id>/delete", methods=["GET", "POST"])
@roles("marketer")
def template_delete(template_id: int) -> Response:
    """Delete a template that never sent mail and nothing sends, after a confirmation page."""
    from automation.removal_config import plan_template
    from automation.render import forget_versions

    template = row_or_404(EmailTemplate, template_id)
    return delete_page(
        lambda conn: plan_template(conn, template.id),
        back=url_for("admin.template_edit", template_id=template.id),
        done=url_for("admin.templates_list"),
        # SQLite may give a deleted version's id to the next one: drop what was compiled.
        after=forget_versions,
    )
