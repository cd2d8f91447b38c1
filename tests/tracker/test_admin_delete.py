"""Delete actions of the admin: a confirmation page, then a POST that deletes or explains why not.

For each kind: the success path (the row gone, what depended on it handled),
every refusal (409, nothing changed), a POST without the CSRF token (400), a
role that may not (403), and a GET that deletes nothing.
"""

from __future__ import annotations

import re
import uuid
from datetime import date
from decimal import Decimal
from html import unescape

import pytest
from sqlalchemy import func, select

from tests.conftest import admin_login, csrf_of, make_user, post_form
from tracker.automation_models import (
    ActionRun,
    DecayPolicy,
    PointsEntry,
    ScoringRule,
    Segment,
    SegmentChange,
    SegmentMember,
    StageChange,
    Threshold,
    ThresholdState,
    Webhook,
)
from tracker.db import db
from tracker.email_models import EmailTemplate, Message, TemplateVersion
from tracker.models import Contact, Event, Site, User, Visitor, utcnow
from tracker.sales_models import Campaign, CampaignCost, ContactNote, LeadAction, Opportunity

XSS = '<script>alert("x")</script>'

TEMPLATE = """\
templates:
  - name: {name}
    subject: {subject}
    html: "<p>Hello</p>"
"""


def load(app, text: str) -> None:
    """Configure through `automation load`'s path."""
    from automation.config_file import parse
    from automation.config_store import apply

    with app.app_context(), db.engine.begin() as conn:
        apply(conn, parse(text, "test.yaml"), "test.yaml")


def add(app, *rows) -> list[int]:
    """Store ORM rows; return their ids."""
    with app.app_context():
        db.session.add_all(rows)
        db.session.commit()
        return [getattr(row, "id", None) for row in rows]


def id_of(app, model, name: str) -> int:
    with app.app_context():
        return db.session.scalar(select(model.id).where(model.name == name))


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def value(app, column, *where):
    with app.app_context():
        return db.session.scalar(select(column).where(*where))


def text_of(response) -> str:
    return unescape(re.sub(r"\s+", " ", response.get_data(as_text=True)))


def blockers(response) -> str:
    """The box that says why the item cannot be deleted, as text."""
    page = response.get_data(as_text=True)
    match = re.search(r'<div class="error" id="blockers">(.*?)</div>', page, re.S)
    assert match, page
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1))))


def delete(client, path: str, **data):
    """Confirm on the delete page: POST it with the session's CSRF token."""
    return post_form(client, path, {"confirm": "yes", **data}, page="/admin/")


def contact(app, email: str = "ann@example.com", **fields) -> int:
    return add(app, Contact(email=email, traits={}, **fields))[0]


@pytest.fixture
def marketer(app, client):
    admin_login(app, client, role="marketer")
    return client


@pytest.fixture
def admin(app, client):
    admin_login(app, client, role="admin")
    return client


@pytest.fixture
def sales(app, client):
    admin_login(app, client, role="sales")
    return client


# ---------------------------------------------------------------- segments

SEGMENTS = """\
segments:
  - name: Pricing fans
    match: {tag: pricing}
"""


