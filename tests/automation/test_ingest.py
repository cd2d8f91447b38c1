"""Ingestion: stream → database, exactly once, with visitors, identities and bot flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

from sqlalchemy import func, select

from automation.ingest import StreamIngestor
from tests.conftest import BROWSER_UA, event, ingest_all, post_events
from tracker.db import db
from tracker.models import Contact, Event, Visitor
from tracker.redis_conn import get_redis
from tracker.sites import create_site


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def ingestor(app, consumer: str = "c1", **kw) -> StreamIngestor:
    ing = StreamIngestor(
        get_redis(app),
        app.config["EVENT_STREAM"],
        app.config["INGEST_GROUP"],
        consumer=consumer,
        **kw,
    )
    ing.ensure_group()
    return ing


def test_events_are_stored_acked_and_removed_from_the_stream(app, client, site):
    post_events(client, site.key, [event(), event("outbound", target="https://other.test/")])
    assert ingest_all(app) == 2
    redis = get_redis(app)
    assert redis.xlen(app.config["EVENT_STREAM"]) == 0
    pending = redis.xpending(app.config["EVENT_STREAM"], app.config["INGEST_GROUP"])
    assert pending["pending"] == 0
    with app.app_context():
        kinds = sorted(db.session.scalars(select(Event.type)))
    assert kinds == ["outbound", "pageview"]


def test_the_same_events_posted_twice_are_stored_once(app, client, site):
    batch = [event(), event("custom", name="signup")]
    post_events(client, site.key, batch)
    post_events(client, site.key, batch)  # the snippet's retry queue re-sent them
    ingest_all(app)
    assert count(app, Event) == 2


def test_a_redelivered_batch_inserts_nothing_twice(app, client, site):
    post_events(client, site.key, [event(), event(), event()])
    with app.app_context():
        ing = ingestor(app)
        entries = ing.read(wait=False)
        assert ing.process(entries).stored == 3
        # The same entries again, as after a crash between commit and XACK.
        assert ing.process(entries).stored == 0
    assert count(app, Event) == 3


def test_first_touch_is_kept_and_last_seen_moves(app, client, site):
    landing = (
        "https://example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=fall&gclid=abc"
    )
    post_events(client, site.key, [event(url=landing, referrer="https://news.test/")])
    ingest_all(app)
    time.sleep(0.01)
    post_events(client, site.key, [event(url="https://example.com/pricing?utm_source=ads")])
    ingest_all(app)
    with app.app_context():
        (visitor,) = db.session.scalars(select(Visitor)).all()
        assert visitor.landing_url == landing
        assert visitor.referrer == "https://news.test/"
        assert (visitor.utm_source, visitor.utm_medium, visitor.utm_campaign) == (
            "newsletter",
            "email",
            "fall",
        )
        assert visitor.click_id == "gclid:abc"
        assert visitor.last_seen > visitor.first_seen
        events = db.session.scalars(select(Event).order_by(Event.occurred_at)).all()
        assert [e.utm_source for e in events] == ["newsletter", "ads"]
        assert events[1].path == "/pricing"


def test_the_same_browser_key_on_two_sites_is_two_visitors(app, client, site):
    """Visitors are found per site: a key another site also uses is not that site's visitor."""
    with app.app_context():
        other = create_site("Other", ["other.test"])
        db.session.commit()
        other_key = other.key
    for _ in range(2):  # the second round finds both as known visitors
        post_events(client, site.key, [event()], visitor="shared-key-01")
        post_events(
            client,
            other_key,
            [event(url="https://other.test/")],
            visitor="shared-key-01",
            origin="https://other.test",
        )
        ingest_all(app)
    with app.app_context():
        visitors = db.session.scalars(select(Visitor).order_by(Visitor.site_id)).all()
        assert [(v.key, v.site_id) for v in visitors] == [
            ("shared-key-01", visitors[0].site_id),
            ("shared-key-01", visitors[1].site_id),
        ]
        assert visitors[0].site_id != visitors[1].site_id
        per_visitor = dict(
            db.session.execute(
                select(Event.visitor_id, func.count()).group_by(Event.visitor_id)
            ).all()
        )
        assert per_visitor == {visitors[0].id: 2, visitors[1].id: 2}


def test_identify_gives_the_contact_the_anonymous_history(app, client, site):
    post_events(client, site.key, [event(url="https://example.com/a")], visitor="laptop-0001")
    post_events(client, site.key, [event(url="https://example.com/b")], visitor="laptop-0001")
    ingest_all(app)
    post_events(
        client,
        site.key,
        [
            event(
                "identify", email="  Ada@Example.COM ", traits={"first_name": "Ada", "plan": "pro"}
            )
        ],
        visitor="laptop-0001",
    )
    post_events(client, site.key, [event(url="https://example.com/c")], visitor="laptop-0001")
    ingest_all(app)
    with app.app_context():
        (contact,) = db.session.scalars(select(Contact)).all()
        assert contact.email == "ada@example.com"
        assert contact.first_name == "Ada"
        assert contact.traits == {"plan": "pro"}
        contact_ids = set(db.session.scalars(select(Event.contact_id)))
        assert contact_ids == {contact.id}
        assert count(app, Event) == 4


