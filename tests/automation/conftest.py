"""Real peers for the actions: an SMTP server (aiosmtpd) and an HTTP webhook receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tracker.redis_conn import free_port


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, _Inbox]]:
    """An SMTP server on a free port; yields (SMTP_URL, inbox)."""
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield f"smtp://127.0.0.1:{port}", inbox
    controller.stop()


class WebhookReceiver:
    """Records the webhook calls it gets; answers each with the next status in `statuses`."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append(
                    {"headers": self.headers, "body": body, "json": json.loads(body)}
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def store_template(
    name: str,
    variants: list[dict[str, Any]] | None = None,
    sender: str | None = None,
) -> int:
    """Save a template version straight into the tables (inside an app context); return its id.

    For tests of what happens around sending; the marketer's way in (checking,
    CSS inlining) is `automation load`.
    """
    from sqlalchemy import select

    from tracker.db import db
    from tracker.email_models import EmailTemplate, TemplateVersion

    variants = variants or [
        {
            "name": "A",
            "subject": "Hello {{ contact.first_name }}",
            "html": '<p>Hi {{ contact.first_name }}, <a href="https://example.com/guide">guide</a></p>',
            "text": "Hi {{ contact.first_name }}, read the guide: https://example.com/guide",
        }
    ]
    template = db.session.scalar(select(EmailTemplate).where(EmailTemplate.name == name))
    if template is None:
        template = EmailTemplate(name=name)
        db.session.add(template)
        db.session.flush()
    count = db.session.scalar(
        select(db.func.count()).where(TemplateVersion.template_id == template.id)
    )
    version = TemplateVersion(
        template_id=template.id,
        version=count + 1,
        sender=sender,
        variants=variants,
        source={"variants": variants},
        digest=f"{name}-{count + 1}",
    )
    db.session.add(version)
    db.session.flush()
    template.current_version_id = version.id
    db.session.commit()
    return template.id
