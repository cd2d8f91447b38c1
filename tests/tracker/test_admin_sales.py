"""The sales pages: My leads, lead actions, opportunities, attribution, follow-up health."""

from __future__ import annotations

import threading
import uuid
from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.automation.conftest import store_template
from tests.conftest import admin_login, make_user, post_form
from tests.tracker.test_snippet_browser import browser  # noqa: F401 - the chromium fixture
from tracker.automation_models import PointsEntry, ScoringRule, StageChange
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, Message
from tracker.models import Contact, Event, Visitor, as_utc, utcnow
from tracker.sales_models import Campaign, LeadAction, Opportunity

XSS = "<script>alert(1)</script>"


def new_lead(
    app,
    email: str,
    owner_id: int | None,
    hours_ago: float = 1,
    stage: str = "mql",
    cause: str = "threshold 'MQL'",
    **fields,
) -> int:
    """A contact that became an MQL `hours_ago`, with the stage change logged."""
    with app.app_context():
        contact = Contact(email=email, stage=stage, owner_id=owner_id, traits={}, **fields)
        db.session.add(contact)
        db.session.flush()
        db.session.add(
            StageChange(
                contact_id=contact.id,
                from_stage="lead",
                to_stage="mql",
                cause=cause,
                created_at=utcnow() - timedelta(hours=hours_ago),
            )
        )
        db.session.commit()
        return contact.id


def award(app, contact_id: int, rule: str, points: int, path: str, title: str = "Pricing") -> None:
    """Points from a rule for a page view, as scoring logs them."""
    with app.app_context():
        found = db.session.scalar(select(ScoringRule).where(ScoringRule.name == rule))
        if found is None:
            found = ScoringRule(name=rule, kind="engagement", event_type="pageview", points=points)
            db.session.add(found)
            db.session.flush()
        event = Event(
            uuid=uuid.uuid4(),
            contact_id=contact_id,
            type="pageview",
            path=path,
            url=f"https://example.com{path}",
            title=title,
            occurred_at=utcnow(),
        )
        db.session.add(event)
        db.session.flush()
        db.session.add(
            PointsEntry(
                contact_id=contact_id,
                rule_id=found.id,
                event_id=event.id,
                kind="engagement",
                delta=points,
                reason="rule",
            )
        )
        db.session.commit()


def contact_state(app, contact_id: int) -> tuple[str, list[str], list[tuple[str, str | None]]]:
    """(stage, stage change causes, lead actions as (action, reason))."""
    with app.app_context():
        contact = db.session.get(Contact, contact_id)
        causes = db.session.scalars(
            select(StageChange.cause)
            .where(StageChange.contact_id == contact_id)
            .order_by(StageChange.id)
        ).all()
        actions = db.session.execute(
            select(LeadAction.action, LeadAction.reason)
            .where(LeadAction.contact_id == contact_id)
            .order_by(LeadAction.id)
        ).all()
        return contact.stage, list(causes), [tuple(a) for a in actions]


@pytest.fixture
def sales(app, client):
    """The client logged in as a salesperson; returns the user's id."""
    return admin_login(app, client, role="sales")


def test_my_leads_lists_my_mqls_oldest_first_with_why_they_qualified(app, client, sales):
    other = make_user(app, "sales", email="bob@example.com")
    new_lead(app, "newer@example.com", sales, hours_ago=2, first_name="Nina")
    older = new_lead(app, "older@example.com", sales, hours_ago=30, cause="threshold 'Sales ready'")
    new_lead(app, "bobs@example.com", other, hours_ago=50)
    new_lead(app, "accepted@example.com", sales, hours_ago=60, stage="sql")
    new_lead(app, "nurtured@example.com", sales, hours_ago=70, stage="nurture")
    award(app, older, "Pricing page", 30, "/pricing")
    award(app, older, "Docs", 10, "/docs/start", title="Getting started")

    page = client.get("/admin/leads")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    waiting = html.split('id="waiting"')[1].split("</table>")[0]
    assert waiting.index("older@example.com") < waiting.index("newer@example.com")
    assert "bobs@example.com" not in html and "nurtured@example.com" not in html
    assert "threshold &#39;Sales ready&#39;" in waiting
    assert "+30 Pricing page" in waiting and "/pricing" in waiting
    assert "+10 Docs" in waiting and "/docs/start" in waiting
    accepted = html.split('id="accepted"')[1].split("</table>")[0]
    assert "accepted@example.com" in accepted


