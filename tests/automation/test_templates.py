"""Templates at save time: parts checked with line numbers, CSS inlined once, nothing fetched."""

from __future__ import annotations

import http.server
import sys
import threading

import pytest
from sqlalchemy import select

from automation.config_file import ConfigFileError, parse
from automation.config_store import apply, export
from automation.render import RenderSettings, compile_version, render_message, template_context
from automation.template_source import (
    TemplateError,
    build_version,
    html_to_text,
    save_template,
)
from tracker.db import db
from tracker.email_models import EmailTemplate, TemplateVersion
from tracker.models import utcnow
from tracker.redis_conn import free_port

SETTINGS = RenderSettings("http://tracker.test", b"k" * 32, "News <news@acme.test>")


def problems(spec: dict) -> list[str]:
    with pytest.raises(TemplateError) as caught:
        build_version(spec)
    return caught.value.problems


def test_syntax_errors_name_the_part_and_line():
    assert problems({"subject": "Hi", "html": "<p>\n\n\n{{ contact.first_name }</p>"}) == [
        "html line 4: unexpected '}'"
    ]
    found = problems(
        {
            "variants": [
                {"name": "A", "subject": "Hi {% if %}"},
                {"name": "B", "subject": "Ok", "text": "line\n{% for x in y %}"},
            ],
            "html": "<p>fine</p>",
        }
    )
    assert found[0].startswith("variant A subject line 1: ")
    assert found[1].startswith("variant B text line 2: Unexpected end of template")
    assert problems({"subject": "Hi", "html": "<p>{{ 1 / 0 }}</p>"}) == [
        "html line 1: ZeroDivisionError: division by zero"
    ]
    assert "'subject' is required" in problems({"html": "<p>x</p>"})[0]
    assert problems({"subject": "Hi", "html": "<p>x</p>", "from": "nobody"}) == [
        "from: 'nobody' is not an address such as 'Acme <news@acme.com>'"
    ]


def test_the_sandbox_refuses_reaching_python_internals():
    found = problems(
        {"subject": "x", "html": "<p>{{ ''.__class__.__mro__[1].__subclasses__() }}</p>"}
    )
    assert any("'__class__' is not available" in p for p in found)
    assert problems({"subject": "{{ contact['__class__'] }}", "html": "<p>x</p>"}) == [
        "subject line 1: '__class__' is not available in templates"
    ]
    # What the static check cannot see still renders nothing at send time.
    sneaky = '{% set k = "__cla" ~ "ss__" %}<p>[{{ ""|attr(k) }}|{{ contact.items }}]</p>'
    content = build_version({"subject": "x", "html": sneaky})
    version = compile_version(1, None, None, None, content.variants)
    html = render_message(
        version, "A", message_id=1, to_addr="a@b.test", context={"contact": {}}, settings=SETTINGS
    ).raw
    assert b"[|]" in html


def test_css_is_inlined_and_jinja_survives():
    html = """<html><head><style>
      p { color: #c00; } .cta { padding: 8px }
      @media (max-width: 600px) { p { font-size: 18px } }
    </style></head><body>
    <p>Hi {{ contact.first_name | default("there") }}</p>
    <table>
      {% for item in ["one", "two"] %}
      <tr><td class="cta">{{ item }}</td></tr>
      {% endfor %}
    </table>
    <a class="cta"
       href="https://acme.test/{{ contact.stage }}?ref={{ "a b" | urlencode }}&amp;x=1">Go</a>
    </body></html>"""
    (variant,) = build_version({"subject": "Hi", "html": html}).variants
    inlined = variant["html"]
    assert '<p style="color:#c00">Hi {{ contact.first_name | default("there") }}</p>' in inlined
    assert '{% for item in ["one", "two"] %}' in inlined
    assert 'style="padding:8px">{{ item }}</td>' in inlined
    assert (
        'href="https://acme.test/{{ contact.stage }}?ref={{ "a b" | urlencode }}&amp;x=1"'
        in inlined
    )
    assert "@media" in inlined  # rules that cannot be inlined stay in a <style> block
    version = compile_version(1, None, None, None, [variant])
    raw = render_message(
        version,
        "A",
        message_id=1,
        to_addr="a@b.test",
        context=template_context({"stage": "lead"}, {}, None),
        settings=SETTINGS,
        track=False,
    ).raw.decode()
    assert "Hi there" in raw and "one</td>" in raw and "two</td>" in raw
    assert "https://acme.test/lead?ref=3Da%20b&amp;x=3D1" in raw.replace("=\r\n", "")


def test_text_is_derived_from_the_html():
    text = html_to_text(
        "<html><head><style>p{color:red}</style><title>t</title></head><body>"
        "<h1>Hello {{ contact.first_name }}</h1><p>Read <a href='https://a.test/g?x=1&amp;y=2'>"
        "the guide</a>.<br>Thanks</p><ul><li>one</li><li>two</li></ul>"
        "<p><a href='https://a.test/'>https://a.test/</a> <a href='#top'>top</a></p></body></html>"
    )
    assert text == (
        "Hello {{ contact.first_name }}\n\n"
        "Read the guide (https://a.test/g?x=1&y=2).\nThanks\n\n"
        "- one\n- two\n\n"
        "https://a.test/ top\n"
    )
    (variant,) = build_version({"subject": "s", "html": "<p>Hi <b>{{ x }}</b></p>"}).variants
    assert variant["text"] == "Hi {{ x }}\n"


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"p { color: red }")

    def log_message(self, *args) -> None:
        pass


