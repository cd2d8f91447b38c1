"""The configuration screens: every save goes through the rules file's parser and apply.

Each screen's happy path changes the database; bad input answers 400 with the
parser's message and changes nothing; previews save nothing; sales users are
refused; names a marketer typed are shown as text.
"""

from __future__ import annotations

import re
from html import unescape

import pytest
from rq import Queue
from sqlalchemy import func, select

from tests.conftest import admin_login, csrf_of, make_user, post_form
from tracker.automation_models import DecayPolicy, ScoringRule, Segment, Threshold, Webhook
from tracker.db import db
from tracker.email_models import (
    EmailTemplate,
    Enrolment,
    EnrolmentLog,
    Message,
    OutboxMessage,
    Sequence,
    TemplateVersion,
)
from tracker.models import Contact, Site, User, utcnow
from tracker.redis_conn import get_redis

XSS = '<script>alert("x")</script>'


def load(app, text: str) -> None:
    """Configure through `automation load`'s path (parse, then apply in one transaction)."""
    from automation.config_file import parse
    from automation.config_store import apply

    with app.app_context(), db.engine.begin() as conn:
        apply(conn, parse(text, "test.yaml"), "test.yaml")


def count(app, model, *where) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model).where(*where))


def one(app, model, *where):
    with app.app_context():
        row = db.session.scalar(select(model).where(*where))
        if row is not None:
            db.session.expunge(row)
        return row


def add_contacts(app, *contacts: dict) -> list[int]:
    with app.app_context():
        rows = [Contact(**fields) for fields in contacts]
        db.session.add_all(rows)
        db.session.commit()
        return [row.id for row in rows]


def text_of(response) -> str:
    return response.get_data(as_text=True)


def problems(response) -> str:
    """The problems box of a refused form, as text."""
    match = re.search(r'<div class="error" id="problems">(.*?)</div>', text_of(response), re.S)
    assert match, text_of(response)
    return unescape(re.sub(r"<[^>]+>", " ", match.group(1)))


@pytest.fixture
def marketer(app, client):
    admin_login(app, client, role="marketer")
    return client


@pytest.fixture
def admin(app, client):
    admin_login(app, client, role="admin")
    return client


# ---------------------------------------------------------------- segments


def test_a_new_segment_is_saved_and_its_rebuild_queued(app, marketer):
    page = marketer.get("/admin/segments/new")
    assert page.status_code == 200 and "match:" in text_of(page)
    item = "name: Leads\nmatch:\n  stage: {in: [lead]}\n"
    response = post_form(marketer, "/admin/segments/new", {"item": item, "action": "save"})
    assert response.status_code == 302
    segment = one(app, Segment, Segment.name == "Leads")
    assert segment.rules == {"stage": {"in": ["lead"]}}
    jobs = Queue("maintenance", connection=get_redis(app)).jobs
    assert [(j.func_name, j.args) for j in jobs] == [
        ("automation.jobs.rebuild_segments", ([segment.id],))
    ]
    listing = text_of(marketer.get("/admin/segments"))
    assert "Leads" in listing and f"/admin/segments/{segment.id}" in listing


def test_editing_a_segment_shows_its_yaml_and_saves_a_change(app, marketer):
    load(app, "segments:\n  - name: Leads\n    match: {stage: {in: [lead]}}\n")
    segment = one(app, Segment, Segment.name == "Leads")
    path = f"/admin/segments/{segment.id}"
    page = text_of(marketer.get(path))
    assert "name: Leads" in page and "stage:" in page
    item = "name: Leads\nmatch:\n  stage: {in: [lead, mql]}\n"
    assert post_form(marketer, path, {"item": item}).status_code == 302
    assert one(app, Segment, Segment.id == segment.id).rules == {"stage": {"in": ["lead", "mql"]}}
    # Saving it unchanged queues no second rebuild.
    assert post_form(marketer, path, {"item": item}).status_code == 302
    assert Queue("maintenance", connection=get_redis(app)).count == 1


