"""Campaign pages and report pages of the admin: forms, validation, tables, CSV, roles."""

from __future__ import annotations

import csv
import io
from datetime import date
from decimal import Decimal

from sqlalchemy import func, select

from tests.automation.test_reports import EVIL, build_dataset
from tests.conftest import admin_login, csrf_of, post_form
from tracker.db import db
from tracker.email_models import EmailTemplate, Sequence
from tracker.sales_models import Campaign, CampaignCost

VALID = {
    "name": "Autumn fair",
    "channel": "event",
    "utm_campaigns": "Autumn-Fair, fair26 , autumn-fair",
    "starts_on": "2026-09-01",
    "ends_on": "2026-09-30",
    "cost": "",
    "cost_starts_on": ["2026-09-01", "", ""],
    "cost_ends_on": ["2026-09-15", "", ""],
    "cost_amount": ["1,200.5", "", ""],
}


def _email_things(app) -> tuple[int, int]:
    with app.app_context():
        template = EmailTemplate(name="Fair invite")
        sequence = Sequence(name="Fair follow-up", steps=[])
        db.session.add_all([template, sequence])
        db.session.commit()
        return template.id, sequence.id


def _campaigns(app) -> list[Campaign]:
    with app.app_context():
        rows = db.session.scalars(select(Campaign).order_by(Campaign.id)).all()
        db.session.expunge_all()
        return list(rows)


def test_creating_and_editing_a_campaign(app, client):
    admin_login(app, client, "marketer")
    template_id, sequence_id = _email_things(app)
    form = {**VALID, "template_ids": [str(template_id)], "sequence_ids": [str(sequence_id)]}
    response = post_form(client, "/admin/campaigns/new", form)
    assert response.status_code == 302
    (campaign,) = _campaigns(app)
    assert campaign.utm_campaigns == ["Autumn-Fair", "fair26"]  # duplicates in any case dropped
    assert (campaign.template_ids, campaign.sequence_ids) == ([template_id], [sequence_id])
    assert (campaign.starts_on, campaign.ends_on, campaign.cost) == (
        date(2026, 9, 1),
        date(2026, 9, 30),
        None,
    )
    with app.app_context():
        costs = db.session.execute(select(CampaignCost.starts_on, CampaignCost.amount)).all()
    assert costs == [(date(2026, 9, 1), Decimal("1200.50"))]
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Saved." in page and 'value="1200.50"' in page

    # Remove the first line, add another, and rename.
    path = f"/admin/campaigns/{campaign.id}"
    edit = {
        **form,
        "name": "Autumn fair 2026",
        "cost_starts_on": ["2026-09-01", "2026-09-16", "", ""],
        "cost_ends_on": ["2026-09-15", "2026-09-30", "", ""],
        "cost_amount": ["1200.50", "800", "", ""],
        "cost_remove": ["0"],
    }
    assert post_form(client, path, edit).status_code == 302
    with app.app_context():
        costs = db.session.execute(select(CampaignCost.starts_on, CampaignCost.amount)).all()
        name = db.session.scalar(select(Campaign.name))
    assert costs == [(date(2026, 9, 16), Decimal("800.00"))] and name == "Autumn fair 2026"
    listing = client.get("/admin/campaigns").get_data(as_text=True)
    assert "Autumn fair 2026" in listing and "per period" in listing


def _refused(client, path, changes, field, message, app, before):
    response = post_form(client, path, {**VALID, **changes})
    page = response.get_data(as_text=True)
    assert response.status_code == 400, (changes, response.status_code)
    assert f'id="{field}-error"' in page, (field, page)
    assert message in page, (message, page)
    assert [c.name for c in _campaigns(app)] == before


