"""Rendering one message: personalisation, tracked links, pixel, unsubscribe, headers, MIME."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

from automation.render import RenderSettings, compile_version, render_message, template_context
from automation.template_source import build_version
from tracker.tokens import read_token, signing_key

KEY = signing_key("test-secret")
SETTINGS = RenderSettings(
    "http://tracker.test", KEY, "Closed Loop <hello@acme.test>", "unsubscribe@acme.test"
)

HTML = """<html><head><style>.btn { background: #0a0; color: #fff }</style></head><body>
<p>Hi {{ contact.first_name | default("there") }} from {{ contact.company.name }}
{{- contact.plan }}!</p>
<p><a class="btn" href="https://acme.test/pricing?utm_source=email&amp;x=1">Pricing</a>
<a href='https://acme.test/guide'>Guide</a> <a href="https://acme.test/pricing?utm_source=email&amp;x=1">again</a>
<a href="mailto:sales@acme.test">Mail us</a> <a href="tel:+123">Call</a> <a href="#top">Top</a>
<a href="{{ contact.website }}">Your site</a></p>
<p>Your owner: {{ owner.name | default("our team") }}</p>
</body></html>"""


def render(context, html=HTML, text=None, **extra):
    spec = {
        "subject": "Hi {{ contact.first_name }} <3",
        "html": html,
        "preheader": "Psst {{ contact.first_name }}",
    }
    if text:
        spec["text"] = text
    spec.update(extra)
    content = build_version(spec)
    version = compile_version(
        7, content.sender, content.reply_to, content.preheader, content.variants
    )
    rendered = render_message(
        version, "A", message_id=1234, to_addr="ada@example.com", context=context, settings=SETTINGS
    )
    return rendered, message_from_bytes(rendered.raw, policy=policy.default)


def test_a_rendered_message_parses_back_with_every_part_and_header():
    context = template_context(
        {"email": "ada@example.com", "first_name": "Ada", "company": None},
        {"plan": "<b>pro</b>", "website": "https://ada.test/"},
        {"name": "Sam", "email": "sam@acme.test"},
    )
    rendered, mail = render(context, reply_to="Sales <sales@acme.test>")
    assert mail.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "text/html"]
    assert mail["From"] == "Closed Loop <hello@acme.test>"
    assert mail["To"] == "ada@example.com" and mail["Reply-To"] == "Sales <sales@acme.test>"
    assert mail["Subject"] == "Hi Ada <3" == rendered.subject
    assert re.fullmatch(r"<cl\.1234\.[0-9a-f]+@acme\.test>", mail["Message-ID"])
    assert mail["Message-ID"] == rendered.message_id and mail["Date"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.fullmatch(
        r"<http://tracker\.test/u/([\w-]+)>, "
        r"<mailto:unsubscribe@acme\.test\?subject=unsubscribe-\1>",
        mail["List-Unsubscribe"],
    )
    assert read_token(KEY, "unsubscribe", unsubscribe.group(1)).message_id == 1234

    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    # Personalisation: escaped in HTML, missing fields empty or their default.
    assert "Hi Ada from &lt;b&gt;pro&lt;/b&gt;!" in html and "Your owner: Sam" in html
    assert "Hi Ada from <b>pro</b>!" in text
    # CSS inlined at save time.
    assert (
        'style="background:#0a0; color:#fff"' in html
        or 'style="background:#0a0;color:#fff"' in html
    )
    # Preheader first in the body, hidden.
    assert re.search(r"<body><div style=\"display:none[^\"]*\">Psst Ada</div>", html)

    hrefs = re.findall(r'href="([^"]+)"', html)
    tracked = [h for h in hrefs if h.startswith("http://tracker.test/c/")]
    assert len(tracked) == 4  # pricing twice, guide, the contact's website
    positions = [read_token(KEY, "click", h.rsplit("/", 1)[1]) for h in tracked]
    assert all(p.message_id == 1234 for p in positions)
    assert rendered.links == [
        "https://acme.test/pricing?utm_source=email&x=1",
        "https://acme.test/guide",
        "https://ada.test/",
    ]
    assert [rendered.links[p.link - 1] for p in positions] == [
        "https://acme.test/pricing?utm_source=email&x=1",
        "https://acme.test/guide",
        "https://acme.test/pricing?utm_source=email&x=1",
        "https://ada.test/",
    ]
    assert "mailto:sales@acme.test" in hrefs and "tel:+123" in hrefs and "#top" in hrefs
    assert not any(h.startswith("https://acme.test") for h in hrefs)
    # The unsubscribe link (added as a footer) and the pixel.
    assert f"http://tracker.test/u/{unsubscribe.group(1)}" in hrefs
    pixel = re.search(r'<img src="http://tracker\.test/o/([\w-]+)\.gif"', html)
    assert read_token(KEY, "open", pixel.group(1)).message_id == 1234
    # The text part: derived from the HTML, its links tracked the same way.
    text_links = re.findall(r"http://tracker\.test/c/([\w-]+)", text)
    assert [read_token(KEY, "click", t).link for t in text_links] == [1, 2, 1, 3]
    assert f"Unsubscribe: http://tracker.test/u/{unsubscribe.group(1)}" in text


def test_a_template_placing_the_unsubscribe_link_gets_no_footer():
    html = '<p>Hi</p><p><a href="{{ unsubscribe_url }}">Stop these</a></p>'
    text = "Hi. Stop: {{ unsubscribe_url }}"
    _, mail = render({"contact": {}}, html=html, text=text)
    body = mail.get_body(("html",)).get_content()
    assert body.count("/u/") == 1 and "Stop these</a>" in body and "Don't want" not in body
    plain = mail.get_body(("plain",)).get_content()
    assert plain.count("/u/") == 1 and "Don't want" not in plain


def test_subjects_cannot_inject_headers_and_non_ascii_is_encoded():
    context = template_context({"first_name": "Zoë\r\nBcc: evil@x.test"}, {}, None)
    rendered, mail = render(context)
    assert mail["Subject"] == "Hi Zoë Bcc: evil@x.test <3"
    assert mail["Bcc"] is None
    assert b"Subject: =?utf-8?" in rendered.raw