def test_a_segment_goes_with_its_memberships_after_the_confirmation(app, marketer):
    load(app, SEGMENTS)
    segment_id = id_of(app, Segment, "Pricing fans")
    ann = contact(app)
    add(
        app,
        SegmentMember(segment_id=segment_id, contact_id=ann),
        SegmentChange(segment_id=segment_id, contact_id=ann, change="join"),
    )
    path = f"/admin/segments/{segment_id}/delete"
    assert f'href="{path}"' in marketer.get(f"/admin/segments/{segment_id}").get_data(as_text=True)
    page = marketer.get(path)
    assert page.status_code == 200
    assert "memberships (1)" in text_of(page) and 'id="delete-form"' in text_of(page)
    assert count(app, Segment) == 1 and count(app, SegmentMember) == 1  # GET deleted nothing
    response = delete(marketer, path)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/segments"
    assert count(app, Segment) == 0
    assert count(app, SegmentMember) == 0 and count(app, SegmentChange) == 0
    assert count(app, Contact) == 1
    assert "Deleted the segment 'Pricing fans'." in text_of(marketer.get("/admin/segments"))


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        (
            "sequences:\n  - name: Nurture\n    entry: {segment: Pricing fans}\n"
            "    steps:\n      - send: welcome\n",
            "it is the entry segment of the sequence 'Nurture'",
        ),
        (
            "broadcasts:\n  - name: Spring\n    template: welcome\n    segment: Pricing fans\n",
            "it is the target of the broadcast 'Spring'",
        ),
        (
            "thresholds:\n  - name: Hot fans\n    at_least: 10\n    segment: Pricing fans\n"
            "    actions: [notify_owner]\n",
            "it limits the threshold 'Hot fans' to its members",
        ),
        (
            "segments:\n  - name: Hot fans\n    match: {all: [{in_segment: Pricing fans}, "
            "{not: {tag: cold}}]}\n",
            "it is used in the rules of the segment 'Hot fans' (in_segment: Pricing fans)",
        ),
    ],
)
def test_a_segment_something_uses_is_refused_and_kept(app, marketer, rules, says):
    load(app, SEGMENTS + TEMPLATE.format(name="welcome", subject="Hi"))
    load(app, rules)
    segment_id = id_of(app, Segment, "Pricing fans")
    add(app, SegmentMember(segment_id=segment_id, contact_id=contact(app)))
    path = f"/admin/segments/{segment_id}/delete"
    page = marketer.get(path)
    assert page.status_code == 200 and says in blockers(page)
    assert 'id="delete-form"' not in page.get_data(as_text=True)
    response = delete(marketer, path)
    assert response.status_code == 409
    assert says in blockers(response) and "Nothing was deleted" in text_of(response)
    assert id_of(app, Segment, "Pricing fans") == segment_id
    assert count(app, SegmentMember) == 1


def test_a_reference_written_meanwhile_makes_the_database_refuse_and_nothing_changes(
    app, marketer, monkeypatch
):
    """A member added between the plan and the delete: the foreign key refuses, 409."""
    from sqlalchemy import delete as delete_rows

    from automation import removal_config
    from automation.removal import Plan

    load(app, SEGMENTS)
    segment_id = id_of(app, Segment, "Pricing fans")
    add(app, SegmentMember(segment_id=segment_id, contact_id=contact(app)))
    monkeypatch.setattr(
        removal_config,
        "plan_segment",
        lambda conn, item_id: Plan(
            "segment",
            "Pricing fans",
            statements=[delete_rows(Segment).where(Segment.id == item_id)],
        ),
    )
    response = delete(marketer, f"/admin/segments/{segment_id}/delete")
    assert response.status_code == 409
    assert "something started using the segment while it was being deleted" in text_of(response)
    assert id_of(app, Segment, "Pricing fans") == segment_id
    assert count(app, SegmentMember) == 1


# ---------------------------------------------------------------- scoring rules

RULES = """\
rules:
  - name: Visited pricing
    event: pageview
    when: {path: /pricing}
    points: 10
  - name: Unused
    event: pageview
    points: 1
"""


def test_an_unused_scoring_rule_is_deleted(app, marketer):
    load(app, RULES)
    rule_id = id_of(app, ScoringRule, "Unused")
    path = f"/admin/configure/rules/{rule_id}/delete"
    assert f'href="{path}"' in marketer.get(f"/admin/configure/rules/{rule_id}").get_data(
        as_text=True
    )
    assert marketer.get(path).status_code == 200
    assert count(app, ScoringRule) == 2
    response = delete(marketer, path)
    assert response.headers["Location"] == "/admin/configure/rules"
    assert id_of(app, ScoringRule, "Unused") is None
    assert id_of(app, ScoringRule, "Visited pricing") is not None