def test_admins_see_everyones_leads_and_can_filter_by_owner(app, client):
    admin_login(app, client, role="admin")
    ann = make_user(app, "sales", email="ann@example.com")
    bob = make_user(app, "sales", email="bob@example.com")
    new_lead(app, "anns@example.com", ann)
    new_lead(app, "bobs@example.com", bob)
    new_lead(app, "nobodys@example.com", None)
    html = client.get("/admin/leads").get_data(as_text=True)
    assert all(f"{who}s@example.com" in html for who in ("ann", "bob", "nobody"))
    html = client.get(f"/admin/leads?owner={bob}").get_data(as_text=True)
    assert "bobs@example.com" in html and "anns@example.com" not in html
    html = client.get("/admin/leads?owner=none").get_data(as_text=True)
    assert "nobodys@example.com" in html and "bobs@example.com" not in html


def test_accept_makes_an_sql_and_keeps_who_and_why(app, client, sales):
    lead = new_lead(app, "lead@example.com", sales)
    response = post_form(client, f"/admin/leads/{lead}", {"action": "accept", "reason": "call"})
    assert response.status_code == 302
    stage, causes, actions = contact_state(app, lead)
    assert stage == "sql"
    assert causes[-1] == "sales: accepted by Sales: call"
    assert actions == [("accept", "call")]
    with app.app_context():
        assert db.session.scalar(select(LeadAction.user_id)) == sales
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Accepted: the lead is now an SQL." in page
    # Accepting twice (a second tab, say) is refused: the lead is no longer an MQL.
    again = post_form(client, f"/admin/leads/{lead}", {"action": "accept"})
    assert again.status_code == 409 and "in stage sql now" in again.get_data(as_text=True)
    assert contact_state(app, lead)[2] == [("accept", "call")]


NOT_READY = """\
sequences:
  - name: later-please
    entry: {not_ready: true}
    steps: [{send: nudge}]
"""


def test_not_ready_needs_a_reason_then_goes_to_nurture_and_its_sequence(
    app, client, sales, tmp_path
):
    with app.app_context():
        store_template("nudge")
    path = tmp_path / "not-ready.yaml"
    path.write_text(NOT_READY)
    assert app.test_cli_runner().invoke(args=["automation", "load", str(path)]).exit_code == 0
    lead = new_lead(app, "later@example.com", sales)

    refused = post_form(client, f"/admin/leads/{lead}", {"action": "not_ready", "reason": "  "})
    assert refused.status_code == 400
    assert "say why, so marketing can learn from it" in refused.get_data(as_text=True)
    assert contact_state(app, lead) == ("mql", ["threshold 'MQL'"], [])

    done = post_form(
        client, f"/admin/leads/{lead}", {"action": "not_ready", "reason": "budget in Q3"}
    )
    assert done.status_code == 302
    stage, causes, actions = contact_state(app, lead)
    assert stage == "nurture"
    assert causes[-1] == "sales: not ready by Sales: budget in Q3"
    assert actions == [("not_ready", "budget in Q3")]
    with app.app_context():
        enrolment = db.session.scalar(select(Enrolment).where(Enrolment.contact_id == lead))
        assert enrolment.status == "active" and "budget in Q3" in enrolment.cause
    assert "later-please: active" in client.get(done.headers["Location"]).get_data(as_text=True)


def test_the_not_ready_command_is_kept_as_a_lead_action_too(app, sales):
    lead = new_lead(app, "cli@example.com", sales)
    result = app.test_cli_runner().invoke(
        args=["leads", "not-ready", "cli@example.com", "--reason", "no budget"]
    )
    assert "cli@example.com is now in stage nurture" in result.output
    assert contact_state(app, lead)[2] == [("not_ready", "no budget")]


