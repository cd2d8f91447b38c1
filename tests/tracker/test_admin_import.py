"""The import pages: upload, mapping preview, a real worker's job with progress, the summary."""

from __future__ import annotations

import io
import re

from sqlalchemy import select

from automation.worker import run_worker
from tests.conftest import admin_login, csrf_of, make_user
from tracker.db import db
from tracker.models import Contact
from tracker.redis_conn import get_redis

CSV = (
    "E-mail,First Name,Company name,Notes\n"
    "ann@x.io,Ann,<script>alert(1)</script>,likes <b>bold</b>\n"
    "nobody,Bob,Bad Co,\n"
    "cid@x.io,Cid,,\n"
)


def upload(client, data: bytes, name: str = "people.csv"):
    return client.post(
        "/admin/import",
        data={"file": (io.BytesIO(data), name), "csrf_token": csrf_of(client, "/admin/import")},
        content_type="multipart/form-data",
    )


def emails(app) -> list[str]:
    with app.app_context():
        return sorted(db.session.scalars(select(Contact.email)))


def test_upload_preview_job_and_summary(app, client):
    admin_login(app, client, "marketer")
    response = upload(client, CSV.encode("utf-8-sig"))
    assert response.status_code == 302
    page_url = response.headers["Location"]
    preview = client.get(page_url).get_data(as_text=True)
    # Cell values are text, never markup.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in preview and "<script>alert" not in preview
    assert "likes &lt;b&gt;bold&lt;/b&gt;" in preview
    selected = re.findall(r'name="map-(\d)".*?<option value="([^"]+)" selected', preview, re.S)
    assert selected == [("0", "email"), ("1", "first_name"), ("2", "company"), ("3", "trait:notes")]
    assert "3 rows" in preview

    run_url = page_url + "/run"
    mapping = {"map-0": "email", "map-1": "first_name", "map-2": "company", "map-3": "ignore"}
    started = client.post(run_url, data={**mapping, "csrf_token": csrf_of(client, page_url)})
    assert started.status_code == 302
    waiting = client.get(page_url).get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="2">' in waiting
    assert "0 of 3 rows" in waiting
    assert emails(app) == []  # nothing happens until a worker runs the job

    run_worker(app, ["maintenance"], burst=True)
    summary = client.get(page_url).get_data(as_text=True)
    assert 'http-equiv="refresh"' not in summary
    assert "3 rows read, 2 contacts created, 0 updated, 0 unchanged, 1 rows skipped" in summary
    assert re.search(r'<td class="num">3</td><td>&#39;nobody&#39; is not an email address', summary)
    assert emails(app) == ["ann@x.io", "cid@x.io"]
    with app.app_context():
        ann = db.session.scalar(select(Contact).where(Contact.email == "ann@x.io"))
        assert (ann.first_name, ann.company, ann.traits) == ("Ann", "<script>alert(1)</script>", {})
    # Posting the mapping again does not import twice.
    again = client.post(run_url, data={**mapping, "csrf_token": csrf_of(client, page_url)})
    assert again.status_code == 302 and get_redis(app).llen("rq:queue:maintenance") == 0


def test_a_mapping_without_email_is_refused_and_nothing_is_queued(app, client):
    admin_login(app, client, "marketer")
    page_url = upload(client, CSV.encode()).headers["Location"]
    data = {"map-0": "trait:e_mail", "map-1": "first_name", "map-2": "company", "map-3": "company"}
    response = client.post(
        page_url + "/run", data={**data, "csrf_token": csrf_of(client, page_url)}
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "no column is mapped to email" in page
    assert "company is chosen for more than one column" in page
    assert get_redis(app).llen("rq:queue:maintenance") == 0
    assert "Waiting for a worker" not in client.get(page_url).get_data(as_text=True)


def test_files_that_cannot_be_imported_are_refused_with_the_reason(app, client, monkeypatch):
    admin_login(app, client, "marketer")
    latin = upload(client, "email,name\nzoë@x.io,Zoë\n".encode("latin-1"))
    assert latin.status_code == 400
    assert "line 2 is not UTF-8 text" in latin.get_data(as_text=True)
    empty = upload(client, b"email,name\n")
    assert empty.status_code == 400 and "has a header but no rows" in empty.get_data(as_text=True)
    missing = client.post(
        "/admin/import",
        data={"csrf_token": csrf_of(client, "/admin/import")},
        content_type="multipart/form-data",
    )
    assert missing.status_code == 400 and "Choose a CSV file" in missing.get_data(as_text=True)
    monkeypatch.setattr("automation.contact_import.MAX_UPLOAD_BYTES", 1000)
    big = upload(client, b"email\n" + b"someone@example.com\n" * 5000)
    assert big.status_code == 413
    assert "larger than 0 MB" in big.get_data(as_text=True)
    assert get_redis(app).keys("cl:import:*") == []


def test_imports_are_for_marketers_and_each_is_seen_by_its_uploader_and_admins(app, client):
    make_user(app, "sales")
    client.post(
        "/admin/login",
        data={
            "email": "sales@example.com",
            "password": "correct horse 9",
            "csrf_token": csrf_of(client),
        },
    )
    assert client.get("/admin/import").status_code == 403
    client.post("/admin/logout", data={"csrf_token": csrf_of(client, "/admin/contacts")})
    admin_login(app, client, "marketer")
    page_url = upload(client, CSV.encode()).headers["Location"]
    assert client.get(page_url).status_code == 200
    assert client.get("/admin/import/not-a-token").status_code == 404
    other = app.test_client()
    make_user(app, "marketer", "second@example.com")
    other.post(
        "/admin/login",
        data={
            "email": "second@example.com",
            "password": "correct horse 9",
            "csrf_token": csrf_of(other),
        },
    )
    assert other.get(page_url).status_code == 404
    boss = app.test_client()
    admin_login(app, boss, "admin")
    assert boss.get(page_url).status_code == 200