def test_a_bad_segment_answers_400_with_the_parsers_message_and_changes_nothing(app, marketer):
    load(app, "segments:\n  - name: Leads\n    match: {stage: {in: [lead]}}\n")
    segment = one(app, Segment, Segment.name == "Leads")
    item = "name: Leads\nmatch:\n  stage: {in: [lead]}\ncolour: red\n"
    response = post_form(marketer, f"/admin/segments/{segment.id}", {"item": item})
    assert response.status_code == 400
    said = problems(response)
    assert "line 1: segment 'Leads': unknown field 'colour' (allowed: match, name)" in said
    assert "colour: red" in text_of(response), "the form comes back as typed"
    bad_tree = "name: Leads\nmatch:\n  stage: {in: [lead]}\n  score: {gte: 3}\n"
    response = post_form(marketer, f"/admin/segments/{segment.id}", {"item": bad_tree})
    assert response.status_code == 400
    broken = "name: Leads\nmatch: {stage: [\n"
    response = post_form(marketer, f"/admin/segments/{segment.id}", {"item": broken})
    assert response.status_code == 400 and "not valid YAML or JSON" in problems(response)
    assert one(app, Segment, Segment.id == segment.id).rules == {"stage": {"in": ["lead"]}}
    assert Queue("maintenance", connection=get_redis(app)).count == 0


def test_renaming_on_the_edit_page_and_reusing_a_name_on_new_are_refused(app, marketer):
    load(app, "segments:\n  - name: Leads\n    match: {stage: {in: [lead]}}\n")
    segment = one(app, Segment, Segment.name == "Leads")
    renamed = "name: Prospects\nmatch: {stage: {in: [lead]}}\n"
    response = post_form(marketer, f"/admin/segments/{segment.id}", {"item": renamed})
    assert response.status_code == 400 and "the name must stay 'Leads'" in problems(response)
    again = "name: Leads\nmatch: {stage: {in: [mql]}}\n"
    response = post_form(marketer, "/admin/segments/new", {"item": again})
    assert response.status_code == 400 and "exists already" in problems(response)
    assert count(app, Segment) == 1
    assert one(app, Segment, Segment.id == segment.id).rules == {"stage": {"in": ["lead"]}}


def test_the_segment_preview_counts_and_samples_and_saves_nothing(app, marketer):
    add_contacts(
        app,
        {"email": "ada@example.com", "stage": "lead"},
        {"email": "bob@example.com", "stage": "lead"},
        {"email": "cy@example.com", "stage": "customer"},
    )
    item = "name: Leads\nmatch: {stage: {in: [lead]}}\n"
    response = post_form(marketer, "/admin/segments/new", {"item": item, "action": "preview"})
    assert response.status_code == 200
    page = text_of(response)
    preview = re.search(r'<div class="notice" id="preview">(.*?)</div>', page, re.S).group(1)
    assert "<strong>2</strong> contacts match" in preview
    assert "ada@example.com" in preview and "bob@example.com" in preview
    assert "cy@example.com" not in preview
    assert count(app, Segment) == 0
    assert Queue("maintenance", connection=get_redis(app)).count == 0
    bad = post_form(
        marketer,
        "/admin/segments/new",
        {"item": "name: X\nmatch: {stag: 1}\n", "action": "preview"},
    )
    assert bad.status_code == 400 and "segment 'X'" in problems(bad)


# ---------------------------------------------------------------- rules, thresholds, webhooks


def test_a_scoring_rule_is_created_and_edited_through_its_yaml(app, marketer):
    item = "name: Pricing\nevent: pageview\nwhen: {path: /pricing}\npoints: 10\n"
    response = post_form(marketer, "/admin/configure/rules/new", {"item": item})
    assert response.status_code == 302
    rule = one(app, ScoringRule, ScoringRule.name == "Pricing")
    assert (rule.points, rule.event_type, rule.conditions) == (10, "pageview", {"path": "/pricing"})
    path = f"/admin/configure/rules/{rule.id}"
    assert "points: 10" in text_of(marketer.get(path))
    assert post_form(marketer, path, {"item": item.replace("10", "15")}).status_code == 302
    assert one(app, ScoringRule, ScoringRule.id == rule.id).points == 15
    listing = text_of(marketer.get("/admin/configure/rules"))
    assert "Pricing" in listing and "15" in listing


def test_a_bad_scoring_rule_is_refused_with_the_parsers_message(app, marketer):
    load(app, "rules:\n  - {name: Pricing, event: pageview, points: 10}\n")
    rule = one(app, ScoringRule, ScoringRule.name == "Pricing")
    item = "name: Pricing\nevent: pageview\npoints: lots\n"
    response = post_form(marketer, f"/admin/configure/rules/{rule.id}", {"item": item})
    assert response.status_code == 400
    assert "rule 'Pricing': 'points' must be a whole number, not 'lots'" in problems(response)
    assert one(app, ScoringRule, ScoringRule.id == rule.id).points == 10


