"""The no-script pixel, the snippet asset and the health check."""

from __future__ import annotations

import gzip
import json

from tests.conftest import BROWSER_UA, make_app
from tracker.redis_conn import free_port, get_redis
from tracker.snippet_asset import build


def stream_events(app) -> list[dict]:
    return [json.loads(f[b"d"]) for _, f in get_redis(app).xrange(app.config["EVENT_STREAM"])]


def test_pixel_records_a_pageview_from_the_referer(app, client, site):
    response = client.get(
        f"/p.gif?k={site.key}&t=Pricing",
        headers={
            "Referer": "https://example.com/pricing?utm_source=news",
            "User-Agent": BROWSER_UA,
        },
    )
    assert response.status_code == 200
    assert response.mimetype == "image/gif"
    assert len(response.data) == 43 and response.data.startswith(b"GIF89a")
    assert "no-store" in response.headers["Cache-Control"]
    assert response.headers["Expires"] == "0"
    (stored,) = stream_events(app)
    assert stored["type"] == "pageview"
    assert stored["url"] == "https://example.com/pricing?utm_source=news"
    assert stored["title"] == "Pricing"
    assert stored["visitor"].startswith("px-")


def test_pixel_visitor_is_stable_for_the_same_browser_and_day(app, client, site):
    for _ in range(2):
        client.get(
            f"/p.gif?k={site.key}",
            headers={"Referer": "https://example.com/", "User-Agent": BROWSER_UA},
        )
    first, second = stream_events(app)
    assert first["visitor"] == second["visitor"]
    assert first["id"] != second["id"]


def test_pixel_refuses_bad_requests(app, client, site):
    cases = [
        (f"/p.gif?k={site.key}", {}, 400),  # no page URL at all
        (f"/p.gif?k={site.key}", {"Referer": "https://evil.test/"}, 403),
        ("/p.gif?k=cl_unknownkey", {"Referer": "https://example.com/"}, 403),
        ("/p.gif?k=<script>", {"Referer": "https://example.com/"}, 400),
        (f"/p.gif?k={site.key}&u=javascript:alert(1)", {}, 400),
        (f"/p.gif?k={site.key}&u=http://[::1", {}, 400),
    ]
    for url, headers, status in cases:
        response = client.get(url, headers=headers)
        assert response.status_code == status, url
        assert response.get_json()["error"]["code"]
    assert stream_events(app) == []


def test_snippet_is_small_cached_and_gzipped(client):
    response = client.get("/s.js", headers={"Accept-Encoding": "gzip, br"})
    assert response.status_code == 200
    assert response.mimetype == "application/javascript"
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(response.data) < 2048
    source = gzip.decompress(response.data).decode()
    assert "closedloop" in source
    etag = response.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert "max-age" in response.headers["Cache-Control"]
    assert "Accept-Encoding" in response.headers["Vary"]

    plain = client.get("/s.js")
    assert "Content-Encoding" not in plain.headers
    assert plain.data.decode() == source

    again = client.get("/s.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""


def test_snippet_etag_changes_with_its_content(tmp_path):
    source = tmp_path / "s.js"
    source.write_text("var a = 1;")
    first = build(source)
    source.write_text("var a = 2;")
    assert build(source).etag != first.etag


def test_healthz_reports_each_dependency(app, client, database_url):
    ok = client.get("/healthz")
    assert ok.status_code == 200
    assert ok.get_json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}

    no_redis = make_app(database_url, f"redis://127.0.0.1:{free_port()}/0").test_client()
    response = no_redis.get("/healthz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["database"] == "ok" and checks["redis"].startswith("error")


def test_healthz_names_a_dead_database(redis_url, tmp_path):
    app = make_app(f"sqlite:///{tmp_path}/no/such/dir.db", redis_url)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["redis"] == "ok" and checks["database"].startswith("error")


def test_unknown_route_uses_the_json_error_shape(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
