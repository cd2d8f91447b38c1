"""Privacy: export and erase a contact (functions, admin actions, CLI) and truncated IPs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from tests.conftest import admin_login, event, ingest_all, post_events, post_form
from tests.tracker.test_admin_contacts import seed_contact
from tracker.db import db
from tracker.models import Contact, Event, Site, Visitor
from tracker.netaddr import truncate_ip
from tracker.privacy import ERASED_NAME, erase_contact, export_contact
from tracker.sales_models import Opportunity


def _rows_about(app, contact_id: int) -> dict[str, int]:
    """Rows of every table with a foreign key to contacts that still name this contact."""
    found = {}
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for fk in table.foreign_keys:
                if fk.column.table.name == "contacts":
                    count = db.session.scalar(
                        select(func.count()).select_from(table).where(fk.parent == contact_id)
                    )
                    found[f"{table.name}.{fk.parent.name}"] = count
    return found


def _count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def test_export_holds_everything_known_and_is_json(app):
    contact_id = seed_contact(app)
    with app.app_context():
        data = export_contact(contact_id)
        assert export_contact(999_999) is None
    text = json.dumps(data)  # nothing that JSON cannot hold
    assert json.loads(text)["contact"]["email"] == "ada@acme.test"
    assert data["contact"]["traits"] == {"plan": "pro"}
    assert data["owner"]["name"] == "Owner of ada@acme.test"
    assert data["tags"] == ["vip"]
    assert [s["segment"] for s in data["segments"]] == ["Hot ada@acme.test"]
    assert len(data["visitors"]) == 1 and data["visitors"][0]["utm_source"] == "news"
    # Seven web events, the anonymous page view of its browser, two opens and a click.
    assert len(data["events"]) == 11
    assert {"Anon", "Pricing"} <= {e["title"] for e in data["events"]}
    assert data["points"][0]["rule"] == "Pricing page ada@acme.test"
    assert data["stage_changes"][0]["to_stage"] == "mql"
    assert data["messages"][0]["subject"] == "Hello Ada"
    assert data["enrolments"][0]["sequence"] == "Nurture ada@acme.test"
    assert data["enrolments"][0]["log"][0]["action"] == "entered"
    assert data["notes"][0]["body"] == "Called, keen"
    assert data["opportunities"][0]["amount"] == "1200.50"
    assert data["lead_actions"][0]["action"] == "accept"
    assert data["segment_changes"][0]["change"] == "join"


def test_erase_removes_the_person_keeps_the_revenue_and_spares_others(app):
    contact_id = seed_contact(app)
    other_id = seed_contact(app, email="bob@acme.test")
    before_other = _rows_about(app, other_id)
    other_events = _count(app, Event, Event.contact_id == other_id)
    with app.app_context():
        counts = erase_contact(contact_id)
        assert erase_contact(contact_id) is None
    assert counts["events"] == 11 and counts["messages"] == 1 and counts["visitors"] == 1
    assert counts["points_log"] == 1 and counts["contact_notes"] == 1 and counts["outbox"] == 1
    assert counts["opportunities_anonymised"] == 1 and counts["contacts"] == 1
    # Nothing anywhere still names the erased contact, whatever tables exist.
    assert set(_rows_about(app, contact_id).values()) == {0}
    with app.app_context():
        deal = db.session.scalars(select(Opportunity).where(Opportunity.contact_id.is_(None))).one()
        assert deal.name == ERASED_NAME and str(deal.amount) == "1200.50" and deal.stage == "won"
        assert db.session.scalar(select(Contact.email).where(Contact.id == other_id))
    # The other contact kept everything.
    assert _rows_about(app, other_id) == before_other
    assert _count(app, Event, Event.contact_id == other_id) == other_events


def test_admin_export_is_a_json_download_for_admins_only(app, client):
    contact_id = seed_contact(app)
    admin_login(app, client)
    response = client.get(f"/admin/contacts/{contact_id}/export.json")
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="contact-{contact_id}.json"'
    )
    assert response.get_json()["contact"]["email"] == "ada@acme.test"
    assert client.get("/admin/contacts/999999/export.json").status_code == 404
    with app.test_client() as marketer:
        admin_login(app, marketer, role="marketer")
        assert marketer.get(f"/admin/contacts/{contact_id}/export.json").status_code == 403
        path = f"/admin/contacts/{contact_id}"
        response = post_form(marketer, f"{path}/erase", {"confirm": "ada@acme.test"}, page=path)
        assert response.status_code == 403
    assert _count(app, Contact, Contact.id == contact_id) == 1


def test_admin_erase_needs_the_email_typed_again(app, client):
    contact_id = seed_contact(app)
    admin_login(app, client)
    path = f"/admin/contacts/{contact_id}"
    for typed in ("", "someone@else.test"):
        response = post_form(client, f"{path}/erase", {"confirm": typed}, page=path)
        assert response.status_code == 400
        assert "type the contact&#39;s email address exactly" in response.get_data(as_text=True)
    assert _count(app, Contact, Contact.id == contact_id) == 1
    response = post_form(client, f"{path}/erase", {"confirm": " ADA@acme.test "}, page=path)
    assert response.status_code == 302 and response.headers["Location"].endswith("erased=1")
    assert _count(app, Contact, Contact.id == contact_id) == 0
    assert "The contact was erased" in client.get(response.headers["Location"]).get_data(
        as_text=True
    )
    assert client.get(path).status_code == 404


def test_cli_export_and_erase(app):
    contact_id = seed_contact(app)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["contacts", "export", "ADA@acme.test"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["contact"]["id"] == contact_id
    missing = runner.invoke(args=["contacts", "export", "nobody@acme.test"])
    assert missing.exit_code != 0 and "no contact has the email" in missing.output
    refused = runner.invoke(args=["contacts", "erase", "ada@acme.test"], input="n\n")
    assert refused.exit_code != 0 and "Erase ada@acme.test" in refused.output
    assert _count(app, Contact, Contact.id == contact_id) == 1
    confirmed = runner.invoke(args=["contacts", "erase", "ada@acme.test"], input="y\n")
    assert confirmed.exit_code == 0 and "contacts 1" in confirmed.output
    assert _count(app, Contact, Contact.id == contact_id) == 0
    other = seed_contact(app, email="bob@acme.test")
    result = runner.invoke(args=["contacts", "erase", "bob@acme.test", "--yes"])
    assert result.exit_code == 0 and "events 11" in result.output
    assert _count(app, Contact, Contact.id == other) == 0


@pytest.mark.parametrize(
    ("address", "kept"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("10.1.2.3", "10.1.2.0"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("::1", "::"),
        ("", ""),
        ("not an address", ""),
        ("1.2.3", ""),
    ],
)
def test_truncate_ip_keeps_the_network_part(address, kept):
    assert truncate_ip(address) == kept


def _stored_ips(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(Event.ip).order_by(Event.id)))


def test_collection_stores_truncated_ips_unless_the_site_turns_it_off(app, client, site):
    post_events(client, site.key, [event()], remote_addr="203.0.113.77")
    ingest_all(app)
    assert _stored_ips(app) == ["203.0.113.0"]
    with app.app_context():
        db.session.get(Site, site.id).truncate_ips = False
        db.session.commit()
    # SITE_CACHE_SECONDS is 0 in tests: collection sees the change at once.
    post_events(client, site.key, [event()], remote_addr="2001:db8:abcd:12::5")
    ingest_all(app)
    assert _stored_ips(app) == ["203.0.113.0", "2001:db8:abcd:12::5"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Visitor)) == 1


def test_new_sites_truncate_by_default(app, site):
    with app.app_context():
        assert db.session.get(Site, site.id).truncate_ips is True
        assert app.extensions["sites"].get(site.key).truncate_ips is True
