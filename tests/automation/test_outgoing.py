"""Queueing messages: one per enrolment step or broadcast recipient, never two."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from automation.outgoing import UnknownTemplate, create_messages
from tests.automation.conftest import store_template
from tracker.db import db
from tracker.email_models import Broadcast, Enrolment, Message, Sequence
from tracker.models import Contact


def _contact(email: str) -> int:
    contact = Contact(email=email, traits={})
    db.session.add(contact)
    db.session.commit()
    return contact.id


def test_a_message_per_enrolment_step_is_created_once(app):
    with app.app_context():
        template_id = store_template("welcome")
        contact_id = _contact("ada@example.com")
        sequence = Sequence(name="nurture", steps=[{"send": "welcome"}])
        db.session.add(sequence)
        db.session.flush()
        enrolment = Enrolment(sequence_id=sequence.id, contact_id=contact_id, cause="test")
        db.session.add(enrolment)
        db.session.commit()
        recipient = {"contact_id": contact_id, "enrolment_id": enrolment.id, "step": 0}
        with db.engine.begin() as conn:
            first = create_messages(conn, "welcome", [recipient], kind="sequence")
        with db.engine.begin() as conn:
            again = create_messages(conn, template_id, [recipient], kind="sequence")
        assert len(first) == 1 and again == []
        message = db.session.get(Message, first[0])
        assert (message.status, message.to_addr, message.variant) == (
            "queued",
            "ada@example.com",
            "A",
        )


def test_a_broadcast_reaches_each_contact_once(app):
    with app.app_context():
        template_id = store_template("news")
        contacts = [_contact(f"c{i}@example.com") for i in range(3)]
        broadcast = Broadcast(name="launch", template_id=template_id)
        db.session.add(broadcast)
        db.session.commit()
        recipients = [{"contact_id": c, "broadcast_id": broadcast.id} for c in contacts]
        with db.engine.begin() as conn:
            assert len(create_messages(conn, "news", recipients, kind="broadcast")) == 3
            assert create_messages(conn, "news", recipients, kind="broadcast") == []
        assert db.session.scalar(select(db.func.count()).select_from(Message)) == 3


def test_unknown_templates_and_variants_are_refused(app):
    with app.app_context():
        store_template("news")
        contact_id = _contact("ada@example.com")
        with db.engine.begin() as conn, pytest.raises(UnknownTemplate):
            create_messages(conn, "nope", [{"contact_id": contact_id}], kind="test")
        with db.engine.begin() as conn, pytest.raises(UnknownTemplate):
            create_messages(conn, "news", [{"contact_id": contact_id}], kind="test", variant="Z")