def test_disqualify_needs_a_reason(app, client, sales):
    lead = new_lead(app, "student@example.com", sales)
    refused = post_form(client, f"/admin/leads/{lead}", {"action": "disqualify"})
    assert refused.status_code == 400
    assert contact_state(app, lead)[0] == "mql"
    done = post_form(client, f"/admin/leads/{lead}", {"action": "disqualify", "reason": "student"})
    assert done.status_code == 302
    stage, causes, actions = contact_state(app, lead)
    assert (stage, causes[-1], actions) == (
        "disqualified",
        "sales: disqualified by Sales: student",
        [("disqualify", "student")],
    )


def test_unknown_actions_are_refused(app, client, sales):
    lead = new_lead(app, "x@example.com", sales)
    response = post_form(client, f"/admin/leads/{lead}", {"action": "promote"})
    assert response.status_code == 400
    assert "choose accept, not ready, disqualify or convert" in response.get_data(as_text=True)
    assert contact_state(app, lead)[0] == "mql"


def test_sales_may_act_only_on_their_own_leads(app, client, sales):
    other = make_user(app, "sales", email="bob@example.com")
    theirs = new_lead(app, "theirs@example.com", other)
    mine = new_lead(app, "mine@example.com", sales)
    assert client.get(f"/admin/leads/{theirs}").status_code == 403
    response = post_form(
        client, f"/admin/leads/{theirs}", {"action": "accept"}, page=f"/admin/leads/{mine}"
    )
    assert response.status_code == 403
    assert contact_state(app, theirs) == ("mql", ["threshold 'MQL'"], [])
    assert client.get("/admin/leads/999999").status_code == 404


def test_marketers_cannot_act_on_leads(app, client):
    admin_login(app, client, role="marketer")
    lead = new_lead(app, "lead@example.com", None)
    response = post_form(client, f"/admin/leads/{lead}", {"action": "accept"}, page="/admin/")
    assert response.status_code == 403
    assert contact_state(app, lead)[0] == "mql"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "", "amount": "100"}, "give the opportunity a name"),
        ({"name": "Deal", "amount": "-5"}, "the amount must be zero or more"),
        ({"name": "Deal", "amount": "1,000"}, "write the amount as a number"),
        ({"name": "Deal", "amount": "NaN"}, "the amount must be zero or more"),
        ({"name": "Deal", "amount": "10.555"}, "at most two decimals"),
        ({"name": "Deal", "amount": "1e20"}, "the amount must be at most"),
        ({"name": "Deal", "amount": "5", "expected_close": "31/12/2025"}, "YYYY-MM-DD"),
    ],
)
def test_convert_validates_the_opportunity_and_changes_nothing(app, client, sales, fields, message):
    lead = new_lead(app, "deal@example.com", sales)
    response = post_form(client, f"/admin/leads/{lead}", {"action": "convert", **fields})
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert contact_state(app, lead) == ("mql", ["threshold 'MQL'"], [])
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(Opportunity)) == 0


def _campaigns(app) -> dict[str, int]:
    """Three campaigns: two by UTM code, one by its email template; returns ids by name."""
    with app.app_context():
        template_id = store_template("launch-mail")
        found = {}
        for name, codes, templates in (
            ("Spring sale", ["spring-sale"], []),
            ("Webinar", ["webinar-2025"], []),
            ("Launch mail", [], [template_id]),
        ):
            campaign = Campaign(
                name=name, channel="email", utm_campaigns=codes, template_ids=templates
            )
            db.session.add(campaign)
            db.session.flush()
            found[name] = campaign.id
        db.session.commit()
        return found


def _touch(app, site, contact_id: int, minutes_ago: int, code: str, bot: bool = False) -> None:
    with app.app_context():
        db.session.add(
            Event(
                uuid=uuid.uuid4(),
                site_id=site.id,
                contact_id=contact_id,
                type="pageview",
                path="/",
                utm_campaign=code,
                is_bot=bot,
                occurred_at=utcnow() - timedelta(minutes=minutes_ago),
            )
        )
        db.session.commit()


