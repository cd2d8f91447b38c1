"""The collection contract of POST /e: what is accepted, stamped and stored, and what is refused."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select

from tests.conftest import BROWSER_UA, event, make_app, post_events
from tracker.db import db
from tracker.models import EventSpool
from tracker.redis_conn import free_port, get_redis


def stream_events(app) -> list[dict]:
    entries = get_redis(app).xrange(app.config["EVENT_STREAM"])
    return [json.loads(fields[b"d"]) for _, fields in entries]


def spooled(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(EventSpool))


def test_batch_is_stamped_and_appended(app, client, site):
    given = [event("pageview", title="Home"), event("custom", name="video_play", props={"v": 1})]
    response = post_events(
        client, site.key, given, visitor="visitor-abc123", remote_addr="203.0.113.9"
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://example.com"
    stored = stream_events(app)
    assert [e["id"] for e in stored] == [e["id"] for e in given]
    first = stored[0]
    assert first["site"] == site.id
    assert first["visitor"] == "visitor-abc123"
    assert first["ip"] == "203.0.113.0"  # the site keeps the /24 only (truncate_ips)
    assert first["ua"] == BROWSER_UA
    assert first["title"] == "Home"
    assert stored[1]["props"] == {"v": 1}


def post_raw(client, body: bytes | str, origin: str = "https://example.com"):
    headers = {"Content-Type": "text/plain", "Origin": origin, "User-Agent": BROWSER_UA}
    return client.post("/e", data=body, headers=headers)


def test_a_body_shorter_than_its_content_length_is_refused(app, client, site):
    body = json.dumps({"site": site.key, "visitor": "visitor-0001", "events": [event()]})
    headers = {"Content-Type": "text/plain", "Origin": "https://example.com"}
    # The connection ended early: fewer bytes than announced, read as they are.
    response = client.post(
        "/e", data=body[:-10], headers=headers, environ_overrides={"CONTENT_LENGTH": str(len(body))}
    )
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_json"
    assert stream_events(app) == []


def test_a_chunked_body_without_content_length_is_read_whole(app, client, site):
    body = json.dumps({"site": site.key, "visitor": "visitor-0001", "events": [event()]})
    headers = {
        "Content-Type": "text/plain",
        "Origin": "https://example.com",
        "Transfer-Encoding": "chunked",
    }
    # What gunicorn hands over for a chunked request: no length, the input ends itself.
    response = client.post(
        "/e", data=body, headers=headers, environ_overrides={"wsgi.input_terminated": True}
    )
    assert response.status_code == 204
    assert len(stream_events(app)) == 1


def test_single_event_without_envelope(app, client, site):
    body = json.dumps(
        {
            "site": site.key,
            "visitor": "visitor-0001",
            "type": "pageview",
            "url": "https://example.com/pricing",
        }
    )
    assert post_raw(client, body).status_code == 204
    (stored,) = stream_events(app)
    assert stored["url"] == "https://example.com/pricing"
    assert uuid.UUID(stored["id"])  # server-made when the client sent none


def test_address_and_agent_come_from_the_request_not_the_body(app, client, site):
    forged = event("pageview", ip="1.2.3.4", ua="forged", at=0, site=999, visitor="someone-else")
    response = post_events(client, site.key, [forged], **{"X-Forwarded-For": "1.2.3.4"})
    assert response.status_code == 204
    (stored,) = stream_events(app)
    assert stored["ip"] == "127.0.0.0"  # X-Forwarded-For ignored: no trusted proxy
    assert stored["ua"] == BROWSER_UA
    assert stored["site"] == site.id
    assert stored["visitor"] == "visitor-0001"
    assert stored["at"] > 1_600_000_000


def test_forwarded_for_is_believed_only_from_trusted_proxies(database_url, redis_url, site):
    app = make_app(database_url, redis_url, TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8")
    client = app.test_client()
    chain = "198.51.100.20, 203.0.113.5, 10.1.2.3"  # client, untrusted hop, our proxy
    assert post_events(client, site.key, [event()], **{"X-Forwarded-For": chain}).status_code == 204
    assert stream_events(app)[0]["ip"] == "203.0.113.0"


def test_subdomain_and_referer_origin_are_accepted(app, client, site):
    assert (
        post_events(client, site.key, [event()], origin="https://www.example.com").status_code
        == 204
    )
    response = post_events(
        client, site.key, [event()], origin=None, Referer="https://blog.example.com/post"
    )
    assert response.status_code == 204
    assert len(stream_events(app)) == 2


def test_nul_characters_never_reach_storage(app, client, site):
    response = post_events(
        client, site.key, [event("custom", name="a\x00b", title="t\x00", props={"k\x00": "v\x00"})]
    )
    assert response.status_code == 204
    (stored,) = stream_events(app)
    assert stored["name"] == "ab" and stored["title"] == "t" and stored["props"] == {"k": "v"}


def test_long_strings_are_capped(app, client, site):
    response = post_events(
        client, site.key, [event("custom", name="n", title="x" * 5000, props={"note": "y" * 5000})]
    )
    assert response.status_code == 204
    (stored,) = stream_events(app)
    assert len(stored["title"]) == 300
    assert len(stored["props"]["note"]) == 500


def good_body(site_key: str, **changes) -> dict:
    body = {"site": site_key, "visitor": "visitor-0001", "events": [event()]}
    body.update(changes)
    return body


BAD = {
    "broken json": (lambda k: b'{"site": ', 400, "bad_json"),
    "not an object": (lambda k: b"[1, 2]", 400, "bad_request"),
    "invalid utf-8": (lambda k: b'{"site": "\xff\xfe"}', 400, "invalid_utf8"),
    "lone surrogate": (
        lambda k: json.dumps(good_body(k, events=[event(title="\ud800")])).encode(),
        400,
        "invalid_utf8",
    ),
    "site not a string": (lambda k: json.dumps(good_body(k, site=5)).encode(), 400, "bad_site"),
    "unknown site": (
        lambda k: json.dumps(good_body("cl_nosuchsite")).encode(),
        403,
        "unknown_site",
    ),
    "visitor missing": (
        lambda k: json.dumps(good_body(k, visitor=None)).encode(),
        400,
        "bad_visitor",
    ),
    "visitor with markup": (
        lambda k: json.dumps(good_body(k, visitor="<script>x</script>")).encode(),
        400,
        "bad_visitor",
    ),
    "events not a list": (
        lambda k: json.dumps(good_body(k, events={"a": 1})).encode(),
        400,
        "bad_request",
    ),
    "empty batch": (lambda k: json.dumps(good_body(k, events=[])).encode(), 400, "bad_request"),
    "51 events": (
        lambda k: json.dumps(good_body(k, events=[event()] * 51)).encode(),
        413,
        "too_many_events",
    ),
    "event not an object": (
        lambda k: json.dumps(good_body(k, events=["pageview"])).encode(),
        400,
        "bad_request",
    ),
    "unknown type": (
        lambda k: json.dumps(good_body(k, events=[event("purchase")])).encode(),
        400,
        "bad_type",
    ),
    "bad uuid": (
        lambda k: json.dumps(good_body(k, events=[event(id="not-a-uuid")])).encode(),
        400,
        "bad_id",
    ),
    "javascript url": (
        lambda k: json.dumps(good_body(k, events=[event(url="javascript:alert(1)")])).encode(),
        400,
        "bad_url",
    ),
    "relative url": (
        lambda k: json.dumps(good_body(k, events=[event(url="/pricing")])).encode(),
        400,
        "bad_url",
    ),
    "absurd url": (
        lambda k: json.dumps(
            good_body(k, events=[event(url="https://example.com/" + "a" * 3000)])
        ).encode(),
        400,
        "url_too_long",
    ),
    "unparseable url": (
        lambda k: json.dumps(good_body(k, events=[event(url="http://[::1")])).encode(),
        400,
        "bad_url",
    ),
    "url not a string": (
        lambda k: json.dumps(good_body(k, events=[event(url=["x"])])).encode(),
        400,
        "bad_request",
    ),
    "ts not a number": (
        lambda k: json.dumps(good_body(k, events=[event(ts="now")])).encode(),
        400,
        "bad_request",
    ),
    "custom without name": (
        lambda k: json.dumps(good_body(k, events=[event("custom")])).encode(),
        400,
        "bad_request",
    ),
    "props nested": (
        lambda k: json.dumps(
            good_body(k, events=[event("custom", name="x", props={"a": {"b": 1}})])
        ).encode(),
        400,
        "bad_request",
    ),
    "too many props": (
        lambda k: json.dumps(
            good_body(k, events=[event("custom", name="x", props={str(i): i for i in range(21)})])
        ).encode(),
        400,
        "bad_request",
    ),
    "engage seconds negative": (
        lambda k: json.dumps(good_body(k, events=[event("engage", seconds=-5)])).encode(),
        400,
        "bad_request",
    ),
    "engage seconds boolean": (
        lambda k: json.dumps(good_body(k, events=[event("engage", seconds=True)])).encode(),
        400,
        "bad_request",
    ),
    "outbound without target": (
        lambda k: json.dumps(good_body(k, events=[event("outbound")])).encode(),
        400,
        "bad_request",
    ),
    "search without query": (
        lambda k: json.dumps(good_body(k, events=[event("search")])).encode(),
        400,
        "bad_request",
    ),
    "identify bad email": (
        lambda k: json.dumps(
            good_body(k, events=[event("identify", email="not an email")])
        ).encode(),
        400,
        "bad_email",
    ),
    "identify email not a string": (
        lambda k: json.dumps(good_body(k, events=[event("identify", email=["a@b.co"])])).encode(),
        400,
        "bad_email",
    ),
    "deep nesting": (
        lambda k: b'{"site": ' + b"[" * 100000 + b"]" * 100000 + b"}",
        413,
        "too_large",
    ),
    "oversize body": (
        lambda k: json.dumps(good_body(k, events=[event(title="x" * 40000)])).encode(),
        413,
        "too_large",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_a_clear_4xx_and_stores_nothing(app, client, site, case):
    make_body, status, code = BAD[case]
    response = post_raw(client, make_body(site.key))
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert stream_events(app) == []
    assert spooled(app) == 0


def test_deeply_nested_json_within_the_size_limit_is_refused(app, client, site):
    body = b'{"site": ' + b"[" * 16000 + b"]" * 16000 + b"}"
    response = post_raw(client, body)
    assert response.status_code == 400
    assert stream_events(app) == []


@pytest.mark.parametrize(
    "origin,referer",
    [
        ("https://evil.example.net", None),
        ("https://notexample.com", None),
        ("null", None),
        (None, None),
        (None, "https://evil.test/page"),
    ],
)
def test_foreign_or_missing_origin_is_refused(app, client, site, origin, referer):
    headers = {"Referer": referer} if referer else {}
    response = post_events(client, site.key, [event()], origin=origin, **headers)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "origin_not_allowed"
    assert stream_events(app) == []


def test_do_not_track_is_honoured_when_the_site_says_so(app, client):
    from tracker.sites import create_site

    with app.app_context():
        private = create_site("Private", ["example.com"], respect_dnt=True)
        db.session.commit()
        key = private.key
    body = json.dumps({"site": key, "visitor": "visitor-0001", "dnt": True, "events": [event()]})
    assert post_raw(client, body).status_code == 204
    assert stream_events(app) == []
    body = json.dumps({"site": key, "visitor": "visitor-0001", "events": [event()]})
    assert post_raw(client, body).status_code == 204
    assert len(stream_events(app)) == 1


def test_dnt_flag_is_ignored_when_the_site_does_not_respect_it(app, client, site):
    body = json.dumps(
        {"site": site.key, "visitor": "visitor-0001", "dnt": True, "events": [event()]}
    )
    assert post_raw(client, body).status_code == 204
    assert len(stream_events(app)) == 1


def test_preflight_is_answered_for_json_clients(client):
    response = client.options(
        "/e", headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Methods"] == "POST"


def test_redis_down_falls_back_to_the_database(database_url, redis_url, site):
    from tests.conftest import ingest_all
    from tracker.models import Event

    down = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0")
    given = [event(), event("custom", name="signup")]
    response = post_events(down.test_client(), site.key, given)
    assert response.status_code == 204
    assert spooled(down) == 1

    # Redis is back: ingestion drains the spool into the events table, once.
    up = make_app(database_url, redis_url)
    from automation.ingest import drain_spool

    with up.app_context():
        assert drain_spool() == 2
        assert drain_spool() == 0
        ids = set(db.session.scalars(select(Event.uuid)))
    assert ids == {uuid.UUID(e["id"]) for e in given}
    assert spooled(up) == 0
    ingest_all(up)


def test_redis_and_database_down_answer_503(database_url, redis_url, site, tmp_path):
    working = make_app(database_url, redis_url, SITE_CACHE_SECONDS=3600)
    working.extensions["sites"].get(site.key)  # the sites were read before the outage
    broken = make_app(
        f"sqlite:///{tmp_path}/missing/dir/db.sqlite", f"redis://127.0.0.1:{free_port()}/0"
    )
    broken.extensions["sites"] = working.extensions["sites"]
    response = post_events(broken.test_client(), site.key, [event()])
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "storage_unavailable"
    assert response.headers["Retry-After"]


def test_unknown_database_answers_503_not_500(redis_url, tmp_path):
    broken = make_app(f"sqlite:///{tmp_path}/missing/dir/db.sqlite", redis_url)
    response = post_events(broken.test_client(), "cl_whatever1", [event()])
    assert response.status_code == 503