def test_identify_takes_only_that_browsers_events_still_anonymous(app, client, site):
    post_events(client, site.key, [event(url="https://example.com/a")], visitor="shared-0001")
    post_events(client, site.key, [event(url="https://example.com/b")], visitor="other-00001")
    ingest_all(app)
    post_events(
        client, site.key, [event("identify", email="ada@example.com")], visitor="shared-0001"
    )
    ingest_all(app)
    # Someone else signs in on the same browser: what was Ada's stays hers.
    post_events(
        client, site.key, [event("identify", email="bob@example.com")], visitor="shared-0001"
    )
    ingest_all(app)
    with app.app_context():
        ids = dict(db.session.execute(select(Contact.email, Contact.id)).all())
        owners = db.session.execute(
            select(Event.url, Event.type, Event.contact_id).order_by(Event.id)
        ).all()
        assert [(url, kind, owner) for url, kind, owner in owners] == [
            ("https://example.com/a", "pageview", ids["ada@example.com"]),
            ("https://example.com/b", "pageview", None),
            ("https://example.com/", "identify", ids["ada@example.com"]),
            ("https://example.com/", "identify", ids["bob@example.com"]),
        ]


def test_two_devices_with_one_email_are_one_contact(app, client, site):
    post_events(client, site.key, [event(url="https://example.com/phone")], visitor="phone-00001")
    post_events(
        client, site.key, [event("identify", email="ada@example.com")], visitor="laptop-0001"
    )
    post_events(
        client, site.key, [event("identify", email="ADA@example.com")], visitor="phone-00001"
    )
    ingest_all(app)
    # Identify again later, in separate batches and both orders: still one contact.
    post_events(
        client,
        site.key,
        [event("identify", email="ada@example.com", traits={"company": "Analytical Engines"})],
        visitor="phone-00001",
    )
    ingest_all(app)
    with app.app_context():
        contacts = db.session.scalars(select(Contact)).all()
        assert len(contacts) == 1
        assert contacts[0].company == "Analytical Engines"
        visitors = db.session.scalars(select(Visitor)).all()
        assert {v.contact_id for v in visitors} == {contacts[0].id}
        assert set(db.session.scalars(select(Event.contact_id))) == {contacts[0].id}


def test_bots_are_stored_but_flagged(app, client, site):
    cases = {
        "headless-00001": (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) HeadlessChrome/130.0 Safari/537.36",
            "headless",
        ),
        "crawler-00001": (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "crawler",
        ),
        "curl-0000001": ("curl/8.5.0", "http_client"),
        "person-00001": (BROWSER_UA, None),
    }
    for visitor, (user_agent, _) in cases.items():
        post_events(client, site.key, [event()], visitor=visitor, **{"User-Agent": user_agent})
    ingest_all(app)
    with app.app_context():
        rows = db.session.execute(
            select(Visitor.key, Event.is_bot, Event.bot_reason, Visitor.is_bot).join(
                Visitor, Visitor.id == Event.visitor_id
            )
        ).all()
    found = {key: (is_bot, reason, visitor_bot) for key, is_bot, reason, visitor_bot in rows}
    for visitor, (_, reason) in cases.items():
        assert found[visitor] == (reason is not None, reason, reason is not None)


def test_a_malformed_entry_is_dead_lettered_and_the_rest_stored(app, client, site):
    stream = app.config["EVENT_STREAM"]
    redis = get_redis(app)
    post_events(client, site.key, [event()])
    redis.xadd(stream, {"d": b"{not json"})
    redis.xadd(stream, {"d": json.dumps({"type": "pageview", "id": "x"}).encode()})
    post_events(client, site.key, [event()])
    ingest_all(app)
    assert count(app, Event) == 2
    assert redis.xlen(stream + ":dead") == 2
    assert redis.xlen(stream) == 0


def test_an_event_for_a_deleted_site_is_dead_lettered_not_retried_forever(app, client, site):
    stream = app.config["EVENT_STREAM"]
    post_events(client, site.key, [event(), event()])
    entries = get_redis(app).xrange(stream)
    orphan = json.loads(entries[0][1][b"d"])
    orphan.update(site=99999, id=str(uuid.uuid4()))
    get_redis(app).xadd(stream, {"d": json.dumps(orphan).encode()})
    ingest_all(app)
    assert count(app, Event) == 2
    assert get_redis(app).xlen(stream + ":dead") == 1