def _mail(app, contact_id: int, human_click_minutes_ago: int | None) -> None:
    """A launch mail the contact got; clicked by a person, or only by a link scanner."""
    with app.app_context():
        template = db.session.scalar(
            select(EmailTemplate).where(EmailTemplate.name == "launch-mail")
        )
        clicked = (
            None
            if human_click_minutes_ago is None
            else utcnow() - timedelta(minutes=human_click_minutes_ago)
        )
        db.session.add(
            Message(
                contact_id=contact_id,
                template_id=template.id,
                template_version_id=template.current_version_id,
                variant="A",
                kind="broadcast",
                to_addr="deal@example.com",
                status="sent",
                clicked_at=clicked,
                clicks=0 if clicked is None else 1,
                machine_clicks=1,
            )
        )
        db.session.commit()


def test_convert_opens_the_opportunity_with_the_last_campaign_touch(app, client, site, sales):
    campaigns = _campaigns(app)
    lead = new_lead(app, "deal@example.com", sales, stage="sql")
    with app.app_context():
        db.session.add(
            Visitor(
                site_id=site.id,
                key="v1",
                contact_id=lead,
                first_seen=utcnow() - timedelta(days=3),
                last_seen=utcnow(),
                utm_campaign=" Spring-Sale ",
            )
        )
        db.session.commit()
    _touch(app, site, lead, 600, "webinar-2025")
    _mail(app, lead, human_click_minutes_ago=300)  # the last human touch: the launch mail
    _touch(app, site, lead, 100, "no-such-campaign")  # matches nothing: skipped
    _touch(app, site, lead, 50, "webinar-2025", bot=True)  # a bot's visit is no touch
    _mail(app, lead, human_click_minutes_ago=None)  # a scanner's click only: no touch

    response = post_form(
        client,
        f"/admin/leads/{lead}",
        {
            "action": "convert",
            "name": "Acme platform",
            "amount": "12500.50",
            "expected_close": "2025-09-30",
        },
    )
    assert response.status_code == 302
    with app.app_context():
        deal = db.session.scalar(select(Opportunity))
        assert (deal.name, deal.amount, deal.expected_close) == (
            "Acme platform",
            Decimal("12500.50"),
            date(2025, 9, 30),
        )
        assert (deal.owner_id, deal.stage, deal.closed_at) == (sales, "open", None)
        assert (deal.campaign_id, deal.campaign_source) == (campaigns["Launch mail"], "auto")
    assert response.headers["Location"] == f"/admin/opportunities/{deal.id}?saved=1"
    stage, causes, actions = contact_state(app, lead)
    assert stage == "opportunity"
    assert causes[-1] == "sales: converted to an opportunity by Sales"
    assert actions == [("convert", None)]


def test_without_email_touches_the_latest_utm_code_wins(app, site, sales):
    from automation.sales import campaign_for

    campaigns = _campaigns(app)
    lead = new_lead(app, "utm@example.com", sales)
    _touch(app, site, lead, 600, "webinar-2025")
    _touch(app, site, lead, 60, "SPRING-SALE")
    with app.app_context(), db.engine.connect() as conn:
        assert campaign_for(conn, lead, utcnow()) == campaigns["Spring sale"]
        # Before the later touch only the webinar had been met.
        assert campaign_for(conn, lead, utcnow() - timedelta(minutes=120)) == campaigns["Webinar"]
        assert campaign_for(conn, lead, utcnow() - timedelta(days=1)) is None


def _opportunity(app, owner_id, stage="open", amount="100", contact_id=None, name="Deal") -> int:
    with app.app_context():
        if contact_id is None:
            contact = Contact(email=f"{uuid.uuid4().hex}@example.com", stage="opportunity")
            db.session.add(contact)
            db.session.flush()
            contact_id = contact.id
        deal = Opportunity(
            contact_id=contact_id,
            owner_id=owner_id,
            name=name,
            amount=Decimal(amount),
            stage=stage,
            closed_at=utcnow() if stage != "open" else None,
        )
        db.session.add(deal)
        db.session.commit()
        return deal.id


