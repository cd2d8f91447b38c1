"""Email templates as marketers write them: checked, CSS-inlined once, ready to store.

A template is a subject (or several, for A/B tests), a preheader, an HTML body,
an optional text body (derived from the HTML when absent) and a sender. Every
part is Jinja, run in the sandbox at send time; here, at save time, every part
is compiled and tried, so a syntax error is reported with its part and line
and nothing that can fail is stored. CSS is inlined with premailer here, once
per version, never per recipient, and never with anything fetched: templates
that link or import external stylesheets are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import Connection, func, insert, select, update

from tracker.email_models import EmailTemplate, TemplateVersion
from tracker.errors import ClosedLoopError

SPEC_FIELDS = ("subject", "variants", "preheader", "html", "text", "from", "reply_to")
"""What a template spec may hold (the rules file's `templates` entries, files already read)."""

VARIANT_FIELDS = ("name", "subject", "html", "text")
"""What a whole-template variant may hold; html and text default to the template's."""

MAX_VARIANTS = 10
"""More variants than this would starve each of the traffic a test needs."""

SAMPLE_CONTACT: dict[str, Any] = {
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "company": "Analytical Engines Ltd",
    "stage": "lead",
    "score": 42,
    "engagement_score": 30,
    "fit_score": 12,
}
"""The contact a template is tried with at save time, and `mail test` uses without one."""

SAMPLE_OWNER: dict[str, Any] = {"name": "Sam Sales", "email": "sam@example.com"}
"""The owner a template is tried with at save time."""


class TemplateError(ClosedLoopError):
    """A template cannot be saved; `problems` names the part and line of each fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _blank(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self


class Blank(ChainableUndefined):
    """A missing value: renders empty, chains (`contact.company.name`), never raises.

    Arithmetic, comparison and calls on it give it back, so no data a contact
    lacks can make a send fail; `default(...)` still replaces it.
    """

    __slots__ = ()
    __call__ = __getitem__ = _blank
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _blank
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _blank
    __mod__ = __rmod__ = __pow__ = __rpow__ = __pos__ = __neg__ = _blank
    __lt__ = __le__ = __gt__ = __ge__ = _blank

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0


class _MailEnvironment(SandboxedEnvironment):
    """The sandbox, with `contact.x` on plain data meaning the field x, never a dict method."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def _environment(autoescape: bool) -> SandboxedEnvironment:
    return _MailEnvironment(
        autoescape=autoescape,
        undefined=Blank,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=0,  # templates are compiled once per version and kept by the caller
    )


HTML_ENV = _environment(autoescape=True)
"""Jinja for HTML parts: sandboxed, values escaped."""

TEXT_ENV = _environment(autoescape=False)
"""Jinja for the subject and text parts: sandboxed, nothing to escape."""


def compile_part(env: SandboxedEnvironment, source: str, part: str) -> Any:
    """Compile one part; the part's name is its filename, so errors and tracebacks name it."""
    code = env.compile(source, name=part, filename=part)
    return env.template_class.from_code(env, code, env.make_globals(None), None)


# ---------------------------------------------------------------- checking


def _syntax_problem(part: str, error: TemplateSyntaxError) -> str:
    return f"{part} line {error.lineno}: {error.message}"


def _unsafe_access(env: SandboxedEnvironment, source: str, part: str) -> list[str]:
    """Attribute or item names the sandbox would refuse, found statically in every branch."""
    problems = []
    tree = env.parse(source)
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value if isinstance(node.arg.value, str) else None
        if name and name.startswith("_"):
            problems.append(f"{part} line {node.lineno}: {name!r} is not available in templates")
    return problems


def _error_line(error: BaseException, part: str) -> int | None:
    """The template line an exception was raised on (Jinja rewrites tracebacks to show it)."""
    line = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == part:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def try_render(env: SandboxedEnvironment, source: str, part: str) -> tuple[Any, list[str]]:
    """Compile a part and render it with sample data and with an empty contact.

    Returns the compiled template and the problems found (syntax, unsafe
    access, errors while rendering), each naming the part and line.
    """
    try:
        template = compile_part(env, source, part)
        problems = _unsafe_access(env, source, part)
    except TemplateSyntaxError as e:
        return None, [_syntax_problem(part, e)]
    if problems:
        return None, problems
    for contact in (SAMPLE_CONTACT, {"email": SAMPLE_CONTACT["email"]}):
        try:
            template.render(
                contact=contact, owner=SAMPLE_OWNER, unsubscribe_url="https://example.com/u/x"
            )
        except Exception as e:  # any failure with sample data would fail at send time too
            line = _error_line(e, part)
            where = f"{part} line {line}" if line else part
            return None, [f"{where}: {type(e).__name__}: {e}"]
    return template, []


# ---------------------------------------------------------------- HTML to text

_BLOCKS = {"p", "div", "table", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol"}
_LINES = {"tr", "section", "article", "header", "footer", "hr"}
_SKIP = {"style", "script", "head", "title"}


class _TextMaker(HTMLParser):
    """Collects an HTML body's text: paragraphs and breaks kept, links as "text (url)"."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.pre = 0
        self.links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag in _BLOCKS:
            self.out.append("\n\n")
        elif tag in _LINES:
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in {"td", "th"}:
            self.out.append(" ")
        elif tag == "pre":
            self.pre += 1
            self.out.append("\n\n")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.out)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.out.append(alt)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _SKIP:
            self.skipping -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in _BLOCKS or tag == "pre":
            self.out.append("\n\n")
            if tag == "pre":
                self.pre = max(self.pre - 1, 0)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            text = " ".join("".join(self.out[start:]).split())
            if href and not href.startswith("#") and href.strip() != text:
                self.out.append(f" ({href.strip()})" if text else href.strip())

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.out).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)


def _protect(source: str) -> tuple[str, Callable[[str], str]]:
    """Replace Jinja tags by plain tokens an HTML parser leaves alone; return the undo."""
    nonce = secrets.token_hex(4)
    tags: list[str] = []

    def hide(match: re.Match[str]) -> str:
        tags.append(match.group(0))
        return f"cl{nonce}j{len(tags) - 1}z"

    hidden = _JINJA.sub(hide, source)
    token = re.compile(rf"cl{nonce}j(\d+)z")

    def restore(text: str) -> str:
        return token.sub(lambda m: tags[int(m.group(1))], text)

    return hidden, restore


def html_to_text(html: str) -> str:
    """A readable text version of an HTML body (Jinja tags kept as they are)."""
    hidden, restore = _protect(html)
    maker = _TextMaker()
    maker.feed(hidden)
    maker.close()
    return restore(maker.text())


# ---------------------------------------------------------------- CSS inlining

_LINK_TAG = re.compile(r"<link\b[^>]*>", re.I)
_IMPORT = re.compile(r"@(\\|import)", re.I)


def _external_css(part: str, html: str) -> list[str]:
    """External stylesheets would make premailer (or the reader's mail client) fetch them."""
    problems = []
    for match in _LINK_TAG.finditer(html):
        line = html.count("\n", 0, match.start()) + 1
        problems.append(
            f"{part} line {line}: external stylesheets (<link>) are not allowed; "
            "put the CSS in a <style> block"
        )
    for match in _IMPORT.finditer(html):
        line = html.count("\n", 0, match.start()) + 1
        problems.append(
            f"{part} line {line}: CSS @import is not allowed; put the CSS in a <style> block"
        )
    return problems


def inline_css(html: str) -> str:
    """The HTML with its <style> rules moved into style attributes (premailer, no fetching)."""
    from premailer import Premailer

    hidden, restore = _protect(html)
    inlined = Premailer(
        hidden,
        allow_network=False,
        allow_loading_external_files=False,
        disable_link_rewrites=True,
        disable_validation=True,
        remove_classes=False,
        strip_important=False,
        cssutils_logging_level=logging.CRITICAL,
    ).transform()
    return restore(inlined)


def _same_text(original: Any, inlined: Any) -> bool:
    """Whether inlining kept the words: both render to the same text with sample data."""

    def words(template: Any) -> list[str]:
        html = template.render(
            contact=SAMPLE_CONTACT, owner=SAMPLE_OWNER, unsubscribe_url="https://example.com/u/x"
        )
        return html_to_text(html).split()

    return words(original) == words(inlined)


# ---------------------------------------------------------------- the version


@dataclass(frozen=True)
class VersionContent:
    """What a TemplateVersion row holds, checked and inlined."""

    sender: str | None
    reply_to: str | None
    preheader: str | None
    variants: list[dict[str, str]]
    source: dict[str, Any]
    digest: str


def _address(value: Any, field: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        problems.append(f"{field}: must be an address such as 'Acme <news@acme.com>'")
        return None
    _, address = parseaddr(value)
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        problems.append(f"{field}: {value!r} is not an address such as 'Acme <news@acme.com>'")
        return None
    return value.strip()


def _text_field(spec: dict[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = spec.get(key)
    if value is not None and not isinstance(value, str):
        problems.append(f"{where}{key}: must be text, not {type(value).__name__}")
        return None
    return value


def _normalise(spec: dict[str, Any], problems: list[str]) -> list[dict[str, Any]]:
    """The spec's variants as [{name, subject, html, text}] (html/text may be None)."""
    html = _text_field(spec, "html", "", problems)
    text = _text_field(spec, "text", "", problems)
    subject = spec.get("subject")
    given = spec.get("variants")
    if given is not None and subject is not None:
        problems.append("give either 'subject' or 'variants', not both")
        return []
    if given is not None:
        if not isinstance(given, list) or not given:
            problems.append("'variants' must be a list of {name, subject, html?, text?}")
            return []
        variants = []
        for number, item in enumerate(given, 1):
            if not isinstance(item, dict):
                problems.append(
                    f"variant {number}: must be a mapping of {', '.join(VARIANT_FIELDS)}"
                )
                continue
            unknown = sorted(set(item) - set(VARIANT_FIELDS))
            if unknown:
                problems.append(
                    f"variant {number}: unknown field {unknown[0]!r} "
                    f"(allowed: {', '.join(VARIANT_FIELDS)})"
                )
            name = item.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[\w .-]{1,40}", name):
                problems.append(
                    f"variant {number}: 'name' must be 1-40 letters, digits, spaces, . _ or -"
                )
                continue
            where = f"variant {name} "
            variants.append(
                {
                    "name": name,
                    "subject": _text_field(item, "subject", where, problems),
                    "html": _text_field(item, "html", where, problems) or html,
                    "text": _text_field(item, "text", where, problems) or text,
                }
            )
    elif isinstance(subject, list):
        if not subject or not all(isinstance(s, str) for s in subject):
            problems.append("'subject' must be text, or a list of texts (one per variant)")
            return []
        variants = [
            {"name": chr(ord("A") + i), "subject": s, "html": html, "text": text}
            for i, s in enumerate(subject)
        ]
    elif isinstance(subject, str):
        variants = [{"name": "A", "subject": subject, "html": html, "text": text}]
    else:
        problems.append("'subject' is required: text, or a list of texts (one per variant)")
        return []
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        problems.append("variant names must differ")
    if len(variants) > MAX_VARIANTS:
        problems.append(f"at most {MAX_VARIANTS} variants")
    for variant in variants:
        if not variant["subject"] or not variant["subject"].strip():
            problems.append(f"variant {variant['name']}: the subject is empty")
        if not variant["html"] or not variant["html"].strip():
            problems.append(f"variant {variant['name']}: 'html' is required")
    return variants


def canonical_source(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as stored and exported: known fields only, empty ones left out."""
    return {k: spec[k] for k in SPEC_FIELDS if spec.get(k) not in (None, "", [])}


def source_digest(source: dict[str, Any]) -> str:
    """What identifies a template's content: equal digests, no new version."""
    text = json.dumps(source, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_BUILT: dict[str, VersionContent] = {}
_BUILT_MAX = 64


def build_version(spec: dict[str, Any]) -> VersionContent:
    """Check every part of a template spec and inline its CSS; raise TemplateError if faulty."""
    if not isinstance(spec, dict):
        raise TemplateError(["a template must be a mapping of " + ", ".join(SPEC_FIELDS)])
    problems: list[str] = []
    for key in sorted(set(spec) - set(SPEC_FIELDS)):
        problems.append(f"unknown field {key!r} (allowed: {', '.join(SPEC_FIELDS)})")
    source = canonical_source(spec)
    digest = source_digest(source)
    if not problems and digest in _BUILT:
        return _BUILT[digest]
    sender = _address(spec.get("from"), "from", problems)
    reply_to = _address(spec.get("reply_to"), "reply_to", problems)
    preheader = _text_field(spec, "preheader", "", problems)
    variants = _normalise(spec, problems)
    if preheader:
        problems += try_render(HTML_ENV, preheader, "preheader")[1]
    stored = []
    inlined_html: dict[str, str] = {}
    for variant in variants:
        prefix = f"variant {variant['name']} " if len(variants) > 1 else ""
        subject, html, text = variant["subject"], variant["html"], variant["text"]
        if not subject or not html:
            continue
        if "\n" in subject.strip():
            problems.append(f"{prefix}subject: must be one line")
        problems += try_render(TEXT_ENV, subject, f"{prefix}subject")[1]
        external = _external_css(f"{prefix}html", html)
        original, html_problems = try_render(HTML_ENV, html, f"{prefix}html")
        problems += external + html_problems
        if external or html_problems:
            continue
        if html not in inlined_html:
            inlined = inline_css(html)
            compiled, after = try_render(HTML_ENV, inlined, f"{prefix}html")
            if after or not _same_text(original, compiled):
                problems.append(
                    f"{prefix}html: inlining the CSS changed the content (check that "
                    "Jinja blocks enclose whole HTML elements)"
                )
                continue
            inlined_html[html] = inlined
        text = text if text and text.strip() else html_to_text(html)
        problems += try_render(TEXT_ENV, text, f"{prefix}text")[1]
        stored.append(
            {
                "name": variant["name"],
                "subject": subject.strip(),
                "html": inlined_html[html],
                "text": text,
            }
        )
    if problems:
        raise TemplateError(problems)
    content = VersionContent(sender, reply_to, preheader or None, stored, source, digest)
    if len(_BUILT) >= _BUILT_MAX:
        _BUILT.pop(next(iter(_BUILT)))
    _BUILT[digest] = content
    return content


def save_template(
    conn: Connection, name: str, spec: dict[str, Any], now: datetime
) -> tuple[int, int | None]:
    """Save a template by name: (template id, id of the new version, or None when unchanged).

    A new version is written only when the content changed; the template then
    points at it, and messages queued from now on use it. Raises TemplateError.
    """
    content = build_version(spec)
    templates, versions = EmailTemplate.__table__, TemplateVersion.__table__
    row = conn.execute(
        select(templates.c.id, versions.c.digest)
        .select_from(templates)
        .outerjoin(versions, versions.c.id == templates.c.current_version_id)
        .where(templates.c.name == name)
    ).first()
    if row is None:
        template_id = conn.execute(
            insert(templates).values(name=name, created_at=now, updated_at=now)
        ).inserted_primary_key[0]
    elif row.digest == content.digest:
        return row.id, None
    else:
        template_id = row.id
    number = conn.execute(
        select(func.coalesce(func.max(versions.c.version), 0)).where(
            versions.c.template_id == template_id
        )
    ).scalar_one()
    version_id = conn.execute(
        insert(versions).values(
            template_id=template_id,
            version=number + 1,
            sender=content.sender,
            reply_to=content.reply_to,
            preheader=content.preheader,
            variants=content.variants,
            source=content.source,
            digest=content.digest,
            created_at=now,
        )
    ).inserted_primary_key[0]
    conn.execute(
        update(templates)
        .where(templates.c.id == template_id)
        .values(current_version_id=version_id, updated_at=now)
    )
    return template_id, version_id


# ---------------------------------------------------------------- rules files

TEMPLATE_FIELDS = {"name", "html_file", "text_file", *SPEC_FIELDS}
"""Fields of a `templates` entry in a rules file."""


@dataclass
class TemplateSpec:
    """A `templates` entry of a rules file: its spec (files read) and the checked content."""

    name: str
    spec: dict[str, Any]
    content: VersionContent
    line: int = 0


def _read_beside(base: Path, relative: Any, field: str) -> str:
    if not isinstance(relative, str) or not relative.strip():
        raise ValueError(f"'{field}' must be a path relative to the rules file")
    root = base.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"'{field}' {relative!r} is outside the rules file's folder")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"'{field}' {relative!r} cannot be read: {e}") from e


def template_entry(item: dict[str, Any], base: Path) -> TemplateSpec:
    """Check a rules file's template entry (html_file/text_file read from beside the file)."""
    spec = {k: _plain(v) for k, v in item.items() if k in SPEC_FIELDS}
    files = {}
    for part in ("html", "text"):
        if item.get(f"{part}_file") is not None:
            if item.get(part) is not None:
                raise ValueError(f"give '{part}' or '{part}_file', not both")
            spec[part] = _read_beside(base, item[f"{part}_file"], f"{part}_file")
            files[part] = item[f"{part}_file"]
    try:
        content = build_version(spec)
    except TemplateError as e:
        problems = []
        for problem in e.problems:
            for part, file in files.items():
                problem = re.sub(rf"\b{part} line", f"{part} ({file}) line", problem)
            problems.append(problem)
        raise ValueError("; ".join(problems)) from e
    return TemplateSpec(item["name"].strip(), spec, content)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def export_templates(conn: Connection) -> list[dict[str, Any]]:
    """Every template's current version as a rules file's `templates` entries (HTML inline)."""
    templates, versions = EmailTemplate.__table__, TemplateVersion.__table__
    rows = conn.execute(
        select(templates.c.name, versions.c.source)
        .join(versions, versions.c.id == templates.c.current_version_id)
        .order_by(templates.c.id)
    )
    return [{"name": name, **source} for name, source in rows]