def test_campaign_form_validation_changes_nothing(app, client):
    admin_login(app, client, "marketer")
    assert post_form(client, "/admin/campaigns/new", {**VALID, "name": "Taken"}).status_code == 302
    before = ["Taken"]
    new = "/admin/campaigns/new"
    cases = [
        ({"name": "  "}, "name", "Give the campaign a name."),
        ({"name": "x" * 201}, "name", "200 characters"),
        ({"name": "Taken"}, "name", "Another campaign is called"),
        ({"channel": "telepathy"}, "channel", "Choose one of"),
        ({"utm_campaigns": "AUTUMN-fair"}, "utm_campaigns", "already belongs to the campaign"),
        ({"template_ids": ["999"]}, "template_ids", "Choose templates from the list."),
        ({"sequence_ids": ["x"]}, "sequence_ids", "Choose sequences from the list."),
        ({"template_ids": ["\u00b2"]}, "template_ids", "Choose templates from the list."),
        ({"starts_on": "1 Sept"}, "starts_on", "is not a date"),
        ({"ends_on": "2026-08-01"}, "ends_on", "The end comes before the start."),
        ({"cost": "lots"}, "cost", "is not an amount"),
        ({"cost": "-5"}, "cost", "must be between 0 and"),
        ({"cost": "NaN"}, "cost", "must be between 0 and"),
        ({"cost": "1e30"}, "cost", "must be between 0 and"),
        ({"cost": "100", "starts_on": ""}, "cost", "give a start and an end"),
        ({"cost": "100"}, "cost", "not both"),
        ({"cost_amount": ["ten", "", ""]}, "cost_rows", "Line 1:"),
        ({"cost_ends_on": ["2026-08-01", "", ""]}, "cost_rows", "ends before it starts"),
        ({"cost_starts_on": ["", "", ""]}, "cost_rows", "is not a date"),
    ]
    # The first campaign holds the codes of VALID: other cases use fresh codes.
    for changes, field, message in cases:
        if field != "utm_campaigns":
            changes = {"utm_campaigns": "other", **changes}
        _refused(client, new, changes, field, message, app, before)
    # Typed values come back in the form, escaped.
    page = post_form(client, new, {**VALID, "name": "<b>x</b>", "channel": "?"}).get_data(
        as_text=True
    )
    assert 'value="&lt;b&gt;x&lt;/b&gt;"' in page and "<b>x</b>" not in page


def test_campaign_pages_for_roles_and_missing_ones(app, client):
    admin_login(app, client, "sales")
    assert client.get("/admin/campaigns").status_code == 403
    assert client.get("/admin/reports/roi").status_code == 403
    token = csrf_of(client, "/admin/")
    refused = client.post("/admin/campaigns/new", data={**VALID, "csrf_token": token})
    assert refused.status_code == 403 and not _campaigns(app)
    other = app.test_client()
    admin_login(app, other, "marketer")
    assert other.get("/admin/campaigns/12345").status_code == 404
    assert "Campaigns" in other.get("/admin/campaigns").get_data(as_text=True)


def test_roi_page_switches_models_and_escapes_names(app, client):
    with app.app_context():
        ids = build_dataset()
    admin_login(app, client, "marketer")
    march = "from=2026-03-01&to=2026-03-31"
    linear = client.get(f"/admin/reports/roi?model=linear&{march}")
    assert linear.status_code == 200
    page = linear.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    row = _html_row(page, "Spring search")
    # visitors, leads, MQLs, converted, opportunities, revenue, cost, per lead, per opp, ROI
    assert row == ["3", "1", "1", "0.50", "0.50", "4,500", "2,350", "2,350", "4,700", "91.5%"]
    last = _html_row(
        client.get(f"/admin/reports/roi?model=last&{march}").get_data(as_text=True), "Spring search"
    )
    assert last[-1] == "-100%" and last[4] == "0" and last[-2] == "\u2014"
    webinar_last = _html_row(
        client.get(f"/admin/reports/roi?model=last&{march}").get_data(as_text=True), "Webinar"
    )
    assert webinar_last[-1] == "1,061.3%"  # (9000 - 775) / 775
    assert f'href="/admin/campaigns/{ids.c}"' in page