def _edit(client, deal_id: int, **changes) -> object:
    fields = {
        "name": "Deal",
        "amount": "100",
        "expected_close": "",
        "stage": "open",
        "owner": "",
        "campaign": "auto",
    }
    fields.update(changes)
    return post_form(client, f"/admin/opportunities/{deal_id}", fields)


def test_winning_makes_a_customer_reopening_clears_the_close(app, client, sales):
    lead = new_lead(app, "buyer@example.com", sales, stage="opportunity")
    deal_id = _opportunity(app, sales, contact_id=lead)
    response = _edit(client, deal_id, stage="won", amount="900", owner=str(sales))
    assert response.status_code == 302
    with app.app_context():
        deal = db.session.get(Opportunity, deal_id)
        assert deal.stage == "won" and deal.amount == Decimal("900")
        assert deal.closed_at is not None
        closed_at = as_utc(deal.closed_at)
    stage, causes, _ = contact_state(app, lead)
    assert stage == "customer" and causes[-1] == "sales: opportunity 'Deal' won by Sales"
    # Saving again as won keeps the close time and logs no second stage change.
    _edit(client, deal_id, stage="won", amount="900", owner=str(sales))
    with app.app_context():
        assert as_utc(db.session.get(Opportunity, deal_id).closed_at) == closed_at
    assert len(contact_state(app, lead)[1]) == len(causes)
    _edit(client, deal_id, stage="open", amount="900", owner=str(sales))
    with app.app_context():
        assert db.session.get(Opportunity, deal_id).closed_at is None


def test_choosing_a_campaign_makes_it_manual_and_bad_fields_change_nothing(app, client, sales):
    campaigns = _campaigns(app)
    deal_id = _opportunity(app, sales)
    chosen = str(campaigns["Webinar"])
    assert _edit(client, deal_id, campaign=chosen, owner=str(sales)).status_code == 302
    with app.app_context():
        deal = db.session.get(Opportunity, deal_id)
        assert (deal.campaign_id, deal.campaign_source) == (campaigns["Webinar"], "manual")
    page = client.get(f"/admin/opportunities/{deal_id}").get_data(as_text=True)
    assert f'<option value="{chosen}" selected>Webinar</option>' in page
    for changes, message in (
        ({"stage": "closed"}, "choose one of open, won, lost"),
        ({"owner": "424242"}, "choose an active sales user or admin"),
        ({"campaign": "99999"}, "choose a campaign from the list"),
        ({"amount": "-1"}, "the amount must be zero or more"),
    ):
        response = _edit(client, deal_id, **{"owner": str(sales), **changes})
        assert response.status_code == 400, changes
        assert message in response.get_data(as_text=True)
    with app.app_context():
        deal = db.session.get(Opportunity, deal_id)
        assert (deal.stage, deal.amount, deal.campaign_id) == (
            "open",
            Decimal("100"),
            campaigns["Webinar"],
        )


def test_sales_cannot_open_or_edit_someone_elses_opportunity(app, client, sales):
    other = make_user(app, "sales", email="bob@example.com")
    deal_id = _opportunity(app, other)
    assert client.get(f"/admin/opportunities/{deal_id}").status_code == 403
    mine = _opportunity(app, sales)
    response = post_form(
        client,
        f"/admin/opportunities/{deal_id}",
        {"name": "Mine now", "amount": "1", "stage": "won", "campaign": "auto"},
        page=f"/admin/opportunities/{mine}",
    )
    assert response.status_code == 403
    with app.app_context():
        assert db.session.get(Opportunity, deal_id).stage == "open"
    assert client.get("/admin/opportunities/424242").status_code == 404


