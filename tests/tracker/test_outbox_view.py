"""The local outbox pages: only without SMTP_URL, only from this machine, everything escaped."""

from __future__ import annotations

from email.message import EmailMessage

from automation.mailer import send
from tracker.db import db


def keep(app, subject: str, html: str) -> None:
    message = EmailMessage()
    message["From"] = "Acme <news@acme.test>"
    message["To"] = "ada@example.com"
    message["Subject"] = subject
    message.set_content("plain <text> & more")
    message.add_alternative(html, subtype="html")
    with app.app_context():
        send(message, None)
        db.session.remove()


def test_the_outbox_lists_and_shows_kept_mail_escaped(app, client):
    keep(app, "First", "<p>one</p>")
    keep(app, "<script>alert(1)</script>", '<p>two</p><script>alert("x")</script>')
    listing = client.get("/outbox")
    assert listing.status_code == 200
    page = listing.get_data(as_text=True)
    assert page.index("&lt;script&gt;alert(1)&lt;/script&gt;") < page.index("First")
    assert "<script>alert(1)" not in page
    (second,) = [line for line in page.split('href="')[1:] if "&lt;script" in line][:1]
    path = second.split('"')[0]
    shown = client.get(path).get_data(as_text=True)
    assert "<script>" not in shown
    assert '<iframe sandbox="" ' in shown
    assert 'srcdoc="&lt;p&gt;two&lt;/p&gt;&lt;script&gt;alert(&#34;x&#34;)' in shown
    assert "plain &lt;text&gt; &amp; more" in shown
    assert "Acme &lt;news@acme.test&gt;" in shown


def test_the_outbox_is_hidden_from_other_machines_and_with_smtp(app, client):
    keep(app, "Hello", "<p>x</p>")
    assert client.get("/outbox", environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 404
    assert client.get("/outbox", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 404
    assert client.get("/outbox/999999").status_code == 404
    app.config["SMTP_URL"] = "smtp://127.0.0.1:25"
    assert client.get("/outbox").status_code == 404
