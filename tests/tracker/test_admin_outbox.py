"""The outbox in the admin: marketers see kept mail, escaped; nobody sees it once SMTP is set."""

from __future__ import annotations

from email.message import EmailMessage

from tests.conftest import admin_login, make_app
from tracker.db import db
from tracker.email_models import OutboxMessage


def _keep(app, subject: str) -> int:
    message = EmailMessage()
    message["Subject"] = subject
    message["To"] = "ann@example.com"
    message.set_content("plain words")
    message.add_alternative("<p>html words</p>", subtype="html")
    with app.app_context():
        row = OutboxMessage(to_addr="ann@example.com", subject=subject, raw=message.as_string())
        db.session.add(row)
        db.session.commit()
        return row.id


def test_marketers_read_kept_mail_escaped(app, client):
    row_id = _keep(app, "<script>alert(1)</script> offer")
    admin_login(app, client, role="marketer")
    listing = client.get("/admin/outbox")
    assert listing.status_code == 200 and b'href="/admin/outbox"' in listing.data
    assert b"&lt;script&gt;alert(1)&lt;/script&gt; offer" in listing.data
    assert b"<script>alert" not in listing.data
    page = client.get(f"/admin/outbox/{row_id}")
    assert page.status_code == 200 and b'sandbox=""' in page.data and b"plain words" in page.data
    assert client.get("/admin/outbox/999999").status_code == 404


def test_sales_users_do_not_see_the_outbox(app, client):
    admin_login(app, client, role="sales")
    assert client.get("/admin/outbox").status_code == 403


def test_there_is_no_outbox_when_mail_goes_over_smtp(app, database_url, redis_url):
    app = make_app(database_url, redis_url, SMTP_URL="smtp://127.0.0.1:2525")  # tables emptied
    client = app.test_client()
    admin_login(app, client, role="marketer")
    assert client.get("/admin/outbox").status_code == 404
    assert b'href="/admin/outbox"' not in client.get("/admin/").data  # nor in the menu