def test_external_stylesheets_are_refused_and_nothing_is_fetched(tmp_path):
    secret_css = tmp_path / "secret.css"
    secret_css.write_text("p { color: red }")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x.css"
    opened: list[str] = []
    watching = True

    def audit(event: str, args: tuple) -> None:
        if watching and event == "open" and "secret.css" in str(args[0]):
            opened.append(str(args[0]))
        if watching and event == "socket.connect":
            opened.append(str(args[1]))

    sys.addaudithook(audit)
    try:
        for html in (
            f'<link rel="stylesheet" href="{secret_css}"><p>x</p>',
            f'<head><link rel=stylesheet href="{url}"></head><p>x</p>',
            f"<style>@import url({url});</style><p>x</p>",
            f'<style>@import "{secret_css}";</style><p>x</p>',
            f"<style>@\\69mport url({url});</style><p>x</p>",
        ):
            found = problems({"subject": "s", "html": html})
            assert found and ("<link>" in found[0] or "@import" in found[0]), found
    finally:
        watching = False
        server.shutdown()
    assert opened == [] and _Recorder.hits == []


def test_saving_writes_a_version_only_when_the_content_changed(app):
    spec = {"subject": ["Hi {{ contact.first_name }}", "Hello"], "html": "<p>x</p>"}
    with app.app_context(), db.engine.begin() as conn:
        template_id, first = save_template(conn, "welcome", spec, utcnow())
        assert save_template(conn, "welcome", dict(spec), utcnow()) == (template_id, None)
        _, second = save_template(conn, "welcome", {**spec, "preheader": "new"}, utcnow())
        rows = conn.execute(
            select(TemplateVersion.id, TemplateVersion.version, TemplateVersion.variants)
        ).all()
        current = conn.execute(select(EmailTemplate.current_version_id)).scalar_one()
    assert [r.version for r in rows] == [1, 2] and current == second != first
    assert [v["name"] for v in rows[0].variants] == ["A", "B"]


RULES = """
templates:
  - name: welcome
    subject:
      - 'Hi {{ contact.first_name | default("there") }}'
      - Welcome aboard
    preheader: Three things to try first
    html_file: mail/welcome.html
    from: Acme <news@acme.test>
    reply_to: sales@acme.test
  - name: digest
    variants:
      - {name: short, subject: Your week}
      - {name: long, subject: "Your week, in detail", html: "<p>Long {{ contact.company }}</p>"}
    html: <p>Short</p>
    text: Short
"""


def test_rules_files_load_templates_and_export_them_back(app, tmp_path):
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "welcome.html").write_text(
        "<style>p{color:red}</style>\n<p>Hi {{ contact.first_name }}</p>\n"
    )
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    with app.app_context():
        with db.engine.begin() as conn:
            counts = apply(conn, parse(RULES, str(path)), str(path))
        assert counts["templates"] == 2
        with db.engine.connect() as conn:
            exported = export(conn)
        again = tmp_path / "again.yaml"
        again.write_text(exported)
        with db.engine.begin() as conn:
            apply(conn, parse(exported, str(again)), str(again))
            apply(conn, parse(RULES, str(path)), str(path))
        versions = db.session.execute(
            select(EmailTemplate.name, TemplateVersion.variants).join(
                TemplateVersion, TemplateVersion.template_id == EmailTemplate.id
            )
        ).all()
    # Loading the export, or the same file again, writes no new version.
    assert sorted(name for name, _ in versions) == ["digest", "welcome"]
    welcome = dict(versions)["welcome"]
    assert [v["subject"] for v in welcome] == [
        'Hi {{ contact.first_name | default("there") }}',
        "Welcome aboard",
    ]
    assert '<p style="color:red">Hi {{ contact.first_name }}</p>' in welcome[0]["html"]
    assert [v["html"].count("Long") for v in dict(versions)["digest"]] == [0, 1]


def test_rules_file_errors_name_the_file_line_and_template_line(tmp_path):
    (tmp_path / "bad.html").write_text("<p>\nHi {{ contact.first_name }</p>\n")
    path = tmp_path / "rules.yaml"
    text = (
        "templates:\n"
        "  - name: a\n    subject: Hi\n    html_file: bad.html\n"
        "  - name: b\n    subject: Hi\n    html_file: ../outside.html\n"
        "  - name: c\n    subject: Hi\n    html: <p>x</p>\n    colour: red\n"
    )
    with pytest.raises(ConfigFileError) as caught:
        parse(text, str(path))
    found = caught.value.problems
    assert found[0] == f"{path}:2: template 'a': html (bad.html) line 2: unexpected '}}'"
    assert found[1].startswith(f"{path}:5: template 'b': 'html_file' '../outside.html' is outside")
    assert found[2].startswith(f"{path}:8: template 'c': unknown field 'colour'")