def test_a_rule_that_awarded_points_is_refused_and_disabling_is_offered(app, marketer):
    load(app, RULES)
    rule_id = id_of(app, ScoringRule, "Visited pricing")
    ann = contact(app, score=10, engagement_score=10)
    add(
        app,
        PointsEntry(contact_id=ann, rule_id=rule_id, kind="engagement", delta=10, reason="rule"),
    )
    path = f"/admin/configure/rules/{rule_id}/delete"
    response = delete(marketer, path)
    assert response.status_code == 409
    assert "it awarded points (1 time, to 1 contact)" in blockers(response)
    assert "disable it instead" in blockers(response)
    disable = f"/admin/configure/rules/{rule_id}/disable"
    assert f'action="{disable}"' in response.get_data(as_text=True)
    assert count(app, ScoringRule, ScoringRule.id == rule_id) == 1
    assert count(app, PointsEntry, PointsEntry.rule_id == rule_id) == 1
    # The contact's timeline still names the rule behind the points.
    timeline = text_of(marketer.get(f"/admin/contacts/{ann}"))
    assert "because of rule “Visited pricing”" in timeline
    done = post_form(marketer, disable, {}, page="/admin/")
    assert done.status_code == 302
    assert value(app, ScoringRule.enabled, ScoringRule.id == rule_id) is False
    assert "Disabled the rule 'Visited pricing': it awards no more points." in text_of(
        marketer.get(done.location)
    )
    # Disabled, the page says so and offers nothing more to press.
    again = marketer.get(path)
    assert "it is disabled" in blockers(again) and disable not in again.get_data(as_text=True)


def test_webhooks_have_no_disable_switch(app, marketer):
    load(
        app,
        "webhooks:\n  - name: CRM\n    url: https://crm.example.com/h\n    secret: s" + "x" * 20,
    )
    hook = id_of(app, Webhook, "CRM")
    assert (
        post_form(marketer, f"/admin/configure/webhooks/{hook}/disable", {}, "/admin/").status_code
        == 404
    )


# ---------------------------------------------------------------- thresholds, decay, webhooks

THRESHOLDS = """\
webhooks:
  - name: CRM
    url: https://crm.example.com/hooks
    secret: at-least-sixteen-characters
  - name: Spare
    url: https://spare.example.com/hooks
    secret: at-least-sixteen-characters
thresholds:
  - name: Marketing qualified
    at_least: 50
    actions:
      - set_stage: mql
      - webhook: CRM
decay:
  - name: Forget old interest
    expire_after_days: 90
"""


def test_a_threshold_goes_with_its_states_and_action_records_but_not_what_they_did(app, marketer):
    load(app, THRESHOLDS)
    threshold_id = id_of(app, Threshold, "Marketing qualified")
    ann = contact(app, stage="mql")
    add(
        app,
        ThresholdState(threshold_id=threshold_id, contact_id=ann, above=True, fired=1),
        ActionRun(
            threshold_id=threshold_id,
            contact_id=ann,
            firing=1,
            position=0,
            type="set_stage",
            status="done",
        ),
        ActionRun(
            threshold_id=threshold_id,
            contact_id=ann,
            firing=1,
            position=1,
            type="webhook",
            status="queued",
        ),
        StageChange(
            contact_id=ann, from_stage="lead", to_stage="mql", cause="threshold Marketing qualified"
        ),
    )
    path = f"/admin/configure/thresholds/{threshold_id}/delete"
    page = text_of(marketer.get(path))
    assert "its queued actions (1) will not run" in page
    assert "where each contact stands against it (1) is forgotten" in page
    assert count(app, ActionRun) == 2
    response = delete(marketer, path)
    assert response.headers["Location"] == "/admin/configure/thresholds"
    assert count(app, Threshold) == 0
    assert count(app, ThresholdState) == 0 and count(app, ActionRun) == 0
    assert value(app, StageChange.cause, StageChange.contact_id == ann) == (
        "threshold Marketing qualified"
    )
    assert value(app, Contact.stage, Contact.id == ann) == "mql"


def test_a_decay_policy_is_deleted(app, marketer):
    load(app, THRESHOLDS)
    policy_id = id_of(app, DecayPolicy, "Forget old interest")
    response = delete(marketer, f"/admin/configure/decay/{policy_id}/delete")
    assert response.status_code == 302 and count(app, DecayPolicy) == 0


