"""The closed-loop reports on a small constructed data set, answers worked out by hand.

March 2026 is the period. Campaigns: A "Spring search" (code spring; cost per
period: 3000 over 15 Feb-16 Mar, 1500 over 17 Mar-15 Apr), B "Webinar" (code
webinar and the template "Webinar invite"; total 1000 over 1 Mar-9 Apr) and C
(code idle, no cost; a name that tries spreadsheet and HTML injection).

Contacts and their touches:
  c1 created 5 Mar; first visit 2 Mar with utm Spring (and its page view),
     event with utm webinar 10 Mar; MQL 12 Mar, opportunity 20 Mar; deal O1
     opened 20 Mar, won 25 Mar for 9000 (campaign automatic).
  c2 created 8 Mar; first visit 8 Mar (webinar, and its page view); human click on the webinar
     email 15 Mar; MQL 16 Mar; opportunity 22 Mar; deal O2 lost.
  c3 created 9 Mar, no touches; a webinar email only machines opened and
     clicked; MQL 11 Mar.
  c4 created 20 Feb; first visit 18 Feb (idle, and its page view); event 3 Mar (spring); MQL
     4 Mar; deal O3 opened 6 Mar with campaign C chosen by hand, won 30 Mar, 2000.
  c5 created 20 Mar, no touches. c6 created 1 Feb, nothing else.
  Visitors without contact: a bot with utm spring (not counted), and v6 on
  7 Mar (spring) and 9 Mar (webinar).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

import pytest

from automation import rollups
from automation.report_tables import (
    CostPeriod,
    campaign_cost,
    csv_text,
    human,
    machine,
    percent,
    prorate,
    roi,
    safe_cell,
)
from automation.reports import Period, calibration_report, email_report, roi_report
from tracker.automation_models import StageChange, Threshold
from tracker.db import db
from tracker.email_models import EmailTemplate, Enrolment, Message, Sequence, TemplateVersion
from tracker.models import Contact, Event, Site, Visitor
from tracker.sales_models import Campaign, CampaignCost, Opportunity

MARCH = Period(date(2026, 3, 1), date(2026, 3, 31))
EVIL = "=Idle<script>alert(1)</script>"


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


@dataclass
class Dataset:
    """Ids of what `build_dataset` made."""

    a: int
    b: int
    c: int


def build_dataset() -> Dataset:
    """Store the data set described at the top of this module (inside an app context)."""
    site = Site(key="k-reports", name="Reports", domains=["example.com"])
    db.session.add(site)
    a = Campaign(name="Spring search", channel="paid_search", utm_campaigns=["spring"])
    b = Campaign(
        name="Webinar",
        channel="event",
        utm_campaigns=["webinar"],
        starts_on=date(2026, 3, 1),
        ends_on=date(2026, 4, 9),
        cost=Decimal("1000"),
    )
    c = Campaign(name=EVIL, channel="display", utm_campaigns=["idle"])
    invite = EmailTemplate(name="Webinar invite")
    nurture = EmailTemplate(name="Nurture <1>")
    db.session.add_all([a, b, c, invite, nurture])
    db.session.flush()
    b.template_ids = [invite.id]
    db.session.add_all(
        [
            CampaignCost(
                campaign_id=a.id,
                starts_on=date(2026, 2, 15),
                ends_on=date(2026, 3, 16),
                amount=Decimal("3000"),
            ),
            CampaignCost(
                campaign_id=a.id,
                starts_on=date(2026, 3, 17),
                ends_on=date(2026, 4, 15),
                amount=Decimal("1500"),
            ),
        ]
    )
    contacts = {}
    for n, created, score, stage in [
        (1, at(3, 5), 55, "customer"),
        (2, at(3, 8, 10), 42, "nurture"),
        (3, at(3, 9), 35, "mql"),
        (4, at(2, 20), 58, "customer"),
        (5, at(3, 20), 5, "lead"),
        (6, at(2, 1), 12, "subscriber"),
    ]:
        contacts[n] = Contact(
            email=f"c{n}@example.com", created_at=created, score=score, stage=stage
        )
    db.session.add_all(contacts.values())
    db.session.flush()
    cid = {n: contact.id for n, contact in contacts.items()}

    def visitor(key: str, contact: int | None, first: datetime, code: str | None, bot=False):
        row = Visitor(
            site_id=site.id,
            key=key,
            contact_id=cid[contact] if contact else None,
            first_seen=first,
            last_seen=first,
            utm_campaign=code,
            is_bot=bot,
        )
        db.session.add(row)
        db.session.flush()
        return row.id

    def event(visitor_id: int, contact: int | None, when: datetime, code: str, bot=False):
        db.session.add(
            Event(
                uuid=uuid.uuid4(),
                site_id=site.id,
                visitor_id=visitor_id,
                contact_id=cid[contact] if contact else None,
                type="pageview",
                utm_campaign=code,
                occurred_at=when,
                is_bot=bot,
            )
        )

    v1 = visitor("v1", 1, at(3, 2), "Spring")
    event(v1, 1, at(3, 2), "spring")
    event(v1, 1, at(3, 10), "webinar")
    v2 = visitor("v2", 2, at(3, 8, 9), "webinar")
    event(v2, 2, at(3, 8, 9), "webinar")  # a first visit is an event too
    v4 = visitor("v4", 4, at(2, 18), "idle")
    event(v4, 4, at(2, 18), "idle")
    event(v4, 4, at(3, 3), "spring")
    v5 = visitor("v5", None, at(3, 5), "spring", bot=True)
    event(v5, None, at(3, 5), "spring", bot=True)
    v6 = visitor("v6", None, at(3, 7), "spring")
    event(v6, None, at(3, 7), "spring")
    event(v6, None, at(3, 9), "webinar")

    for n, stage, when in [
        (1, "mql", at(3, 12)),
        (1, "opportunity", at(3, 20)),
        (2, "mql", at(3, 16)),
        (2, "opportunity", at(3, 22)),
        (3, "mql", at(3, 11)),
        (4, "mql", at(3, 4)),
    ]:
        db.session.add(
            StageChange(
                contact_id=cid[n], from_stage="lead", to_stage=stage, cause="test", created_at=when
            )
        )
    db.session.add_all(
        [
            Opportunity(
                contact_id=cid[1],
                name="O1",
                amount=Decimal("9000"),
                stage="won",
                created_at=at(3, 20),
                closed_at=at(3, 25),
            ),
            Opportunity(
                contact_id=cid[2],
                name="O2",
                amount=Decimal("5000"),
                stage="lost",
                created_at=at(3, 22),
                closed_at=at(3, 28),
            ),
            Opportunity(
                contact_id=cid[4],
                name="O3",
                amount=Decimal("2000"),
                stage="won",
                campaign_id=c.id,
                campaign_source="manual",
                created_at=at(3, 6),
                closed_at=at(3, 30),
            ),
        ]
    )
    db.session.add(Threshold(name="MQL at 40", score="total", minimum=40, actions=[]))

    versions = {}
    for template in (invite, nurture):
        version = TemplateVersion(
            template_id=template.id, version=1, variants=[], source={}, digest="x"
        )
        db.session.add(version)
        db.session.flush()
        versions[template.id] = version.id
    sequence = Sequence(name="Welcome", steps=[])
    db.session.add(sequence)
    db.session.flush()

    def message(contact: int, template: EmailTemplate, variant: str, **fields):
        enrolment_id = None
        if "step" in fields:
            enrolment = Enrolment(
                sequence_id=sequence.id, contact_id=cid[contact], cause="t", status="completed"
            )
            db.session.add(enrolment)
            db.session.flush()
            enrolment_id = enrolment.id
        db.session.add(
            Message(
                contact_id=cid[contact],
                template_id=template.id,
                template_version_id=versions[template.id],
                variant=variant,
                kind="sequence" if enrolment_id else "broadcast",
                enrolment_id=enrolment_id,
                to_addr=f"c{contact}@example.com",
                status="sent",
                **fields,
            )
        )

    message(
        2,
        invite,
        "a",
        sent_at=at(3, 14),
        opened_at=at(3, 14),
        opens=2,
        machine_opens=1,
        clicked_at=at(3, 15),
        clicks=3,
    )
    message(3, invite, "b", sent_at=at(3, 10), machine_opens=1, machine_clicks=1)
    message(1, invite, "a", bounced_at=at(3, 1))
    message(4, nurture, "default", step=0, sent_at=at(2, 19), clicked_at=at(2, 20), clicks=1)
    message(
        1,
        nurture,
        "default",
        step=1,
        sent_at=at(3, 6),
        clicked_at=at(3, 6),
        clicks=1,
        unsubscribed_at=at(3, 7),
    )
    db.session.commit()
    # Events were written straight to the table: count them into the daily rollups the
    # way ingestion would have.
    with db.engine.begin() as conn:
        rollups.rebuild(conn, date(2026, 2, 1), date(2026, 4, 30))
    return Dataset(a.id, b.id, c.id)


# Hand-computed March costs: A 3000 x 16/30 + 1500 x 15/30; B 1000 x 31/40; C none.
COST = {"a": Fraction(1600 + 750), "b": Fraction(775), "c": Fraction(0)}

# Credits per model in March, worked out from the touches listed at the top.
HALF = Fraction(1, 2)
EXPECTED = {
    "first": {
        "a": dict(leads=1, mqls=1, converted=1, opportunities=1, revenue=9000),
        "b": dict(leads=1, mqls=1, converted=1, opportunities=1, revenue=0),
        "c": dict(leads=0, mqls=1, converted=0, opportunities=1, revenue=2000),
    },
    "last": {
        "a": dict(leads=1, mqls=1, converted=0, opportunities=0, revenue=0),
        "b": dict(leads=1, mqls=2, converted=2, opportunities=2, revenue=9000),
        "c": dict(leads=0, mqls=0, converted=0, opportunities=1, revenue=2000),
    },
    "linear": {
        "a": dict(leads=1, mqls=1, converted=HALF, opportunities=HALF, revenue=4500),
        "b": dict(leads=1, mqls=1 + HALF, converted=1 + HALF, opportunities=1 + HALF, revenue=4500),
        "c": dict(leads=0, mqls=HALF, converted=0, opportunities=1, revenue=2000),
    },
}


@pytest.mark.parametrize("model", ["first", "last", "linear"])
def test_roi_report_matches_the_hand_computed_answers(app, model):
    with app.app_context():
        ids = build_dataset()
        report = roi_report(model, MARCH)
    rows = {row.campaign_id: row for row in report.rows}
    names = {"a": ids.a, "b": ids.b, "c": ids.c}
    for key, expected in EXPECTED[model].items():
        row = rows[names[key]]
        for metric, value in expected.items():
            assert getattr(row, metric) == value, (model, key, metric)
        assert row.cost == COST[key]
        assert row.cost_per_lead == (COST[key] / row.leads if row.leads else None)
        assert row.cost_per_opportunity == (
            COST[key] / row.opportunities if row.opportunities else None
        )
        assert row.roi == ((row.revenue - COST[key]) / COST[key] if COST[key] else None)
    # Visitors are not attributed: distinct human visitors with a campaign code in March.
    assert (rows[ids.a].visitors, rows[ids.b].visitors, rows[ids.c].visitors) == (3, 3, 0)
    # c3 and c5 came with no touch; c3's MQL too.
    nobody = rows[None]
    assert (nobody.leads, nobody.mqls, nobody.converted, nobody.revenue) == (2, 1, 0, 0)


def test_roi_named_figures(app):
    """The same answers, spelled out, for the reader who checks one by hand."""
    with app.app_context():
        ids = build_dataset()
        linear = {r.campaign_id: r for r in roi_report("linear", MARCH).rows}
        last = {r.campaign_id: r for r in roi_report("last", MARCH).rows}
        everything = {r.campaign_id: r for r in roi_report("first", Period()).rows}
    assert linear[ids.a].roi == Fraction(4500 - 2350, 2350)
    assert linear[ids.b].cost_per_opportunity == Fraction(775) / Fraction(3, 2)
    assert last[ids.a].roi == -1
    assert last[ids.b].roi == Fraction(9000 - 775, 775)
    assert linear[ids.c].roi is None  # no cost: no ROI, shown as a dash
    # All time: whole costs, c4 and c6 count as leads, v4's February visit counts for C.
    assert everything[ids.a].cost == 4500 and everything[ids.b].cost == 1000
    assert everything[ids.c].leads == 1 and everything[ids.c].visitors == 1
    assert everything[None].leads == 3  # c3, c5, c6


def test_email_report_counts_per_variant_and_step(app):
    with app.app_context():
        build_dataset()
        report = email_report(Period())
        march = email_report(MARCH)
    rows = {(r.template, r.variant): r.counts for r in report.by_template}
    assert rows[("Webinar invite", "a")] == dict(
        sent=2,
        delivered=1,
        human_opened=1,
        human_opens=2,
        machine_opens=1,
        human_clicked=1,
        human_clicks=3,
        machine_clicks=0,
        unsubscribes=0,
        bounces=1,
        mqls=1,
    )
    assert rows[("Webinar invite", "b")] == dict(
        sent=1,
        delivered=1,
        human_opened=0,
        human_opens=0,
        machine_opens=1,
        human_clicked=0,
        human_clicks=0,
        machine_clicks=1,
        unsubscribes=0,
        bounces=0,
        mqls=0,
    )
    # c1 became MQL 6 days after clicking; c4 12 days after: only c1 counts.
    nurture = rows[("Nurture <1>", "default")]
    assert (nurture["sent"], nurture["human_clicked"], nurture["unsubscribes"]) == (2, 2, 1)
    assert nurture["mqls"] == 1
    steps = {(r.sequence, r.step): r.counts for r in report.by_step}
    assert set(steps) == {("Welcome", 0), ("Welcome", 1)}
    assert steps[("Welcome", 0)]["mqls"] == 0 and steps[("Welcome", 1)]["mqls"] == 1
    assert steps[("Welcome", 1)]["unsubscribes"] == 1
    # In March the February send drops out.
    march_rows = {(r.template, r.variant): r.counts for r in march.by_template}
    assert march_rows[("Nurture <1>", "default")]["sent"] == 1
    assert [(r.sequence, r.step) for r in march.by_step] == [("Welcome", 1)]


def test_calibration_bands_by_current_score(app):
    with app.app_context():
        build_dataset()
        everything = calibration_report(Period())
        march = calibration_report(MARCH)
    table = {b.label: (b.contacts, b.mqls, b.opportunities) for b in everything}
    assert table == {
        "0-9": (1, 0, 0),
        "10-19": (1, 0, 0),
        "20-29": (0, 0, 0),
        "30-39": (1, 1, 0),
        "40-49": (1, 1, 1),
        "50-59": (2, 2, 2),
    }
    forty = next(b for b in everything if b.label == "40-49")
    assert forty.thresholds == ["MQL at 40 (40)"] and forty.opportunity_rate == 1
    assert next(b for b in everything if b.label == "20-29").opportunity_rate is None
    assert {b.label: b.contacts for b in march} == {
        "0-9": 1,
        "10-19": 0,
        "20-29": 0,
        "30-39": 1,
        "40-49": 1,
        "50-59": 1,
    }


def test_period_refuses_an_end_before_its_start():
    with pytest.raises(ValueError, match="ends before it starts"):
        Period(date(2026, 3, 2), date(2026, 3, 1))


def test_prorating_by_days():
    month = CostPeriod(date(2026, 3, 1), date(2026, 3, 31), Decimal("310"))
    assert prorate(month, date(2026, 3, 10), date(2026, 3, 19)) == 100
    assert prorate(month, date(2026, 4, 1), None) == 0
    assert prorate(month, None, None) == 310
    assert campaign_cost(Decimal("90"), None, None, [], date(2026, 3, 1), None) == 90
    assert campaign_cost(None, None, None, [], None, None) == 0
    # Rows win over a total.
    assert campaign_cost(Decimal("90"), None, None, [month], None, None) == 310
    assert roi(0, 0) is None and roi(150, 100) == Fraction(1, 2)


def test_cells_for_people_and_for_csv():
    assert human(None) == "\u2014" and human(Fraction(3, 2)) == "1.50" and human(1200) == "1,200"
    assert human(Fraction(4700)) == "4,700"
    assert (
        machine(None) == ""
        and machine(Fraction(1, 3)) == "0.3333"
        and machine(Fraction(-1)) == "-1"
    )
    assert machine(Decimal("2350.00")) == "2350"
    assert percent(Fraction(-1)) == "-100%" and percent(Fraction(1, 3)) == "33.3%"
    assert percent(None) == "\u2014"


def test_csv_guards_text_cells_against_formulas():
    for text in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=x"):
        assert safe_cell(text) == "'" + text
    assert safe_cell("Spring") == "Spring"
    document = csv_text(["name", "roi"], [["=HYPERLINK(1)", Fraction(-1)], ['a,"b"', None]])
    assert document == 'name,roi\r\n\'=HYPERLINK(1),-1\r\n"a,""b""",\r\n'


def test_reports_roi_command(app):
    with app.app_context():
        build_dataset()
    runner = app.test_cli_runner()
    table = runner.invoke(
        args=["reports", "roi", "--model", "last", "--from", "2026-03-01", "--to", "2026-03-31"]
    )
    assert table.exit_code == 0, table.output
    webinar = next(line for line in table.output.splitlines() if line.startswith("Webinar"))
    assert webinar.split()[-1] == "1,061.3%" and "9,000" in webinar
    as_csv = runner.invoke(args=["reports", "roi", "--model", "first", "--csv"])
    assert as_csv.exit_code == 0 and as_csv.output.startswith("campaign,channel,visitors")
    assert "'" + EVIL in as_csv.output
    bad = runner.invoke(args=["reports", "roi", "--from", "March"])
    assert bad.exit_code == 2 and "is not a date" in bad.output
    backwards = runner.invoke(args=["reports", "roi", "--from", "2026-03-02", "--to", "2026-03-01"])
    assert backwards.exit_code == 2 and "ends before it starts" in backwards.output