def _html_row(page: str, name: str) -> list[str]:
    """The numeric cells of the ROI row whose campaign link reads `name`."""
    import re

    start = page.index(f">{name}</a>")
    row = page[start : page.index("</tr>", start)]
    return re.findall(r'<td class="num">([^<]*)</td>', row)


def test_roi_csv_is_raw_and_guarded(app, client):
    with app.app_context():
        build_dataset()
    admin_login(app, client, "admin")
    response = client.get("/admin/reports/roi?model=first&from=2026-03-01&to=2026-03-31&format=csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert (
        response.headers["Content-Disposition"]
        == 'attachment; filename="roi_first_2026-03-01_2026-03-31.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0][:4] == ["campaign", "channel", "visitors", "leads"]
    by_name = {row[0]: row for row in rows[1:]}
    assert by_name["Spring search"][2:] == [
        "3",
        "1",
        "1",
        "1",
        "1",
        "9000",
        "2350",
        "2350",
        "2350",
        "2.8298",
    ]
    assert by_name["Webinar"][-1] == "-1"
    # The formula-looking name is quoted; its empty ratios are empty cells, not dashes.
    evil = by_name["'" + EVIL]
    assert evil[1] == "display" and evil[9] == "" and evil[11] == ""
    assert by_name["(no campaign)"][3] == "2"


def test_report_pages_refuse_bad_input_with_the_form(app, client):
    admin_login(app, client, "marketer")
    for path, field in [
        ("/admin/reports/roi?model=magic", "model"),
        ("/admin/reports/roi?from=yesterday", "from"),
        ("/admin/reports/email?to=2026-13-01", "to"),
        ("/admin/reports/calibration?from=2026-03-02&to=2026-03-01", "to"),
        ("/admin/reports/calibration?from=%3Cscript%3E", "from"),
    ]:
        response = client.get(path)
        page = response.get_data(as_text=True)
        assert response.status_code == 400, path
        assert f'id="{field}-error"' in page and "<form" in page, path
        assert "<script>" not in page


def test_email_and_calibration_pages_and_csv(app, client):
    with app.app_context():
        build_dataset()
    admin_login(app, client, "marketer")
    page = client.get("/admin/reports/email").get_data(as_text=True)
    assert "Nurture &lt;1&gt;" in page and "Welcome" in page
    response = client.get("/admin/reports/email?format=csv&from=2026-03-01")
    assert response.mimetype == "text/csv"
    assert 'filename="email_2026-03-01_now.csv"' in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    invite_a = next(r for r in rows if r["template"] == "Webinar invite" and r["variant"] == "a")
    assert (invite_a["sent"], invite_a["delivered"], invite_a["bounces"], invite_a["mqls"]) == (
        "2",
        "1",
        "1",
        "1",
    )
    step = next(r for r in rows if r["sequence"] == "Welcome")
    assert step["step"] == "2" and step["unsubscribes"] == "1"  # position 1 is the 2nd step

    calibration = client.get("/admin/reports/calibration").get_data(as_text=True)
    assert "MQL at 40 (40)" in calibration and "100%" in calibration
    rows = list(
        csv.DictReader(
            io.StringIO(client.get("/admin/reports/calibration?format=csv").get_data(as_text=True))
        )
    )
    assert [(r["band"], r["contacts"], r["opportunity_rate"]) for r in rows][3:] == [
        ("30-39", "1", "0"),
        ("40-49", "1", "1"),
        ("50-59", "2", "1"),
    ]
    assert rows[4]["thresholds"] == "MQL at 40 (40)"


def test_reports_work_with_no_data(app, client):
    admin_login(app, client, "marketer")
    for path in ("/admin/reports/roi", "/admin/reports/email", "/admin/reports/calibration"):
        assert client.get(path).status_code == 200, path
        assert client.get(path + "?format=csv").status_code == 200, path
        # The edges of the calendar are days like any other.
        assert client.get(path + "?from=0001-01-01&to=9999-12-31").status_code == 200, path
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Campaign)) == 0