def test_a_threshold_naming_a_missing_webhook_changes_nothing(app, marketer):
    item = "name: MQL\nat_least: 50\nactions:\n  - set_stage: mql\n  - webhook: CRM\n"
    response = post_form(marketer, "/admin/configure/thresholds/new", {"item": item})
    assert response.status_code == 400
    assert "threshold 'MQL': no webhook named 'CRM'" in problems(response)
    assert count(app, Threshold) == 0
    good = "name: MQL\nat_least: 50\nactions:\n  - set_stage: mql\n"
    assert post_form(marketer, "/admin/configure/thresholds/new", {"item": good}).status_code == 302
    threshold = one(app, Threshold, Threshold.name == "MQL")
    assert threshold.minimum == 50 and threshold.actions == [{"type": "set_stage", "stage": "mql"}]


def test_a_decay_policy_is_created(app, marketer):
    item = "name: Forget\nexpire_after_days: 90\n"
    assert post_form(marketer, "/admin/configure/decay/new", {"item": item}).status_code == 302
    assert one(app, DecayPolicy, DecayPolicy.name == "Forget").window_days == 90
    bad = post_form(marketer, "/admin/configure/decay/new", {"item": "name: Both\n"})
    assert bad.status_code == 400 and "decay policy 'Both'" in problems(bad)
    assert count(app, DecayPolicy) == 1


def test_webhook_secrets_are_hidden_and_kept_when_left_hidden(app, marketer):
    secret = "s3cret-s3cret-s3cret"
    load(app, f"webhooks:\n  - {{name: CRM, url: 'https://crm.test/h', secret: {secret}}}\n")
    hook = one(app, Webhook, Webhook.name == "CRM")
    assert secret not in text_of(marketer.get("/admin/configure/webhooks"))
    page = text_of(marketer.get(f"/admin/configure/webhooks/{hook.id}"))
    assert secret not in page and "(hidden)" in page
    item = "name: CRM\nurl: https://crm.test/new\nsecret: (hidden)\n"
    assert (
        post_form(marketer, f"/admin/configure/webhooks/{hook.id}", {"item": item}).status_code
        == 302
    )
    saved = one(app, Webhook, Webhook.id == hook.id)
    assert (saved.url, saved.secret) == ("https://crm.test/new", secret)
    short = "name: CRM\nurl: https://crm.test/new\nsecret: short\n"
    response = post_form(marketer, f"/admin/configure/webhooks/{hook.id}", {"item": short})
    assert response.status_code == 400 and "at least 16 characters" in problems(response)
    assert one(app, Webhook, Webhook.id == hook.id).secret == secret


def test_unknown_sections_and_items_are_not_found(app, marketer):
    assert marketer.get("/admin/configure/x").status_code == 404
    assert marketer.get("/admin/configure/rules/1").status_code == 404
    assert marketer.get("/admin/segments/1").status_code == 404
    assert marketer.get("/admin/templates/1").status_code == 404
    assert marketer.get("/admin/sequences/1").status_code == 404


# ---------------------------------------------------------------- templates


TEMPLATE = {
    "subjects": "Hello {{ contact.first_name }}",
    "preheader": "",
    "html": "<style>p {color: red}</style>\n<p>Hi {{ contact.first_name }}</p>\n",
    "text": "",
    "from": "",
    "reply_to": "",
    "variants": "",
}


def test_a_template_is_saved_from_the_editor_as_a_new_version(app, marketer):
    response = post_form(marketer, "/admin/templates/new", {"name": "welcome", **TEMPLATE})
    assert response.status_code == 302
    template = one(app, EmailTemplate, EmailTemplate.name == "welcome")
    version = one(app, TemplateVersion, TemplateVersion.id == template.current_version_id)
    assert version.variants[0]["subject"] == "Hello {{ contact.first_name }}"
    assert 'style="color:red"' in version.variants[0]["html"], "CSS inlined at save"
    path = f"/admin/templates/{template.id}"
    changed = {**TEMPLATE, "subjects": "Hi {{ contact.first_name }}\nHello there"}
    assert post_form(marketer, path, changed).status_code == 302
    template = one(app, EmailTemplate, EmailTemplate.id == template.id)
    version = one(app, TemplateVersion, TemplateVersion.id == template.current_version_id)
    assert version.version == 2 and [v["name"] for v in version.variants] == ["A", "B"]
    listing = text_of(marketer.get("/admin/templates"))
    assert "welcome" in listing and "A, B" in listing


