"""Operator commands under `flask --app wsgi`."""

from __future__ import annotations

import json

from sqlalchemy import select

from tests.conftest import event, ingest_all, post_events
from tracker.db import db
from tracker.models import Site


def test_sites_create_prints_the_key_and_the_tag(app):
    result = app.test_cli_runner().invoke(
        args=[
            "sites",
            "create",
            "--name",
            "Acme",
            "--domain",
            "https://WWW.Acme.test/",
            "--domain",
            "acme.test",
            "--respect-dnt",
        ]
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        site = db.session.scalar(select(Site).where(Site.name == "Acme"))
        assert site.domains == ["acme.test", "www.acme.test"]
        assert site.respect_dnt
    assert f"site key: {site.key}" in result.output
    tag = f'<script async src="http://tracker.test/s.js" data-site="{site.key}" data-respect-dnt>'
    assert tag in result.output
    listed = app.test_cli_runner().invoke(args=["sites", "list"])
    assert site.key in listed.output


def test_sites_create_refuses_a_bad_domain(app):
    result = app.test_cli_runner().invoke(
        args=["sites", "create", "--name", "X", "--domain", "not a domain"]
    )
    assert result.exit_code != 0
    assert "not a domain" in result.output
    with app.app_context():
        assert db.session.scalars(select(Site)).all() == []


def test_contacts_show_prints_the_contact_as_json(app, client, site):
    post_events(client, site.key, [event(url="https://example.com/pricing")], visitor="laptop-0001")
    post_events(
        client,
        site.key,
        [event("identify", email="ada@example.com", traits={"first_name": "Ada"})],
        visitor="laptop-0001",
    )
    ingest_all(app)
    result = app.test_cli_runner().invoke(args=["contacts", "show", "ADA@example.com"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["contact"]["email"] == "ada@example.com"
    assert report["contact"]["first_name"] == "Ada"
    assert report["stage"] == "lead" and report["score"] == 0
    assert [v["key"] for v in report["visitors"]] == ["laptop-0001"]
    assert sorted(e["type"] for e in report["events"]) == ["identify", "pageview"]


def test_contacts_show_limits_to_the_last_50_events(app, client, site):
    post_events(client, site.key, [event("identify", email="ada@example.com")])
    for _ in range(3):
        post_events(client, site.key, [event() for _ in range(20)])
    ingest_all(app)
    result = app.test_cli_runner().invoke(args=["contacts", "show", "ada@example.com"])
    assert len(json.loads(result.output)["events"]) == 50


def test_contacts_show_unknown_email_fails_clearly(app):
    result = app.test_cli_runner().invoke(args=["contacts", "show", "nobody@example.com"])
    assert result.exit_code == 1
    assert "no contact has the email 'nobody@example.com'" in result.output


def test_the_demo_makes_a_first_admin_once_and_its_password_logs_in(app, capsys):
    import re

    from tests.conftest import csrf_of
    from tracker.cli import _ensure_demo_site

    with app.app_context():
        _ensure_demo_site()
        first = capsys.readouterr().out
        _ensure_demo_site()
        assert "created" not in capsys.readouterr().out  # never twice, never a new password
    password = re.search(r"admin@closedloop.local, password (\S+)", first).group(1)
    assert "sam.sales@demo.test, password" in first
    client = app.test_client()
    response = client.post(
        "/admin/login",
        data={
            "email": "admin@closedloop.local",
            "password": password,
            "csrf_token": csrf_of(client),
        },
    )
    assert response.status_code == 302


def test_automation_load_says_where_people_in_an_edited_sequence_now_stand(app, tmp_path):
    from datetime import timedelta

    from tracker.email_models import Enrolment, Sequence
    from tracker.models import Contact, utcnow

    templates = (
        "templates:\n"
        "  - {name: welcome, subject: Welcome, html: <p>Welcome</p>}\n"
        "  - {name: pricing, subject: Prices, html: <p>Prices</p>}\n"
    )
    rules = tmp_path / "rules.yaml"

    def load(steps: str):
        rules.write_text(f"{templates}sequences:\n  - name: Drip\n    steps: {steps}\n")
        return app.test_cli_runner().invoke(args=["automation", "load", str(rules)])

    first = load("[{send: welcome}, {wait: 2d}, {send: pricing}, {wait: 1d}, {send: welcome}]")
    assert first.exit_code == 0, first.output
    assert "kept their place" not in first.output  # a new sequence has nobody in it
    with app.app_context():
        drip = db.session.scalar(select(Sequence.id).where(Sequence.name == "Drip"))
        for i, position in enumerate((0, 2, 2, 4)):
            contact = Contact(email=f"p{i}@x.test")
            db.session.add(contact)
            db.session.flush()
            db.session.add(
                Enrolment(
                    sequence_id=drip,
                    contact_id=contact.id,
                    position=position,
                    cause="test",
                    next_at=utcnow() + timedelta(days=1),
                )
            )
        db.session.commit()
    # Pricing goes: the two waiting for it move on to the wait after it.
    edited = load("[{send: welcome}, {wait: 2d}, {wait: 1d}, {send: welcome}]")
    assert edited.exit_code == 0, edited.output
    assert edited.output.splitlines()[1:] == [
        "2 people in sequence 'Drip' kept their place; "
        "2 at a removed step moved on to step 3 (wait 1d)."
    ]
    with app.app_context():
        positions = db.session.scalars(select(Enrolment.position).order_by(Enrolment.id)).all()
        assert positions == [0, 2, 2, 3]
    # The same steps again move nobody, and say nothing of places.
    again = load("[{send: welcome}, {wait: 2d}, {wait: 1d}, {send: welcome}]")
    assert again.exit_code == 0, again.output
    assert "place" not in again.output