def test_a_webhook_a_threshold_calls_is_refused_an_unused_one_deleted(app, marketer):
    load(app, THRESHOLDS)
    crm, spare = id_of(app, Webhook, "CRM"), id_of(app, Webhook, "Spare")
    response = delete(marketer, f"/admin/configure/webhooks/{crm}/delete")
    assert response.status_code == 409
    assert "it is called by the threshold 'Marketing qualified'" in blockers(response)
    assert "take the 'webhook: CRM' action out of them first" in blockers(response)
    assert id_of(app, Webhook, "CRM") == crm
    assert delete(marketer, f"/admin/configure/webhooks/{spare}/delete").status_code == 302
    assert id_of(app, Webhook, "Spare") is None


def test_unknown_sections_and_items_are_not_found(app, marketer):
    load(app, THRESHOLDS)
    assert marketer.get("/admin/configure/sequences/1/delete").status_code == 404
    assert marketer.get("/admin/configure/rules/999/delete").status_code == 404
    assert delete(marketer, "/admin/segments/999/delete").status_code == 404


# ---------------------------------------------------------------- email templates


def test_a_template_goes_with_its_versions_and_leaves_the_campaigns(app, marketer):
    load(app, TEMPLATE.format(name="welcome", subject="Hi"))
    load(app, TEMPLATE.format(name="welcome", subject="Hi again"))
    load(app, TEMPLATE.format(name="other", subject="Other"))
    welcome, other = id_of(app, EmailTemplate, "welcome"), id_of(app, EmailTemplate, "other")
    assert count(app, TemplateVersion, TemplateVersion.template_id == welcome) == 2
    (campaign,) = add(app, Campaign(name="Spring", channel="email", template_ids=[welcome, other]))
    path = f"/admin/templates/{welcome}/delete"
    assert f'href="{path}"' in marketer.get(f"/admin/templates/{welcome}").get_data(as_text=True)
    page = text_of(marketer.get(path))
    assert "its versions (2) go with it" in page
    assert "it is taken out of the emails of the campaign 'Spring'" in page
    response = delete(marketer, path)
    assert response.headers["Location"] == "/admin/templates"
    assert id_of(app, EmailTemplate, "welcome") is None
    assert count(app, TemplateVersion, TemplateVersion.template_id == welcome) == 0
    assert value(app, Campaign.template_ids, Campaign.id == campaign) == [other]
    assert count(app, TemplateVersion, TemplateVersion.template_id == other) == 1


def _sent_with(app, name: str, kind: str = "broadcast", email: str = "ann@example.com") -> None:
    from automation.outgoing import create_messages

    recipient = contact(app, email)
    with app.app_context(), db.engine.begin() as conn:
        create_messages(conn, name, [{"contact_id": recipient}], kind=kind)


def test_a_template_only_ever_test_sent_goes_with_its_test_sends(app, marketer):
    load(app, TEMPLATE.format(name="welcome", subject="Hi"))
    template_id = id_of(app, EmailTemplate, "welcome")
    _sent_with(app, "welcome", kind="test")
    path = f"/admin/templates/{template_id}/delete"
    assert "its test sends (1 message) go with it" in text_of(marketer.get(path))
    assert delete(marketer, path).status_code == 302
    assert id_of(app, EmailTemplate, "welcome") is None
    assert count(app, Message) == 0 and count(app, TemplateVersion) == 0


def test_test_sends_do_not_let_a_template_that_sent_mail_go(app, marketer):
    load(app, TEMPLATE.format(name="welcome", subject="Hi"))
    template_id = id_of(app, EmailTemplate, "welcome")
    _sent_with(app, "welcome", kind="test")
    _sent_with(app, "welcome", email="bob@example.com")
    response = delete(marketer, f"/admin/templates/{template_id}/delete")
    assert response.status_code == 409
    assert "it was used for 1 message (1 broadcast)" in blockers(response)
    assert count(app, Message) == 2 and id_of(app, EmailTemplate, "welcome") == template_id