def test_a_template_syntax_error_names_the_part_and_line_and_saves_nothing(app, marketer):
    broken = {**TEMPLATE, "html": "<p>Hi</p>\n<p>{{ contact.first_name </p>\n"}
    response = post_form(marketer, "/admin/templates/new", {"name": "welcome", **broken})
    assert response.status_code == 400
    assert "template 'welcome': html line 2:" in problems(response)
    assert count(app, EmailTemplate) == 0
    bad_from = {**TEMPLATE, "from": "nobody"}
    response = post_form(marketer, "/admin/templates/new", {"name": "welcome", **bad_from})
    assert response.status_code == 400 and "from: 'nobody' is not an address" in problems(response)
    no_name = post_form(marketer, "/admin/templates/new", {"name": "", **TEMPLATE})
    assert no_name.status_code == 400 and count(app, EmailTemplate) == 0


def test_the_template_preview_renders_for_a_contact_in_a_sandboxed_iframe(app, marketer):
    post_form(marketer, "/admin/templates/new", {"name": "welcome", **TEMPLATE})
    template = one(app, EmailTemplate, EmailTemplate.name == "welcome")
    add_contacts(app, {"email": "eve@example.com", "first_name": XSS})
    page = text_of(marketer.get(f"/admin/templates/{template.id}"))
    assert 'sandbox=""' in page and "Hi Ada" in unescape(page), "sample data by default"
    response = marketer.get(f"/admin/templates/{template.id}?contact=eve@example.com")
    assert response.status_code == 200
    page = text_of(response)
    assert XSS not in page, "the contact's name is escaped, in the subject and in srcdoc"
    srcdoc = re.search(r'<iframe sandbox="" [^>]*srcdoc="([^"]*)"', page).group(1)
    # Escaped twice in the iframe's document (once by the mail's HTML escaping, once for srcdoc).
    assert "&amp;lt;script&amp;gt;" in srcdoc
    missing = marketer.get(f"/admin/templates/{template.id}?contact=nobody@example.com")
    assert missing.status_code == 400 and "no contact has the email" in text_of(missing)


def test_a_test_send_goes_to_the_typed_address(app, marketer):
    post_form(marketer, "/admin/templates/new", {"name": "welcome", **TEMPLATE})
    template = one(app, EmailTemplate, EmailTemplate.name == "welcome")
    path = f"/admin/templates/{template.id}"
    response = marketer.post(
        f"{path}/test", data={"to": "me@example.com", "csrf_token": csrf_of(marketer, path)}
    )
    assert response.status_code == 200 and "with sample data" in text_of(response)
    kept = one(app, OutboxMessage, OutboxMessage.to_addr == "me@example.com")
    assert "Hello Ada" in kept.subject
    add_contacts(app, {"email": "eve@example.com", "first_name": "Eve"})
    response = marketer.post(
        f"{path}/test",
        data={
            "to": "me@example.com",
            "contact": "eve@example.com",
            "csrf_token": csrf_of(marketer, path),
        },
    )
    assert response.status_code == 200, text_of(response)
    message = one(app, Message, Message.kind == "test")
    assert (message.to_addr, message.status, message.subject) == (
        "me@example.com",
        "sent",
        "Hello Eve",
    )
    bad = marketer.post(
        f"{path}/test", data={"to": "not an address", "csrf_token": csrf_of(marketer, path)}
    )
    assert bad.status_code == 400 and "is not an email address" in text_of(bad)
    assert count(app, OutboxMessage) == 2


# ---------------------------------------------------------------- sequences