def test_the_list_filters_by_stage_and_owner_and_totals_by_stage(app, client):
    admin_login(app, client, role="admin")
    ann = make_user(app, "sales", email="ann@example.com")
    bob = make_user(app, "sales", email="bob@example.com")
    _opportunity(app, ann, "open", "100", name="Ann open")
    _opportunity(app, ann, "won", "250.50", name="Ann won")
    _opportunity(app, bob, "lost", "40", name="Bob lost")
    _opportunity(app, bob, "won", "1000", name="Bob won")
    html = client.get("/admin/opportunities").get_data(as_text=True)
    assert "<strong>1,250.50</strong>2 won" in html
    assert "<strong>100.00</strong>1 open" in html and "<strong>40.00</strong>1 lost" in html
    html = client.get(f"/admin/opportunities?stage=won&owner={ann}").get_data(as_text=True)
    assert "Ann won" in html and "Bob won" not in html and "Ann open" not in html
    assert "<strong>250.50</strong>1 won" in html
    bad = client.get("/admin/opportunities?stage=maybe")
    assert bad.status_code == 400 and "choose one of open, won, lost" in bad.get_data(as_text=True)


def test_a_salesperson_sees_their_own_opportunities_by_default(app, client, sales):
    other = make_user(app, "sales", email="bob@example.com")
    _opportunity(app, sales, name="My deal")
    _opportunity(app, other, name="Bob deal")
    html = client.get("/admin/opportunities").get_data(as_text=True)
    assert "My deal" in html and "Bob deal" not in html
    html = client.get("/admin/opportunities?owner=").get_data(as_text=True)
    assert "My deal" in html and "Bob deal" in html


def test_opening_an_opportunity_for_a_contact(app, client, sales):
    lead = new_lead(app, "direct@example.com", sales, stage="sql")
    assert client.get("/admin/opportunities/new").status_code == 404
    assert client.get("/admin/opportunities/new?contact=x").status_code == 404
    assert client.get(f"/admin/opportunities/new?contact={lead}").status_code == 200
    path = f"/admin/opportunities/new?contact={lead}"
    refused = post_form(client, path, {"name": "D", "amount": "", "stage": "open"})
    assert refused.status_code == 400
    response = post_form(
        client,
        path,
        {"name": "Direct", "amount": "75", "stage": "open", "owner": str(sales), "campaign": ""},
    )
    assert response.status_code == 302
    with app.app_context():
        deal = db.session.scalar(select(Opportunity))
        assert (deal.name, deal.contact_id, deal.campaign_source) == ("Direct", lead, "manual")
    stage, causes, actions = contact_state(app, lead)
    assert stage == "opportunity" and causes[-1] == "sales: opportunity 'Direct' opened by Sales"
    assert actions == [("convert", None)]
    other = make_user(app, "sales", email="bob@example.com")
    theirs = new_lead(app, "theirs@example.com", other)
    assert client.get(f"/admin/opportunities/new?contact={theirs}").status_code == 403


def test_follow_up_health_on_a_constructed_set(app, client):
    admin_login(app, client, role="marketer")
    ann = make_user(app, "sales", email="ann@example.com")
    on_time = new_lead(app, "a@example.com", ann, hours_ago=48, stage="sql")
    late = new_lead(app, "b@example.com", ann, hours_ago=72, stage="sql")
    new_lead(app, "c@example.com", ann, hours_ago=120)  # untouched: late
    new_lead(app, "d@example.com", None, hours_ago=1)  # untouched: pending
    new_lead(app, "old@example.com", ann, hours_ago=24 * 40, stage="sql")  # outside 30 days
    with app.app_context():
        now = utcnow()
        for contact_id, hours_ago in ((on_time, 46), (late, 42)):
            db.session.add(
                LeadAction(
                    contact_id=contact_id,
                    user_id=ann,
                    action="accept",
                    created_at=now - timedelta(hours=hours_ago),
                )
            )
        db.session.commit()
    html = client.get("/admin/leads/health").get_data(as_text=True)
    # Decided: a (2 h, on time), b (30 h, late), c (no action, 120 h: late); d is pending.
    assert '<strong id="share">33 %</strong>' in html
    assert '<strong id="median">16.0 h</strong>' in html  # median of 2 h and 30 h
    assert "<strong>4</strong>MQLs (1 pending)" in html
    untouched = html.split('id="untouched"')[1].split("</table>")[0]
    assert untouched.index("c@example.com") < untouched.index("d@example.com")
    assert "a@example.com" not in untouched and "old@example.com" not in untouched
    per_owner = html.split('id="per-owner"')[1].split("</table>")[0]
    # Ann's (her name is "Sales"): a, b, c; nobody's: d, pending.
    ann_row = per_owner.split("<td>Sales</td>")[1].split("</tr>")[0]
    assert '<td class="num">3</td><td class="num">1</td><td class="num">2</td>' in ann_row
    nobody_row = per_owner.split("<td>(nobody)</td>")[1].split("</tr>")[0]
    assert '<td class="num">1</td><td class="num">0</td><td class="num">0</td>' in nobody_row
    # FOLLOW_UP_HOURS=48 makes b's 30 hours on time: 2 of 3.
    app.config["FOLLOW_UP_HOURS"] = 48
    html = client.get("/admin/leads/health").get_data(as_text=True)
    assert '<strong id="share">67 %</strong>' in html