@pytest.mark.parametrize(
    ("setup", "says"),
    [
        (_sent_with, "it was used for 1 message (1 broadcast)"),
        (
            lambda app, name: load(
                app, f"sequences:\n  - name: Welcome series\n    steps:\n      - send: {name}\n"
            ),
            "it is sent by the sequence 'Welcome series'",
        ),
        (
            lambda app, name: load(
                app, f"broadcasts:\n  - name: Spring news\n    template: {name}\n"
            ),
            "it is sent by the broadcast 'Spring news'",
        ),
        (
            lambda app, name: load(
                app,
                "segments:\n  - name: Openers\n    match: {email: {action: opened, template: "
                f"{id_of(app, EmailTemplate, name)}}}}}\n",
            ),
            "its opens or clicks are looked at by the segment 'Openers'",
        ),
    ],
)
def test_a_template_that_sent_mail_or_that_something_sends_is_refused(app, marketer, setup, says):
    load(app, TEMPLATE.format(name="welcome", subject="Hi"))
    template_id = id_of(app, EmailTemplate, "welcome")
    setup(app, "welcome")
    response = delete(marketer, f"/admin/templates/{template_id}/delete")
    assert response.status_code == 409 and says in blockers(response)
    assert id_of(app, EmailTemplate, "welcome") == template_id
    assert count(app, TemplateVersion) == 1


# ---------------------------------------------------------------- sites


def test_a_site_that_collected_nothing_is_deleted(app, admin, site):
    path = f"/admin/sites/{site.id}/delete"
    assert f'href="{path}"' in admin.get(f"/admin/sites/{site.id}").get_data(as_text=True)
    assert admin.get(path).status_code == 200 and count(app, Site) == 1
    response = delete(admin, path)
    assert response.headers["Location"] == "/admin/sites" and count(app, Site) == 0
    assert "Deleted the site 'Example'." in text_of(admin.get("/admin/sites"))


def test_a_site_with_visitors_and_events_or_named_by_rules_is_refused(app, admin, site):
    now = utcnow()
    (visitor,) = add(app, Visitor(site_id=site.id, key="v1", first_seen=now, last_seen=now))
    add(
        app,
        *[
            Event(
                uuid=uuid.uuid4(),
                site_id=site.id,
                visitor_id=visitor,
                type="pageview",
                occurred_at=now,
            )
            for _ in range(3)
        ],
    )
    load(
        app,
        f"rules:\n  - name: Example visits\n    event: pageview\n    site: {site.key}\n"
        "    points: 1\n"
        "segments:\n  - name: Example visitors\n"
        f"    match: {{visited: {{path: /, site: {site.id}}}}}\n",
    )
    response = delete(admin, f"/admin/sites/{site.id}/delete")
    assert response.status_code == 409
    said = blockers(response)
    assert "it collected 1 visitor and 3 events" in said
    assert "take its tag off the pages" in said
    assert "it is named by the scoring rule 'Example visits'" in said
    assert "its visits are looked at by the segment 'Example visitors'" in said
    assert count(app, Site) == 1 and count(app, Event) == 3


def test_sites_are_deleted_by_admins_only(app, client, site):
    admin_login(app, client, role="marketer")
    path = f"/admin/sites/{site.id}/delete"
    assert client.get(path).status_code == 403
    assert delete(client, path).status_code == 403
    assert count(app, Site) == 1


# ---------------------------------------------------------------- users


def _sales_history(app, user_id: int) -> dict[str, int]:
    ann = contact(app, owner_id=user_id, stage="sql")
    (deal,) = add(
        app, Opportunity(contact_id=ann, owner_id=user_id, name="Deal", amount=Decimal(100))
    )
    add(
        app,
        ContactNote(contact_id=ann, author_id=user_id, body="called, keen"),
        LeadAction(contact_id=ann, user_id=user_id, action="accept"),
    )
    return {"contact": ann, "deal": deal}