def test_a_sequence_is_saved_and_a_bad_one_refused(app, marketer):
    post_form(marketer, "/admin/templates/new", {"name": "welcome", **TEMPLATE})
    item = "name: Welcome\nsteps:\n  - send: welcome\n  - wait: 3d\n  - send: missing\n"
    response = post_form(marketer, "/admin/sequences/new", {"item": item})
    assert response.status_code == 400
    assert "line 5: sequence 'Welcome': no email template named 'missing'" in problems(response)
    assert count(app, Sequence) == 0
    good = "name: Welcome\nsteps:\n  - send: welcome\n  - wait: 3d\n"
    assert post_form(marketer, "/admin/sequences/new", {"item": good}).status_code == 302
    sequence = one(app, Sequence, Sequence.name == "Welcome")
    assert sequence.steps == [{"send": "welcome"}, {"wait": "3d"}]


def test_sequence_pages_show_enrolment_counts_and_per_step_stats(app, marketer):
    post_form(marketer, "/admin/templates/new", {"name": "welcome", **TEMPLATE})
    load(
        app,
        "sequences:\n  - name: Welcome\n"
        "    steps: [{send: welcome}, {wait: 3d}, {send: welcome}]\n",
    )
    ids = add_contacts(app, *({"email": f"c{i}@example.com"} for i in range(3)))
    now = utcnow()
    with app.app_context():
        sequence = db.session.scalar(select(Sequence))
        template = db.session.scalar(select(EmailTemplate))
        # c0 sent step 0, now waiting at step 1; c1 sent and completed; c2 exited at step 0.
        enrolments = [
            Enrolment(sequence_id=sequence.id, contact_id=ids[0], position=1, cause="t"),
            Enrolment(
                sequence_id=sequence.id,
                contact_id=ids[1],
                position=3,
                cause="t",
                status="completed",
            ),
            Enrolment(
                sequence_id=sequence.id, contact_id=ids[2], position=0, cause="t", status="exited"
            ),
        ]
        db.session.add_all(enrolments)
        db.session.flush()
        log = [
            (0, 0, "entered"),
            (0, 0, "sent"),
            (1, 0, "entered"),
            (1, 0, "sent"),
            (1, 1, "waited"),
            (1, 2, "sent"),
            (2, 0, "entered"),
            (2, 0, "exited"),
        ]
        db.session.add_all(
            EnrolmentLog(enrolment_id=enrolments[e].id, position=p, action=a) for e, p, a in log
        )
        for e, step, opened, clicked in (
            (0, 0, True, True),
            (1, 0, True, False),
            (1, 2, False, False),
        ):
            db.session.add(
                Message(
                    contact_id=ids[e],
                    template_id=template.id,
                    template_version_id=template.current_version_id,
                    variant="A",
                    kind="sequence",
                    enrolment_id=enrolments[e].id,
                    step=step,
                    to_addr=f"c{e}@example.com",
                    status="sent",
                    sent_at=now,
                    opened_at=now if opened else None,
                    clicked_at=now if clicked else None,
                    machine_opens=5,
                )
            )
        db.session.commit()
        sequence_id = sequence.id
    listing = text_of(marketer.get("/admin/sequences"))
    row = re.search(r"<tr>\s*<td><a[^>]*>Welcome</a></td>(.*?)</tr>", listing, re.S).group(1)
    assert re.findall(r'<td class="num">(\d+)</td>', row) == ["3", "1", "1", "1"]
    page = text_of(marketer.get(f"/admin/sequences/{sequence_id}"))
    table = re.search(r'<table id="steps">(.*?)</table>', page, re.S).group(1)
    rows = [
        [unescape(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    ]
    assert rows == [
        ["1", "send welcome", "3", "2", "2", "1"],
        ["2", "wait 3d", "2", "", "", ""],
        ["3", "send welcome", "1", "1", "0", "0"],
    ]


# ---------------------------------------------------------------- sites


SITE = {
    "name": "Docs",
    "domains": "docs.example.com\nhttps://Example.org/",
    "timezone": "Europe/Berlin",
    "truncate_ips": "1",
}


def test_an_admin_creates_a_site_and_sees_the_tags_to_paste(app, admin):
    response = post_form(admin, "/admin/sites/new", SITE)
    assert response.status_code == 302
    site = one(app, Site, Site.name == "Docs")
    assert site.domains == ["docs.example.com", "example.org"]
    assert (site.timezone, site.truncate_ips, site.respect_dnt) == ("Europe/Berlin", True, False)
    page = text_of(admin.get(response.headers["Location"]))
    tag = (
        "&lt;script async src=&#34;http://tracker.test/s.js&#34; "
        f"data-site=&#34;{site.key}&#34;&gt;&lt;/script&gt;"
    )
    assert tag in page and "<script async" not in page
    assert f"p.gif?k={site.key}" in page
    assert site.key in text_of(admin.get("/admin/sites"))


def test_a_site_is_edited_and_bad_fields_are_refused_next_to_the_field(app, admin, site):
    path = f"/admin/sites/{site.id}"
    bad = {**SITE, "timezone": "Mars/Olympus", "domains": ""}
    response = post_form(admin, path, bad)
    assert response.status_code == 400
    page = text_of(response)
    assert "&#39;Mars/Olympus&#39; is not an IANA time zone name" in page
    assert 'id="error-domains"' in page and 'id="error-timezone"' in page
    unchanged = one(app, Site, Site.id == site.id)
    assert (unchanged.name, unchanged.timezone) == ("Example", "UTC")
    edit = {
        "name": "Example",
        "domains": "example.com",
        "timezone": "America/New_York",
        "respect_dnt": "1",
    }
    assert post_form(admin, path, edit).status_code == 302
    saved = one(app, Site, Site.id == site.id)
    assert (saved.domains, saved.timezone, saved.respect_dnt, saved.truncate_ips) == (
        ["example.com"],
        "America/New_York",
        True,
        False,
    )
    assert saved.key == site.key


def test_sites_and_users_are_for_admins_only(app, client, site):
    admin_login(app, client, role="marketer")
    for path in (
        "/admin/sites",
        "/admin/sites/new",
        f"/admin/sites/{site.id}",
        "/admin/users",
        "/admin/users/new",
    ):
        assert client.get(path).status_code == 403, path
    token = csrf_of(client, "/admin/configure")
    response = client.post("/admin/sites/new", data={**SITE, "csrf_token": token})
    assert response.status_code == 403 and count(app, Site) == 1


# ---------------------------------------------------------------- users


def _login(app, email: str, password: str) -> int:
    with app.test_client() as other:
        return other.post(
            "/admin/login",
            data={"email": email, "password": password, "csrf_token": csrf_of(other)},
        ).status_code


def test_an_admin_creates_a_user_whose_generated_password_is_shown_once(app, admin):
    response = post_form(
        admin, "/admin/users/new", {"email": "Sam@Example.com", "name": "Sam", "role": "sales"}
    )
    assert response.status_code == 200
    password = re.search(r'<code id="password">([^<]+)</code>', text_of(response)).group(1)
    user = one(app, User, User.email == "sam@example.com")
    assert (
        user.role == "sales" and user.password_hash and user.password_hash not in text_of(response)
    )
    assert _login(app, "sam@example.com", password) == 302
    listing = text_of(admin.get("/admin/users"))
    assert "sam@example.com" in listing and password not in listing
    assert user.password_hash not in listing and "scrypt" not in listing


def test_a_typed_password_is_not_shown_and_bad_users_are_refused(app, admin):
    typed = {
        "email": "mo@example.com",
        "name": "Mo",
        "role": "marketer",
        "password": "long enough 1",
    }
    response = post_form(admin, "/admin/users/new", typed)
    assert response.status_code == 200 and "long enough 1" not in text_of(response)
    assert _login(app, "mo@example.com", "long enough 1") == 302
    for bad, field in (
        ({**typed, "email": "mo@example.com"}, "email"),
        ({**typed, "email": "not-an-email"}, "email"),
        ({**typed, "email": "x@example.com", "role": "owner"}, "role"),
        ({**typed, "email": "x@example.com", "password": "short"}, "password"),
    ):
        response = post_form(admin, "/admin/users/new", bad)
        assert response.status_code == 400 and f'id="error-{field}"' in text_of(response), bad
    assert count(app, User) == 2


def test_deactivate_reactivate_reset_and_unlock(app, admin):
    user_id = make_user(app, "sales", email="sam@example.com")
    base = f"/admin/users/{user_id}"
    assert post_form(admin, f"{base}/deactivate", {}, page="/admin/users").status_code == 302
    assert one(app, User, User.id == user_id).active is False
    assert _login(app, "sam@example.com", "correct horse 9") == 401
    assert post_form(admin, f"{base}/reactivate", {}, page="/admin/users").status_code == 302
    assert _login(app, "sam@example.com", "correct horse 9") == 302
    response = post_form(admin, f"{base}/reset-password", {}, page="/admin/users")
    password = re.search(r'<code id="password">([^<]+)</code>', text_of(response)).group(1)
    assert _login(app, "sam@example.com", "correct horse 9") == 401
    assert _login(app, "sam@example.com", password) == 302
    with app.app_context():
        user = db.session.get(User, user_id)
        user.failed_logins, user.locked_until = 7, utcnow().replace(year=2999)
        db.session.commit()
    assert "locked" in text_of(admin.get("/admin/users"))
    assert post_form(admin, f"{base}/unlock", {}, page="/admin/users").status_code == 302
    unlocked = one(app, User, User.id == user_id)
    assert (unlocked.failed_logins, unlocked.locked_until) == (0, None)
    me = one(app, User, User.email == "admin@example.com")
    refused = post_form(admin, f"/admin/users/{me.id}/deactivate", {}, page="/admin/users")
    assert refused.status_code == 400 and one(app, User, User.id == me.id).active is True
    assert post_form(admin, f"{base}/promote", {}, page="/admin/users").status_code == 404


# ---------------------------------------------------------------- roles and escaping


def test_sales_users_are_refused_every_configuration_page(app, client):
    load(app, "segments:\n  - name: Leads\n    match: {stage: {in: [lead]}}\n")
    admin_login(app, client, role="sales")
    token = csrf_of(client, "/admin/")
    for path in (
        "/admin/configure",
        "/admin/segments",
        "/admin/segments/new",
        "/admin/configure/rules",
        "/admin/configure/rules/new",
        "/admin/templates",
        "/admin/templates/new",
        "/admin/sequences",
        "/admin/sequences/new",
    ):
        assert client.get(path).status_code == 403, path
    item = "name: Everyone\nmatch: {stage: {in: [lead, mql]}}\n"
    response = client.post("/admin/segments/new", data={"item": item, "csrf_token": token})
    assert response.status_code == 403 and count(app, Segment) == 1


def test_typed_names_are_shown_as_text(app, admin, client):
    load(
        app,
        f"segments:\n  - name: '{XSS}'\n    match: {{stage: {{in: [lead]}}}}\n"
        f"rules:\n  - {{name: '{XSS}', event: pageview, points: 1}}\n",
    )
    post_form(admin, "/admin/templates/new", {"name": XSS, **TEMPLATE})
    post_form(admin, "/admin/sites/new", {**SITE, "name": XSS})
    post_form(admin, "/admin/users/new", {"email": "x@example.com", "name": XSS, "role": "sales"})
    assert count(app, EmailTemplate) == 1 and count(app, Site) == 1
    segment = one(app, Segment, Segment.name == XSS)
    template = one(app, EmailTemplate, EmailTemplate.name == XSS)
    for path in (
        "/admin/segments",
        f"/admin/segments/{segment.id}",
        "/admin/configure/rules",
        "/admin/templates",
        f"/admin/templates/{template.id}",
        "/admin/sites",
        "/admin/users",
    ):
        page = text_of(admin.get(path))
        assert XSS not in page, path
        assert "&lt;script&gt;" in page, path


@pytest.mark.parametrize(
    "path,item,action",
    [
        (
            "/admin/configure/rules/new",
            "name: Big\nevent: pageview\npoints: 99999999999999999999\n",
            "save",
        ),
        ("/admin/configure/thresholds/new", "name: T\nat_least: 3000000000\n", "save"),
        (
            "/admin/segments/new",
            "name: S\nmatch: {score: {kind: total, gte: 3000000000}}\n",
            "preview",
        ),
        (
            "/admin/segments/new",
            "name: S\nmatch: {visited: {path: /x, within_days: 2000000000}}\n",
            "preview",
        ),
        ("/admin/segments/new", "name: " + "x" * 300 + "\nmatch: {stage: {in: [lead]}}\n", "save"),
        (
            "/admin/configure/webhooks/new",
            "name: W\nurl: http://x.test\nsecret: " + "s" * 300,
            "save",
        ),
        ("/admin/segments/new", "- a\n- b\n", "save"),
        ("/admin/segments/new", "name: x\nmatch: !!python/object:os.system {}\n", "save"),
    ],
)
def test_values_no_column_holds_are_refused_not_crashed_on(app, marketer, path, item, action):
    response = post_form(marketer, path, {"item": item, "action": action})
    assert response.status_code in (302, 400), text_of(response)
    if response.status_code == 400:
        assert problems(response)
