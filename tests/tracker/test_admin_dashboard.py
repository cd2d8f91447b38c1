"""The dashboard on a constructed data set (answers worked out by hand), per role; SVG escaping.

Relative to now: visitors a and b today, c three days ago (c's page carries the
campaign code "spring"). Leads: L1 created 10 days ago, MQL 8 days ago (2 days),
SQL 5 days ago (3 days), no owner; L2 created 9 days ago, MQL 3 days ago (6 days),
owned by the sales user; L3 created a day ago. Nobody acted on an MQL. A campaign
whose name is markup won a 500 deal (chosen by hand) and cost 100.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from automation.ingest import store_rows
from automation.rollups import settle
from automation.rows import event_row
from tests.conftest import BROWSER_UA, admin_login
from tracker.automation_models import StageChange
from tracker.db import db
from tracker.models import Contact, Site, User, utcnow
from tracker.sales_models import Campaign, Opportunity, RollupDay
from tracker.svg_charts import bar_chart, column_chart

EVIL = "<script>alert(1)</script>Spring"


def pageview(site: Site, visitor: str, days_ago: int, url: str = "https://example.com/") -> Any:
    return event_row(
        {
            "id": str(uuid.uuid4()),
            "type": "pageview",
            "url": url,
            "site": site.id,
            "visitor": visitor,
            "at": (utcnow() - timedelta(days=days_ago, minutes=1)).timestamp(),
            "ua": BROWSER_UA,
        }
    )


def build(app: Flask, site: Site, sales_id: int | None = None) -> None:
    now = utcnow()
    with app.app_context():
        store_rows(
            [
                pageview(site, "a", 0),
                pageview(site, "b", 0),
                pageview(site, "c", 3, "https://example.com/?utm_campaign=spring"),
            ]
        )
        l1 = Contact(email="l1@example.com", created_at=now - timedelta(days=10))
        l2 = Contact(email="l2@example.com", created_at=now - timedelta(days=9), owner_id=sales_id)
        l3 = Contact(email="l3@example.com", created_at=now - timedelta(days=1))
        db.session.add_all([l1, l2, l3])
        db.session.flush()
        l1.stage, l2.stage = "sql", "mql"
        for contact, stage, days in ((l1, "mql", 8), (l1, "sql", 5), (l2, "mql", 3)):
            db.session.add(
                StageChange(
                    contact_id=contact.id,
                    to_stage=stage,
                    cause="test",
                    created_at=now - timedelta(days=days),
                )
            )
        campaign = Campaign(
            name=EVIL, channel="paid_search", utm_campaigns=["spring"], cost=Decimal(100)
        )
        db.session.add(campaign)
        db.session.flush()
        db.session.add(
            Opportunity(
                contact_id=l1.id,
                campaign_id=campaign.id,
                campaign_source="manual",
                name="Deal",
                amount=Decimal(500),
                stage="won",
                closed_at=now - timedelta(hours=1),
                created_at=now - timedelta(days=2),
            )
        )
        db.session.add(RollupDay(day=now.date(), metric="email_opens", key="", value=7))
        db.session.commit()
        with db.engine.begin() as conn:
            settle(conn, now.date() - timedelta(days=40), now.date())
        db.session.remove()


def cells(page: str, row_id: str) -> list[str]:
    row = re.search(rf'<tr id="{row_id}">(.*?)</tr>', page, re.S)
    assert row, f"no row {row_id}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row[1])]


def test_marketer_sees_the_funnel_roi_email_and_health(
    app: Flask, client: FlaskClient, site: Site
) -> None:
    build(app, site)
    admin_login(app, client, "marketer")
    response = client.get("/admin/dashboard")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert cells(page, "step-visitors") == ["Visitors", "3", "", ""]
    assert cells(page, "step-lead") == ["Leads", "3", "100%", ""]
    assert cells(page, "step-mql") == ["MQLs", "2", "66.7%", "4.0"]  # median of 2 and 6 days
    assert cells(page, "step-sql") == ["SQLs", "1", "50%", "3.0"]
    assert cells(page, "step-opportunity") == ["Opportunities", "0", "0%", "\u2014"]
    # The campaign's name is text everywhere: the table and nothing injected.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;Spring" in page
    assert "<script>alert(1)" not in page
    roi = re.search(r'<table id="roi-summary">(.*?)</table>', page, re.S)
    assert roi and ">500<" in roi[1] and ">100<" in roi[1] and ">400%<" in roi[1]
    email = re.search(r'<div class="cards" id="email">(.*?)</div>\s*</div>', page, re.S)
    assert email and "<strong>7</strong>human opens" in email[1]
    health = re.search(r'id="health">(.*?)</div>\s*</div>', page, re.S)
    assert health and "<strong>2</strong>MQLs nobody has acted on" in health[1]
    assert page.count("<svg") == 3


def test_period_changes_the_counts(app: Flask, client: FlaskClient, site: Site) -> None:
    build(app, site)
    admin_login(app, client, "marketer")
    page = client.get("/admin/dashboard?days=7").get_data(as_text=True)
    assert cells(page, "step-visitors")[1] == "3"
    assert cells(page, "step-lead")[1] == "1"  # only L3 was created in the last 7 days
    assert cells(page, "step-mql")[1] == "1"  # L2's MQL, 3 days ago


def test_sales_see_the_funnel_and_their_own_follow_up(
    app: Flask, client: FlaskClient, site: Site
) -> None:
    sales_id = admin_login(app, client, "sales")
    build(app, site, sales_id)
    page = client.get("/admin/dashboard").get_data(as_text=True)
    assert cells(page, "step-mql")[1] == "2"
    assert 'id="roi-summary"' not in page and 'id="email"' not in page
    assert "Your lead follow-up" in page
    health = re.search(r'id="health">(.*?)</div>\s*</div>', page, re.S)
    assert health and "<strong>1</strong>MQLs nobody has acted on" in health[1]
    with app.app_context():
        assert db.session.get(User, sales_id).role == "sales"


def test_a_period_it_does_not_offer_is_a_400(app: Flask, client: FlaskClient) -> None:
    admin_login(app, client, "admin")
    response = client.get("/admin/dashboard?days=%3Cb%3E")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert 'id="days-error"' in page and "&#39;&lt;b&gt;&#39; is not a period" in page
    assert client.get("/admin/dashboard?days=9999999999999").status_code == 400


def test_dashboard_is_in_the_menu_and_needs_a_login(app: Flask, client: FlaskClient) -> None:
    response = client.get("/admin/dashboard")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    admin_login(app, client, "sales")
    assert 'href="/admin/dashboard"' in client.get("/admin/").get_data(as_text=True)


def test_svg_labels_are_escaped() -> None:
    evil = '<script>alert("x")</script>&'
    for chart in (bar_chart([(evil, 3), ("ok", 1)], evil), column_chart([(evil, 2)], evil)):
        text = str(chart)
        assert "<script>" not in text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;" in text
        assert text.startswith("<svg") and text.endswith("</svg>")


def test_bar_widths_follow_the_values() -> None:
    text = str(bar_chart([("a", 100), ("b", 50), ("c", 0)], "t", width=640))
    widths = [int(w) for w in re.findall(r'<rect x="\d+" y="\d+" width="(\d+)"', text)]
    assert widths == [410, 205, 0]


def test_the_rollups_keep_every_offered_period_ready():
    from automation.rollups import WINDOWS
    from tracker.admin.dashboard import PERIODS

    assert tuple(PERIODS) == WINDOWS
