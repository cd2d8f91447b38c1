"""Email performance per segment, on a small constructed data set worked out by hand.

Segments: "Developers", "Agencies <b>", "Empty" (sent nothing). Sequences:
"Dev onboarding" (entry segment Developers) and "Back to nurture" (not-ready
leads of Agencies). Broadcasts: "Agency news" to Agencies, "Everyone news" to
no segment, "Dev digest" to Developers.

  m0 Dev digest -> c2, sent 20 Feb (before March).
  m1 Dev onboarding step 1 -> c1, who entered by joining Developers: sent 2 Mar,
     opened (2 opens), clicked 2 Mar (1 click); c1 became MQL 4 Mar (counts).
  m2 Dev onboarding step 1 -> c2, entered by a threshold action: sent and
     clicked 3 Mar (2 clicks); c2 MQL 5 Mar -> "(no segment)".
  m3 Agency news -> c3: sent 5 Mar, 1 machine open, unsubscribed 6 Mar.
  m4 Agency news -> c4: bounced 5 Mar.
  m5 Everyone news -> c5: sent 7 Mar, opened once, clicked once 7 Mar;
     c5 MQL 20 Mar, 13 days later (does not count).
  m6 Back to nurture step 1 -> c3, sent back as not ready: sent and clicked
     8 Mar (1 click); c3 MQL 9 Mar -> "(no segment)".
  m7 Dev onboarding step 2 -> c1: sent and clicked 10 Mar (1 click); c1 MQL
     again 12 Mar: still one contact for Developers.
  m8 Dev digest -> c4, still queued: not tried, not counted.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime

from automation.reports import NO_SEGMENT, Period, email_report
from automation.sequence_runner import enrol_joined
from tests.conftest import admin_login
from tracker.automation_models import Segment, StageChange
from tracker.db import db
from tracker.email_models import (
    Broadcast,
    EmailTemplate,
    Enrolment,
    Message,
    Sequence,
    TemplateVersion,
)
from tracker.models import Contact

MARCH = Period(date(2026, 3, 1), date(2026, 3, 31))
ZERO = dict.fromkeys(
    (
        "sent",
        "delivered",
        "human_opened",
        "human_opens",
        "machine_opens",
        "human_clicked",
        "human_clicks",
        "machine_clicks",
        "unsubscribes",
        "bounces",
        "mqls",
    ),
    0,
)


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def build_segments_dataset() -> None:
    """Store the data set described at the top of this module (inside an app context)."""
    developers = Segment(name="Developers", rules={})
    agencies = Segment(name="Agencies <b>", rules={})
    empty = Segment(name="Empty", rules={})
    template = EmailTemplate(name="Update")
    db.session.add_all([developers, agencies, empty, template])
    db.session.flush()
    version = TemplateVersion(
        template_id=template.id, version=1, variants=[], source={}, digest="x"
    )
    onboarding = Sequence(
        name="Dev onboarding",
        steps=[{"send": "Update"}],
        exits={},
        entry_segment_id=developers.id,
    )
    nurture = Sequence(
        name="Back to nurture",
        steps=[{"send": "Update"}],
        exits={},
        entry_segment_id=agencies.id,
        on_not_ready=True,
    )
    broadcasts = {
        name: Broadcast(name=name, template_id=template.id, segment_id=segment, status="done")
        for name, segment in [
            ("Agency news", agencies.id),
            ("Everyone news", None),
            ("Dev digest", developers.id),
        ]
    }
    contacts = {n: Contact(email=f"c{n}@example.com", stage="mql", traits={}) for n in range(1, 6)}
    db.session.add_all([version, onboarding, nurture, *broadcasts.values(), *contacts.values()])
    db.session.flush()
    cid = {n: contact.id for n, contact in contacts.items()}

    # c1 joins Developers and enters the sequence the way ingestion enrols it.
    (joined,) = enrol_joined(db.session.connection(), {developers.id: [cid[1]]}, at(3, 1))
    by_threshold = Enrolment(
        sequence_id=onboarding.id, contact_id=cid[2], cause="threshold 'Hot'", status="active"
    )
    not_ready = Enrolment(
        sequence_id=nurture.id,
        contact_id=cid[3],
        cause="sales: sent back to nurture by Ann: next quarter",
        status="active",
    )
    db.session.add_all([by_threshold, not_ready])
    db.session.flush()

    def message(contact: int, **fields) -> Message:
        fields = {"status": "sent", **fields}
        kind = "broadcast" if "broadcast_id" in fields else "sequence"
        return Message(
            contact_id=cid[contact],
            template_id=template.id,
            template_version_id=version.id,
            variant="default",
            kind=kind,
            to_addr=f"c{contact}@example.com",
            **fields,
        )

    digest, agency, everyone = (
        broadcasts[n].id for n in ("Dev digest", "Agency news", "Everyone news")
    )
    db.session.add_all(
        [
            message(2, broadcast_id=digest, sent_at=at(2, 20)),
            message(
                1,
                enrolment_id=joined,
                step=0,
                sent_at=at(3, 2, 9),
                opened_at=at(3, 2, 10),
                opens=2,
                clicked_at=at(3, 2, 11),
                clicks=1,
            ),
            message(
                2,
                enrolment_id=by_threshold.id,
                step=0,
                sent_at=at(3, 3, 9),
                clicked_at=at(3, 3, 10),
                clicks=2,
            ),
            message(
                3, broadcast_id=agency, sent_at=at(3, 5), machine_opens=1, unsubscribed_at=at(3, 6)
            ),
            message(4, broadcast_id=agency, status="bounced", bounced_at=at(3, 5)),
            message(
                5,
                broadcast_id=everyone,
                sent_at=at(3, 7, 9),
                opened_at=at(3, 7, 10),
                opens=1,
                clicked_at=at(3, 7, 11),
                clicks=1,
            ),
            message(
                3,
                enrolment_id=not_ready.id,
                step=0,
                sent_at=at(3, 8, 9),
                clicked_at=at(3, 8, 10),
                clicks=1,
            ),
            message(
                1,
                enrolment_id=joined,
                step=1,
                sent_at=at(3, 10, 9),
                clicked_at=at(3, 10, 10),
                clicks=1,
            ),
            message(4, broadcast_id=digest, status="queued"),
        ]
    )
    for contact, became in [
        (1, at(3, 4)),
        (2, at(3, 5)),
        (3, at(3, 9)),
        (5, at(3, 20)),
        (1, at(3, 12)),
    ]:
        db.session.add(
            StageChange(
                contact_id=cid[contact],
                from_stage="lead",
                to_stage="mql",
                cause="t",
                created_at=became,
            )
        )
    db.session.commit()


EXPECTED = {
    "Agencies <b>": {
        **ZERO,
        "sent": 2,
        "delivered": 1,
        "machine_opens": 1,
        "unsubscribes": 1,
        "bounces": 1,
    },
    "Developers": {
        **ZERO,
        "sent": 3,
        "delivered": 3,
        "human_opened": 1,
        "human_opens": 2,
        "human_clicked": 2,
        "human_clicks": 2,
        "mqls": 1,
    },
    NO_SEGMENT: {
        **ZERO,
        "sent": 3,
        "delivered": 3,
        "human_opened": 1,
        "human_opens": 1,
        "human_clicked": 3,
        "human_clicks": 4,
        "mqls": 2,
    },
}


def test_email_report_per_segment_matches_the_hand_computed_answers(app):
    with app.app_context():
        build_segments_dataset()
        report = email_report(Period())
        march = email_report(MARCH)
    # Named segments alphabetically, the rest last; "Empty" sent nothing and has no row.
    assert [r.segment for r in report.by_segment] == ["Agencies <b>", "Developers", NO_SEGMENT]
    assert {r.segment: r.counts for r in report.by_segment} == EXPECTED
    assert all(
        (r.template, r.variant, r.sequence, r.step) == ("", "", "", None) for r in report.by_segment
    )
    # Every tried message is in exactly one segment row: the totals agree with the templates'.
    for column in ("sent", "human_clicks", "bounces"):
        assert sum(r.counts[column] for r in report.by_segment) == sum(
            r.counts[column] for r in report.by_template
        )
    # In March the February digest drops out of Developers.
    march_rows = {r.segment: r.counts for r in march.by_segment}
    assert march_rows["Developers"]["sent"] == 2 and march_rows["Developers"]["mqls"] == 1


def test_the_email_page_shows_the_segment_table_and_its_csv(app, client):
    with app.app_context():
        build_segments_dataset()
    admin_login(app, client, "marketer")
    page = client.get("/admin/reports/email").get_data(as_text=True)
    table = page.split('id="by-segment"')[1].split("</table>")[0]
    assert "Agencies &lt;b&gt;" in table and "<b>" not in table
    assert table.index("Agencies") < table.index("Developers") < table.index(NO_SEGMENT)
    response = client.get("/admin/reports/email?format=csv&from=2026-03-01&to=2026-03-31")
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    segments = {r["segment"]: r for r in rows if r["segment"]}
    assert list(segments) == ["Agencies <b>", "Developers", NO_SEGMENT]
    developers = segments["Developers"]
    assert (developers["sent"], developers["human_clicked"], developers["mqls"]) == ("2", "2", "1")
    assert (developers["template"], developers["sequence"], developers["step"]) == ("", "", "")
    unassigned = segments[NO_SEGMENT]
    assert (unassigned["human_clicks"], unassigned["mqls"]) == ("4", "2")
    # The other two tables' rows leave the segment empty.
    assert any(r["template"] == "Update" and r["segment"] == "" for r in rows)
