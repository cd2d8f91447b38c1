"""Segments through the pipeline: membership kept current by ingestion, rebuilt in full,
previewed before saving, with joins and leaves logged."""

from __future__ import annotations

from sqlalchemy import select

from tests.automation.test_scoring_pipeline import contact
from tests.conftest import event, ingest_all, post_events
from tracker.automation_models import ContactTag, Segment, SegmentChange, SegmentMember
from tracker.db import db
from tracker.models import Contact

RULES = """\
segments:
  - name: Pricing fans
    match:
      visited: {path: "/pricing*", at_least: 2, within_days: 30}
  - name: Hot pricing fans
    match:
      all:
        - in_segment: Pricing fans
        - tag: hot
rules:
  - name: Pricing
    event: pageview
    when: {path: "/pricing*"}
    points: 10
thresholds:
  - name: Hot
    score: engagement
    at_least: 20
    actions: [{add_tag: hot}]
  - name: Fans to MQL
    score: engagement
    at_least: 20
    segment: Hot pricing fans
    actions: [{set_stage: mql}]
"""


def load(app, tmp_path, text=RULES):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return app.test_cli_runner().invoke(args=["automation", "load", str(path)]), str(path)


def members(app, name):
    with app.app_context():
        return set(
            db.session.scalars(
                select(Contact.email)
                .join(SegmentMember, SegmentMember.contact_id == Contact.id)
                .join(Segment, Segment.id == SegmentMember.segment_id)
                .where(Segment.name == name)
            )
        )


def test_ingestion_keeps_segments_current_and_logs_joins(app, client, site, tmp_path):
    result, _ = load(app, tmp_path)
    assert result.exit_code == 0, result.output
    assert "2 segments" in result.output
    post_events(
        client,
        site.key,
        [event("identify", email="ada@example.com"), event(url="https://example.com/pricing")],
    )
    ingest_all(app)
    assert members(app, "Pricing fans") == set()
    post_events(client, site.key, [event(url="https://example.com/pricing/teams")])
    ingest_all(app)
    # Second pricing view: 20 points → tag "hot" → both segments → the segment threshold fires.
    assert members(app, "Pricing fans") == {"ada@example.com"}
    assert members(app, "Hot pricing fans") == {"ada@example.com"}
    assert contact(app).stage == "mql"
    with app.app_context():
        log = db.session.execute(
            select(Segment.name, SegmentChange.change)
            .join(Segment, Segment.id == SegmentChange.segment_id)
            .order_by(SegmentChange.id)
        ).all()
    assert [tuple(row) for row in log] == [("Pricing fans", "join"), ("Hot pricing fans", "join")]


def test_leaving_is_logged_and_only_touched_contacts_move_incrementally(
    app, client, site, tmp_path
):
    load(app, tmp_path)
    post_events(
        client,
        site.key,
        [
            event("identify", email="ada@example.com"),
            event(url="https://example.com/pricing"),
            event(url="https://example.com/pricing/x"),
        ],
    )
    ingest_all(app)
    assert "ada@example.com" in members(app, "Hot pricing fans")
    with app.app_context():
        db.session.execute(ContactTag.__table__.delete())
        db.session.add(Contact(email="bob@example.com", traits={}))
        db.session.commit()
    # Nothing of Ada's arrived: incremental refreshes leave her alone …
    post_events(client, site.key, [event(url="https://example.com/")], visitor="other-0001")
    ingest_all(app)
    assert "ada@example.com" in members(app, "Hot pricing fans")
    # … the full rebuild sees the tag is gone.
    result = app.test_cli_runner().invoke(args=["segments", "rebuild"])
    assert result.exit_code == 0, result.output
    assert members(app, "Hot pricing fans") == set()
    assert members(app, "Pricing fans") == {"ada@example.com"}
    with app.app_context():
        changes = db.session.scalars(select(SegmentChange.change).order_by(SegmentChange.id)).all()
        assert changes[-1] == "leave"
        rebuilt = db.session.scalars(select(Segment.rebuilt_at)).all()
        assert all(rebuilt)
    listed = app.test_cli_runner().invoke(args=["segments", "list"]).output
    assert "Pricing fans\t1 members" in listed


def test_preview_counts_without_saving(app, client, site, tmp_path):
    post_events(
        client,
        site.key,
        [
            event("identify", email="ada@example.com"),
            event(url="https://example.com/pricing"),
            event(url="https://example.com/pricing/x"),
        ],
    )
    ingest_all(app)
    path = tmp_path / "draft.yaml"
    path.write_text(RULES)
    result = app.test_cli_runner().invoke(args=["segments", "preview", str(path), "Pricing fans"])
    assert result.exit_code == 0, result.output
    assert "1 contacts match 'Pricing fans'" in result.output
    assert "ada@example.com" in result.output
    with app.app_context():
        assert db.session.scalars(select(Segment)).all() == []


def test_circular_segments_are_refused(app, tmp_path):
    circular = """\
segments:
  - name: A
    match: {in_segment: B}
  - name: B
    match: {not: {in_segment: A}}
"""
    result, _ = load(app, tmp_path, circular)
    assert result.exit_code == 1
    assert "circle" in result.output
    with app.app_context():
        assert db.session.scalars(select(Segment)).all() == []


def test_unknown_segment_keys_name_the_line(app, tmp_path):
    bad = """\
segments:
  - name: Typo
    match:
      visited: {pth: "/pricing"}
"""
    result, _ = load(app, tmp_path, bad)
    assert result.exit_code == 1
    assert "rules.yaml:2: segment 'Typo':" in result.output
    assert "pth" in result.output


def test_an_incremental_refresh_agrees_with_a_full_rebuild(app, tmp_path):
    """Touched contacts end where a full rebuild puts them, levels of in_segment included."""
    import uuid

    from automation.segments import refresh
    from tracker.models import Event, utcnow

    load(app, tmp_path)
    with app.app_context():
        people = [Contact(email=f"c{i}@example.com", traits={}) for i in range(12)]
        db.session.add_all(people)
        db.session.commit()
        ids = [p.id for p in people]
        fans = db.session.scalar(select(Segment.id).where(Segment.name == "Pricing fans"))
        hot = db.session.scalar(select(Segment.id).where(Segment.name == "Hot pricing fans"))
        now = utcnow()
        # Stale stored state: members who no longer match, matches not yet stored.
        db.session.add_all(
            [SegmentMember(segment_id=hot, contact_id=cid, since=now) for cid in ids[:4]]
            + [ContactTag(contact_id=cid, tag="hot") for cid in ids[2:8]]
            + [
                Event(
                    uuid=uuid.uuid4(),
                    contact_id=cid,
                    type="pageview",
                    path="/pricing",
                    occurred_at=now,
                    is_bot=False,
                )
                for cid in ids[:6] + ids[1:6]
            ]
        )
        db.session.commit()

        def stored():
            rows = db.session.execute(select(SegmentMember.segment_id, SegmentMember.contact_id))
            return {(segment_id, cid) for segment_id, cid in rows}

        with db.engine.begin() as conn:
            moved = refresh(conn, now, touched=ids[:6])
        incremental = stored()
        assert sorted(moved.joined[fans]) == ids[1:6]  # c0 has one pricing view only
        assert sorted(moved.left[hot]) == ids[:2]
        assert sorted(moved.joined[hot]) == ids[4:6]
        with db.engine.begin() as conn:
            refresh(conn, now)
        assert (
            incremental == stored() == {(fans, c) for c in ids[1:6]} | {(hot, c) for c in ids[2:6]}
        )
