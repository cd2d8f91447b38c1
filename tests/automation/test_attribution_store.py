"""Stored attribution: who gets marked, what a refresh writes, and that the sums stay true.

The report's figures themselves are checked by hand in test_reports.py (which now reads
these stored credits); here: the bookkeeping that keeps them current.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

from sqlalchemy import func, select, update

from automation import attribution_store as store
from automation.reports import Period, roi_report
from tests.automation.test_reports import MARCH, at, build_dataset
from tests.conftest import admin_login, event, ingest_all, post_events
from tracker.automation_models import StageChange
from tracker.db import db
from tracker.models import Contact
from tracker.privacy import erase_contact
from tracker.sales_models import (
    AttributionCredit,
    AttributionDay,
    AttributionDirty,
    Campaign,
    Opportunity,
)


def marked() -> set[int]:
    return set(db.session.scalars(select(AttributionDirty.contact_id)))


def clear_marks() -> None:
    db.session.query(AttributionDirty).delete()
    db.session.commit()


def day_sums(model: str = "linear") -> dict[tuple[date, str, int], Fraction]:
    rows = db.session.execute(
        select(
            AttributionDay.day,
            AttributionDay.metric,
            AttributionDay.campaign_id,
            AttributionDay.value,
        ).where(AttributionDay.model == model)
    )
    return {(d, m, c): store._exact(v) for d, m, c, v in rows if v}


def credit_sums(model: str = "linear") -> dict[tuple[date, str, int], Fraction]:
    """The day sums recomputed from the per-contact credits: what the days must equal."""
    rows = db.session.execute(
        select(
            AttributionCredit.day,
            AttributionCredit.metric,
            AttributionCredit.campaign_id,
            func.sum(AttributionCredit.value),
        )
        .where(AttributionCredit.model == model)
        .group_by(AttributionCredit.day, AttributionCredit.metric, AttributionCredit.campaign_id)
    )
    return {(d, m, c): store._exact(v) for d, m, c, v in rows if v}


def figures(model: str = "linear", period: Period = MARCH) -> dict[int | None, dict[str, Fraction]]:
    return {
        row.campaign_id: {
            "leads": row.leads,
            "mqls": row.mqls,
            "converted": row.converted,
            "opportunities": row.opportunities,
            "revenue": row.revenue,
        }
        for row in roi_report(model, period).rows
    }


def test_triggers_mark_whoever_writes_a_conversion(app):
    with app.app_context():
        contact = Contact(email="t@example.com", created_at=at(3, 1))
        other = Contact(email="u@example.com", created_at=at(3, 1))
        db.session.add_all([contact, other])
        db.session.commit()
        assert marked() == {contact.id, other.id}  # a new contact is a new lead
        clear_marks()

        db.session.add(
            StageChange(contact_id=contact.id, from_stage="lead", to_stage="sql", cause="t")
        )
        db.session.commit()
        assert marked() == set()  # SQL is not a conversion the report credits
        db.session.add(
            StageChange(contact_id=contact.id, from_stage="lead", to_stage="mql", cause="t")
        )
        db.session.commit()
        assert marked() == {contact.id}
        clear_marks()

        deal = Opportunity(contact_id=contact.id, name="D", amount=Decimal(10))
        db.session.add(deal)
        db.session.commit()
        assert marked() == {contact.id}
        clear_marks()
        deal.contact_id = other.id  # moved to another contact: both change
        db.session.commit()
        assert marked() == {contact.id, other.id}
        clear_marks()
        deal.amount = Decimal(20)
        db.session.commit()
        assert marked() == {other.id}
        clear_marks()
        db.session.delete(deal)
        db.session.commit()
        assert marked() == {other.id}


def test_ingestion_marks_campaign_touches_and_identified_visitors(app, client, site):
    with app.app_context():
        # An anonymous visit with a campaign code marks nobody: there is no contact yet.
        post_events(client, site.key, [event(url="https://example.com/?utm_campaign=spring")])
        ingest_all(app)
        assert marked() == set()
        post_events(client, site.key, [event("identify", email="ada@example.com")])
        ingest_all(app)
        ada = db.session.scalar(select(Contact.id).where(Contact.email == "ada@example.com"))
        assert marked() == {ada}
        clear_marks()
        # A plain page view of a known contact changes no credit; a tagged one may.
        post_events(client, site.key, [event(url="https://example.com/pricing")])
        ingest_all(app)
        assert marked() == set()
        post_events(client, site.key, [event(url="https://example.com/?utm_campaign=summer")])
        ingest_all(app)
        assert marked() == {ada}


def test_refresh_writes_credits_whose_day_sums_match_and_repeats_to_the_same(app):
    with app.app_context():
        build_dataset()
        assert store.refresh(db.engine) == 6  # every contact was marked when created
        assert store.pending(db.session.connection()) == 0
        first = day_sums()
        assert first and first == credit_sums()
        assert day_sums("first") == credit_sums("first")
        # Recomputing everyone again changes nothing: differences, not totals, are added.
        with db.engine.begin() as conn:
            store.mark_all(conn)
        store.refresh(db.engine, chunk=2)
        assert day_sums() == first == credit_sums()


def test_a_changed_deal_moves_the_report_by_the_difference(app):
    with app.app_context():
        build_dataset()
        store.refresh(db.engine)
        before = figures()
        db.session.execute(
            update(Opportunity).where(Opportunity.name == "O1").values(amount=Decimal(12000))
        )
        db.session.commit()
        assert store.pending(db.session.connection()) == 1
        after = figures()  # the report catches up on a small backlog itself
        assert store.pending(db.session.connection()) == 0
        total = sum(row["revenue"] for row in after.values()) - sum(
            row["revenue"] for row in before.values()
        )
        assert total == 3000
        assert day_sums() == credit_sums()


def test_a_larger_backlog_is_left_to_the_job_and_reported(app, monkeypatch):
    monkeypatch.setattr(store, "REFRESH_CHUNK", 2)
    with app.app_context():
        build_dataset()
        store.refresh(db.engine)
        with db.engine.begin() as conn:
            store.mark_all(conn)
        assert store.catch_up(db.engine) == 6  # more than a chunk: left alone
        assert roi_report("linear", MARCH).waiting == 6
        store.refresh(db.engine)
        assert roi_report("linear", MARCH).waiting == 0


def test_changing_a_campaigns_codes_recomputes_everyone(app):
    with app.app_context():
        ids = build_dataset()
        store.refresh(db.engine)
        assert figures("first")[ids.a]["leads"] == 1  # c1 came in by spring
        campaign = db.session.get(Campaign, ids.a)
        campaign.utm_campaigns = ["nothing-matches"]
        db.session.commit()
        store.refresh(db.engine)  # the fingerprint changed: all six marked and recomputed
        assert store.pending(db.session.connection()) == 0
        now = figures("first")
        assert now[ids.a]["leads"] == 0
        # c1 (created 5 Mar) met nothing else before: its lead joins c3's and c5's.
        assert now[None]["leads"] == 3 and now[ids.b]["leads"] == 1
        # c1's MQL (12 Mar) now goes to the webinar visit of 10 Mar.
        assert now[ids.b]["mqls"] == 2
        assert day_sums("first") == credit_sums("first")


def test_an_erased_contact_leaves_its_credit_behind_anonymous(app):
    with app.app_context():
        ids = build_dataset()
        store.refresh(db.engine)
        before = figures()
        c1 = db.session.scalar(select(Contact.id).where(Contact.email == "c1@example.com"))
        deal = db.session.scalar(select(Opportunity).where(Opportunity.name == "O1"))
        deal.campaign_id = ids.a  # what automatic attribution set when it opened
        db.session.commit()
        store.refresh(db.engine)
        assert erase_contact(c1) is not None
        assert store.pending(db.session.connection()) == 0
        after = figures()
        # c1's lead, MQL and conversion keep their linear shares; its deal, now without a
        # contact, is credited whole to the campaign it names.
        for metric in ("leads", "mqls", "converted"):
            for campaign in before:
                assert after[campaign][metric] == before[campaign][metric], (campaign, metric)
        assert sum(r["revenue"] for r in after.values()) == sum(
            r["revenue"] for r in before.values()
        )
        assert after[ids.a]["revenue"] == 9000
        anonymous = db.session.scalar(
            select(func.count()).where(AttributionCredit.contact_id.is_(None))
        )
        assert anonymous > 0
        assert day_sums() == credit_sums()  # the deal's shares left both together


def test_credit_is_by_conversion_day_in_utc(app):
    with app.app_context():
        late = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)
        db.session.add(Contact(email="late@example.com", created_at=late))
        db.session.commit()
        store.refresh(db.engine)
        assert figures(period=Period(date(2026, 3, 31), date(2026, 3, 31)))[None]["leads"] == 1
        assert None not in figures(period=Period(date(2026, 4, 1), date(2026, 4, 1)))


def test_the_page_says_when_figures_are_catching_up(app, client, monkeypatch):
    monkeypatch.setattr(store, "REFRESH_CHUNK", 2)
    with app.app_context():
        build_dataset()
    admin_login(app, client, "marketer")
    page = client.get("/admin/reports/roi?model=linear").get_data(as_text=True)
    assert 'id="catching-up"' in page and "6 contact(s) wait" in page
    with app.app_context():
        store.refresh(db.engine)
    page = client.get("/admin/reports/roi?model=linear").get_data(as_text=True)
    assert 'id="catching-up"' not in page


def test_reports_attribute_command_recomputes_everyone(app):
    with app.app_context():
        build_dataset()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["reports", "attribute"])
    assert result.exit_code == 0, result.output
    assert "Recomputed the campaign credit of 6 contact(s)." in result.output
    result = runner.invoke(args=["reports", "attribute", "--all"])
    assert "of 6 contact(s)" in result.output
    with app.app_context():
        assert store.pending(db.session.connection()) == 0
        assert day_sums() == credit_sums()
    result = runner.invoke(args=["reports", "roi", "--from", "2026-03-01", "--to", "2026-03-31"])
    assert result.exit_code == 0 and "Spring search" in result.output
    assert "wait for their campaign credit" not in result.output


def test_erased_credit_of_a_deleted_campaign_goes_to_no_campaign(app):
    with app.app_context():
        ids = build_dataset()
        store.refresh(db.engine)
        c2 = db.session.scalar(select(Contact.id).where(Contact.email == "c2@example.com"))
        assert erase_contact(c2) is not None
        webinar_leads = figures("first")[ids.b]["leads"]
        nobody_leads = figures("first")[None]["leads"]
        assert webinar_leads == 1  # c2's, now anonymous
        db.session.execute(
            update(Opportunity).where(Opportunity.campaign_id == ids.b).values(campaign_id=None)
        )
        db.session.delete(db.session.get(Campaign, ids.b))
        db.session.commit()
        store.refresh(db.engine)
        after = figures("first")
        assert ids.b not in after
        assert after[None]["leads"] == nobody_leads + 1
        assert day_sums("first") == credit_sums("first")


def test_a_campaign_change_during_a_refresh_is_never_computed_with_the_old_one(app, monkeypatch):
    """The job read the campaigns; then a report saw them change and marked everyone. The
    job's next chunk must not recompute anyone with what it read before."""
    with app.app_context():
        ids = build_dataset()
        store.refresh(db.engine)
        follow = store._follow_campaigns
        calls: list[int] = []

        def change_after_reading(conn, keys):
            changed = follow(conn, keys)
            calls.append(1)
            if len(calls) > 1:  # the report page's own look at the campaigns
                return changed
            # What an admin and a report page do meanwhile, in their own transactions.
            with db.engine.begin() as other:
                other.execute(
                    update(Campaign.__table__)
                    .where(Campaign.__table__.c.id == ids.a)
                    .values(utm_campaigns=["nothing-matches"])
                )
            store.catch_up(db.engine, chunk=1)  # sees the change: marks all six
            return changed

        with db.engine.begin() as conn:
            store.mark_all(conn)
        monkeypatch.setattr(store, "_follow_campaigns", change_after_reading)
        assert store.refresh(db.engine) == 0  # stopped at its first chunk
        monkeypatch.setattr(store, "_follow_campaigns", follow)
        assert store.pending(db.session.connection()) == 6
        store.refresh(db.engine)
        now = figures("first")
        assert now[ids.a]["leads"] == 0  # spring no longer counts
        assert now[None]["leads"] == 3
        assert day_sums("first") == credit_sums("first")