KILLABLE = textwrap.dedent("""
    import sys, time
    from tests.conftest import make_app
    from automation.ingest import StreamIngestor
    from tracker.redis_conn import get_redis
    app = make_app(sys.argv[1], sys.argv[2])
    with app.app_context():
        ing = StreamIngestor(get_redis(app), app.config["EVENT_STREAM"],
                             app.config["INGEST_GROUP"], consumer="doomed", batch=1000)
        ing.ensure_group()
        entries = ing.read(wait=False)
        print(len(entries), flush=True)
        time.sleep(600)  # killed here: read, not stored, not acknowledged
        ing.process(entries)
""")


def test_a_batch_left_by_a_killed_worker_is_claimed_and_stored_once(
    app, client, site, database_url, redis_url
):
    for n in range(5):
        post_events(client, site.key, [event(), event()], visitor=f"visitor-{n:04d}")
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, database_url, redis_url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    assert worker.stdout.readline().strip() == "10"  # the doomed worker holds all 10
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)

    stream, group = app.config["EVENT_STREAM"], app.config["INGEST_GROUP"]
    assert get_redis(app).xpending(stream, group)["pending"] == 10
    with app.app_context():
        patient = ingestor(app, consumer="live", claim_idle_ms=60_000)
        assert patient.run_once(wait=False).read == 0  # not idle long enough yet
        survivor = ingestor(app, consumer="live", claim_idle_ms=0)
        result = survivor.run_once(wait=False)
        assert (result.read, result.stored) == (10, 10)
        assert survivor.run_once(wait=False).read == 0
    assert count(app, Event) == 10
    assert get_redis(app).xpending(stream, group)["pending"] == 0


def test_consumers_of_ended_jobs_are_forgotten(app, client, site):
    post_events(client, site.key, [event()])
    with app.app_context():
        ing = ingestor(app, consumer="ended-job")
        ing.run(seconds=0.1)
        stream, group = app.config["EVENT_STREAM"], app.config["INGEST_GROUP"]
        assert get_redis(app).xinfo_consumers(stream, group) == []
        # A consumer that finished its work is pruned; one still holding entries is kept.
        post_events(client, site.key, [event()])
        assert ingestor(app, consumer="finished").run_once(wait=False).stored == 1
        post_events(client, site.key, [event()])
        assert len(ingestor(app, consumer="holder").read(wait=False)) == 1
        assert ingestor(app, consumer="pruner").prune_consumers(idle_ms=-1) == 1
        names = [c["name"] for c in get_redis(app).xinfo_consumers(stream, group)]
        assert names == [b"holder"]
    assert count(app, Event) == 2


def test_a_known_visitor_is_rewritten_only_when_last_seen_moves_enough(app, client, site):
    app.config["VISITOR_LAST_SEEN_SECONDS"] = 3600
    post_events(client, site.key, [event()])
    ingest_all(app)
    with app.app_context():
        first = db.session.scalar(select(Visitor.last_seen))
    post_events(client, site.key, [event()])
    ingest_all(app)
    with app.app_context():
        assert db.session.scalar(select(Visitor.last_seen)) == first
        assert count(app, Event) == 2


def test_repair_gives_events_stored_during_an_identify_race_to_the_contact(app, client, site):
    from datetime import UTC, datetime, timedelta

    from automation.ingest import repair_recent_identities
    from automation.store import repair_identities

    post_events(client, site.key, [event("identify", email="ada@example.com")])
    ingest_all(app)
    with app.app_context():
        contact_id = db.session.scalar(select(Contact.id))
        # What a concurrent worker that read the visitor before the identify stored:
        late = db.session.scalars(select(Event)).one()
        db.session.add(
            Event(
                uuid=uuid.uuid4(),
                site_id=late.site_id,
                visitor_id=late.visitor_id,
                contact_id=None,
                type="pageview",
                url="https://example.com/",
                occurred_at=datetime.now(UTC),
            )
        )
        db.session.add(
            Event(
                uuid=uuid.uuid4(),
                site_id=late.site_id,
                visitor_id=late.visitor_id,
                contact_id=None,
                type="pageview",
                url="https://example.com/old",
                occurred_at=datetime.now(UTC) - timedelta(days=2),
            )
        )
        db.session.commit()
        assert repair_recent_identities() == 1
        with db.engine.begin() as conn:
            assert repair_identities(conn, datetime.now(UTC) - timedelta(days=3)) == 1
        assert set(db.session.scalars(select(Event.contact_id))) == {contact_id}


def test_bulk_insert_raises_sqlalchemy_errors(app, site):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from automation.bulk import insert_rows

    row = {"site_id": 99999, "key": "k", "first_seen": None, "last_seen": None}
    with app.app_context(), db.engine.connect() as conn, pytest.raises(IntegrityError):
        insert_rows(conn, Visitor.__table__, [row], conflict=("site_id", "key"))