def test_a_deleted_users_leads_and_deals_go_to_the_chosen_user_and_notes_stay(app, admin):
    bob = make_user(app, "sales", email="bob@example.com")
    eve = make_user(app, "sales", email="eve@example.com")
    made = _sales_history(app, bob)
    path = f"/admin/users/{bob}/delete"
    assert f'href="{path}"' in admin.get("/admin/users").get_data(as_text=True)
    page = admin.get(path)
    assert page.status_code == 200
    assert "their leads (1) and opportunities (1) become unowned" in text_of(page)
    assert f'<option value="{eve}">' in page.get_data(as_text=True)
    assert f'<option value="{bob}">' not in page.get_data(as_text=True)
    response = delete(admin, path, hand_to=str(eve))
    assert response.headers["Location"] == "/admin/users"
    assert count(app, User, User.id == bob) == 0
    assert value(app, Contact.owner_id, Contact.id == made["contact"]) == eve
    assert value(app, Opportunity.owner_id, Opportunity.id == made["deal"]) == eve
    assert value(app, ContactNote.body, ContactNote.contact_id == made["contact"]) == "called, keen"
    assert value(app, ContactNote.author_id, ContactNote.contact_id == made["contact"]) is None
    assert value(app, LeadAction.user_id, LeadAction.contact_id == made["contact"]) is None
    timeline = text_of(admin.get(f"/admin/contacts/{made['contact']}"))
    assert "a deleted user" in timeline


def test_without_a_choice_the_leads_become_unowned_and_the_user_is_logged_out(app, admin):
    bob = make_user(app, "sales", email="bob@example.com")
    made = _sales_history(app, bob)
    bobs = app.test_client()
    bobs.post(
        "/admin/login",
        data={
            "email": "bob@example.com",
            "password": "correct horse 9",
            "csrf_token": csrf_of(bobs),
        },
    )
    assert bobs.get("/admin/").status_code == 200
    assert delete(admin, f"/admin/users/{bob}/delete").status_code == 302
    assert bobs.get("/admin/").status_code == 302  # to the login page
    assert value(app, Contact.owner_id, Contact.id == made["contact"]) is None
    assert value(app, Opportunity.owner_id, Opportunity.id == made["deal"]) is None


@pytest.mark.parametrize("hand_to", ["abc", "999", "self", "inactive", "marketer"])
def test_handing_leads_to_someone_not_on_the_list_is_a_bad_request(app, admin, hand_to):
    bob = make_user(app, "sales", email="bob@example.com")
    made = _sales_history(app, bob)
    others = {
        "self": bob,
        "inactive": make_user(app, "sales", email="gone@example.com"),
        "marketer": make_user(app, "marketer", email="m@example.com"),
    }
    with app.app_context():
        db.session.get(User, others["inactive"]).active = False
        db.session.commit()
    response = delete(
        admin, f"/admin/users/{bob}/delete", hand_to=str(others.get(hand_to, hand_to))
    )
    assert response.status_code == 400 and "choose whom their leads" in text_of(response)
    assert count(app, User, User.id == bob) == 1
    assert value(app, Contact.owner_id, Contact.id == made["contact"]) == bob


def test_admins_cannot_delete_themselves_nor_someone_a_threshold_assigns_to(app, client):
    me = admin_login(app, client, role="admin")
    response = delete(client, f"/admin/users/{me}/delete")
    assert response.status_code == 409
    assert "you cannot delete yourself" in blockers(response)
    users_page = client.get("/admin/users").get_data(as_text=True)
    assert f'href="/admin/users/{me}/delete"' not in users_page
    bob = make_user(app, "sales", email="Bob@Example.com".lower())
    load(
        app,
        "thresholds:\n  - name: To Bob\n    at_least: 5\n"
        "    actions:\n      - assign_owner: ' BOB@example.com'\n",
    )
    response = delete(client, f"/admin/users/{bob}/delete")
    assert response.status_code == 409
    assert "leads are assigned to them by the threshold 'To Bob'" in blockers(response)
    # Deactivating is offered instead, and works.
    assert f'action="/admin/users/{bob}/deactivate"' in response.get_data(as_text=True)
    assert count(app, User) == 2


def test_the_last_active_admin_cannot_be_deleted(app):
    from automation.removal import RemovalRefused, carry_out
    from automation.removal_records import plan_user

    only = make_user(app, "admin", email="only@example.com")
    other = make_user(app, "admin", email="other@example.com")
    with app.app_context():
        db.session.get(User, other).active = False
        db.session.commit()
        conn = db.session.connection()
        plan = plan_user(conn, only, other, None, utcnow())
        assert "they are the last active admin: make another admin first" in plan.blockers
        with pytest.raises(RemovalRefused):
            carry_out(conn, plan)
        db.session.rollback()
    assert count(app, User) == 2