def test_what_people_typed_is_shown_as_text(app, client, sales):
    lead = new_lead(
        app, "xss@example.com", sales, first_name=XSS, company=XSS, cause=f"threshold {XSS}"
    )
    award(app, lead, f"rule {XSS}", 5, f"/p?{XSS}", title=XSS)
    refused = post_form(client, f"/admin/leads/{lead}", {"action": "disqualify", "reason": ""})
    assert refused.status_code == 400 and "<script" not in refused.get_data(as_text=True)
    converted = new_lead(app, "xss2@example.com", sales, last_name=XSS)
    response = post_form(
        client, f"/admin/leads/{converted}", {"action": "convert", "name": XSS, "amount": "1"}
    )
    assert response.status_code == 302
    for path in (
        "/admin/leads",
        f"/admin/leads/{lead}",
        f"/admin/leads/{converted}",
        "/admin/leads/health",
        "/admin/opportunities",
        response.headers["Location"],
    ):
        html = client.get(path).get_data(as_text=True)
        assert "<script" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


@pytest.mark.browser
def test_a_lead_through_the_queue_in_chromium(app, sales, browser, tmp_path):  # noqa: F811
    """Log in as sales, accept the lead, convert it, win the deal: screenshots on the way."""
    from werkzeug.serving import make_server

    from tracker.redis_conn import free_port

    lead = new_lead(app, "browser@example.com", sales, first_name="Bea", company="Acme")
    award(app, lead, "Pricing page", 30, "/pricing")
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        page = browser.new_page()
        page.goto(f"{base}/admin/leads")
        page.fill("#email", "sales@example.com")
        page.fill("#password", "correct horse 9")
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/admin/leads")
        assert "Pricing page" in page.inner_text("#waiting")
        page.screenshot(path=str(tmp_path / "leads.png"), full_page=True)

        page.click("text=Bea <browser@example.com>")
        page.click("#accept-form button")
        page.wait_for_url(f"**/admin/leads/{lead}?done=accept")
        assert page.inner_text("#stage") == "sql"

        page.fill("#convert-form #name", "Acme rollout")
        page.fill("#convert-form #amount", "4200")
        page.fill("#convert-form #expected_close", "2025-12-31")
        page.click("#convert-form button")
        page.wait_for_url("**/admin/opportunities/*?saved=1")
        page.select_option("#stage", "won")
        page.click("form button[type=submit] >> text=Save")
        page.wait_for_url("**/admin/opportunities/*?saved=1")
        assert "closed" in page.inner_text("main")
        page.screenshot(path=str(tmp_path / "opportunity.png"), full_page=True)
    finally:
        server.shutdown()
    stage, causes, actions = contact_state(app, lead)
    assert stage == "customer"
    assert causes[-3:] == [
        "sales: accepted by Sales",
        "sales: converted to an opportunity by Sales",
        "sales: opportunity 'Acme rollout' won by Sales",
    ]
    assert [a for a, _ in actions] == ["accept", "convert"]
    with app.app_context():
        deal = db.session.scalar(select(Opportunity))
        assert (deal.stage, deal.amount) == ("won", Decimal("4200"))
    assert (tmp_path / "leads.png").stat().st_size > 0