def test_users_are_deleted_by_admins_only(app, client):
    admin_login(app, client, role="marketer")
    bob = make_user(app, "sales", email="bob@example.com")
    assert client.get(f"/admin/users/{bob}/delete").status_code == 403
    assert delete(client, f"/admin/users/{bob}/delete").status_code == 403
    assert count(app, User, User.id == bob) == 1


# ---------------------------------------------------------------- campaigns


def test_a_campaign_goes_with_its_costs_and_its_deals_are_attributed_again(app, marketer):
    ann = contact(app)
    (spring, autumn) = add(
        app,
        Campaign(name="Spring", channel="email", utm_campaigns=["spring"]),
        Campaign(name="Autumn", channel="email", utm_campaigns=["autumn"]),
    )
    add(
        app,
        CampaignCost(
            campaign_id=spring,
            starts_on=date(2025, 1, 1),
            ends_on=date(2025, 1, 31),
            amount=Decimal(500),
        ),
        CampaignCost(
            campaign_id=autumn,
            starts_on=date(2025, 9, 1),
            ends_on=date(2025, 9, 30),
            amount=Decimal(700),
        ),
    )
    chosen, attributed, elsewhere = add(
        app,
        Opportunity(
            contact_id=ann,
            name="Chosen",
            amount=Decimal(1),
            campaign_id=spring,
            campaign_source="manual",
        ),
        Opportunity(contact_id=ann, name="Auto", amount=Decimal(2), campaign_id=spring),
        Opportunity(
            contact_id=ann,
            name="Autumn deal",
            amount=Decimal(3),
            campaign_id=autumn,
            campaign_source="manual",
        ),
    )
    path = f"/admin/campaigns/{spring}/delete"
    assert f'href="{path}"' in marketer.get(f"/admin/campaigns/{spring}").get_data(as_text=True)
    page = text_of(marketer.get(path))
    assert "its cost periods (1) go with it" in page
    assert "its opportunities (2, 1 chosen by hand) lose it" in page
    assert count(app, Campaign) == 2
    response = delete(marketer, path)
    assert response.headers["Location"] == "/admin/campaigns"
    assert count(app, Campaign) == 1 and count(app, CampaignCost) == 1
    for deal in (chosen, attributed):
        assert value(app, Opportunity.campaign_id, Opportunity.id == deal) is None
        assert value(app, Opportunity.campaign_source, Opportunity.id == deal) == "auto"
    assert value(app, Opportunity.campaign_id, Opportunity.id == elsewhere) == autumn
    assert value(app, Opportunity.campaign_source, Opportunity.id == elsewhere) == "manual"


# ---------------------------------------------------------------- opportunities


def test_an_owner_deletes_their_opportunity_others_may_not(app, client):
    bob = admin_login(app, client, role="sales")
    eve = make_user(app, "sales", email="eve@example.com")
    ann = contact(app, owner_id=bob, stage="opportunity")
    mine, theirs = add(
        app,
        Opportunity(contact_id=ann, owner_id=bob, name="Mine", amount=Decimal("1200.50")),
        Opportunity(contact_id=ann, owner_id=eve, name="Theirs", amount=Decimal(1)),
    )
    path = f"/admin/opportunities/{mine}/delete"
    assert f'href="{path}"' in client.get(f"/admin/opportunities/{mine}").get_data(as_text=True)
    assert "the reports lose its amount of 1,200.50 (open)" in text_of(client.get(path))
    assert client.get(f"/admin/opportunities/{theirs}/delete").status_code == 403
    assert delete(client, f"/admin/opportunities/{theirs}/delete").status_code == 403
    response = delete(client, path)
    assert response.headers["Location"].startswith("/admin/opportunities")
    assert count(app, Opportunity, Opportunity.id == mine) == 0
    assert count(app, Opportunity, Opportunity.id == theirs) == 1
    assert value(app, Contact.stage, Contact.id == ann) == "opportunity"


def test_admins_delete_any_opportunity_marketers_none(app, client):
    ann = contact(app)
    (deal,) = add(app, Opportunity(contact_id=ann, name="Deal", amount=Decimal(5)))
    admin_login(app, client, role="marketer")
    assert delete(client, f"/admin/opportunities/{deal}/delete").status_code == 403
    with app.test_client() as boss:
        admin_login(app, boss, role="admin")
        assert delete(boss, f"/admin/opportunities/{deal}/delete").status_code == 302
    assert count(app, Opportunity) == 0


# ---------------------------------------------------------------- every kind


def _every_kind(app) -> dict[str, tuple[str, object, tuple]]:
    """One deletable item of each kind: its delete page, its model and a where clause."""
    load(app, SEGMENTS + RULES + THRESHOLDS + TEMPLATE.format(name="welcome", subject="Hi"))
    site_id = add(app, Site(key="cl_k", name="S", domains=["s.example"]))[0]
    user_id = make_user(app, "sales", email="bob@example.com")
    campaign_id = add(app, Campaign(name="C", channel="other"))[0]
    deal_id = add(app, Opportunity(contact_id=contact(app), name="D", amount=Decimal(1)))[0]
    items = {
        "segment": ("/admin/segments/{}/delete", Segment, id_of(app, Segment, "Pricing fans")),
        "rule": (
            "/admin/configure/rules/{}/delete",
            ScoringRule,
            id_of(app, ScoringRule, "Unused"),
        ),
        "threshold": (
            "/admin/configure/thresholds/{}/delete",
            Threshold,
            id_of(app, Threshold, "Marketing qualified"),
        ),
        "decay": (
            "/admin/configure/decay/{}/delete",
            DecayPolicy,
            id_of(app, DecayPolicy, "Forget old interest"),
        ),
        "webhook": ("/admin/configure/webhooks/{}/delete", Webhook, id_of(app, Webhook, "Spare")),
        "template": (
            "/admin/templates/{}/delete",
            EmailTemplate,
            id_of(app, EmailTemplate, "welcome"),
        ),
        "site": ("/admin/sites/{}/delete", Site, site_id),
        "user": ("/admin/users/{}/delete", User, user_id),
        "campaign": ("/admin/campaigns/{}/delete", Campaign, campaign_id),
        "opportunity": ("/admin/opportunities/{}/delete", Opportunity, deal_id),
    }
    return {
        kind: (path.format(item_id), model, item_id)
        for kind, (path, model, item_id) in items.items()
    }


KINDS = [
    "segment",
    "rule",
    "threshold",
    "decay",
    "webhook",
    "template",
    "site",
    "user",
    "campaign",
    "opportunity",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_get_deletes_nothing_and_a_post_without_the_token_is_refused(app, admin, kind):
    path, model, item_id = _every_kind(app)[kind]
    page = admin.get(path)
    assert page.status_code == 200 and 'id="delete-form"' in page.get_data(as_text=True)
    assert admin.post(path, data={"confirm": "yes"}).status_code == 400
    assert admin.post(path, data={"confirm": "yes", "csrf_token": "forged"}).status_code == 400
    assert count(app, model, model.id == item_id) == 1
    assert delete(admin, path).status_code == 302
    assert count(app, model, model.id == item_id) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_sales_user_may_delete_nothing_that_is_not_theirs(app, client, kind):
    path, model, item_id = _every_kind(app)[kind]
    admin_login(app, client, role="sales")
    assert client.get(path).status_code == 403
    assert delete(client, path).status_code == 403
    assert count(app, model, model.id == item_id) == 1


def test_typed_names_are_escaped_on_the_confirmation_page_and_in_the_flash(app, marketer):
    load(app, f"segments:\n  - name: '{XSS}'\n    match: {{tag: x}}\n")
    segment_id = id_of(app, Segment, XSS)
    page = marketer.get(f"/admin/segments/{segment_id}/delete").get_data(as_text=True)
    assert XSS not in page and "&lt;script&gt;" in page
    response = delete(marketer, f"/admin/segments/{segment_id}/delete")
    listing = marketer.get(response.location).get_data(as_text=True)
    assert "Deleted the segment" in listing and XSS not in listing
