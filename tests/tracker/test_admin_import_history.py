"""The import history: pages that outlive Redis, the list newest first, the CLI's imports."""

from __future__ import annotations

import io
import re
from datetime import timedelta

from sqlalchemy import delete, select

from automation.worker import run_worker
from tests.conftest import admin_login, csrf_of, make_user
from tests.tracker.test_admin_import import CSV, upload
from tracker.db import db
from tracker.import_models import ContactImport
from tracker.models import User, utcnow
from tracker.paging import PER_PAGE
from tracker.redis_conn import get_redis

MAPPING = {"map-0": "email", "map-1": "first_name", "map-2": "company", "map-3": "ignore"}


def start(client, data: bytes, name: str = "people.csv") -> str:
    """Upload a file and start its import; the import's page URL."""
    page_url = upload(client, data, name).headers["Location"]
    started = client.post(
        page_url + "/run", data={**MAPPING, "csrf_token": csrf_of(client, page_url)}
    )
    assert started.status_code == 302
    return page_url


def login(app, client, email: str, role: str = "marketer") -> int:
    user_id = make_user(app, role, email)
    response = client.post(
        "/admin/login",
        data={"email": email, "password": "correct horse 9", "csrf_token": csrf_of(client)},
    )
    assert response.status_code == 302
    return user_id


def cli(app, *args: str):
    """Run a command the way `flask --app wsgi` does: inside the app's context."""
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args))


def history(client, path: str = "/admin/import") -> list[list[str]]:
    """The history table's rows, as the cells' text."""
    page = client.get(path).get_data(as_text=True)
    table = page.split('id="imports"')[1].split("</table>")[0] if 'id="imports"' in page else ""
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
        for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    ]


def test_an_import_page_and_the_history_outlive_redis(app, client):
    admin_login(app, client, "marketer")
    page_url = start(client, CSV.encode())
    listed = history(client)
    assert [r[1:5] for r in listed] == [["people.csv", "Marketer", "queued", "0 of 3"]]
    run_worker(app, ["maintenance"], burst=True)
    get_redis(app).flushall()  # a day later: the upload, its state and the job are gone

    summary = client.get(page_url).get_data(as_text=True)
    assert "3 rows read, 2 contacts created, 0 updated, 0 unchanged, 1 rows skipped" in summary
    assert re.search(r'<td class="num">3</td><td>&#39;nobody&#39; is not an email address', summary)
    assert 'http-equiv="refresh"' not in summary and "by Marketer" in summary
    assert [r[1:] for r in history(client)] == [
        ["people.csv", "Marketer", "done", "3", "2", "0", "0", "1"]
    ]
    # Posting the mapping once Redis forgot the upload starts nothing and breaks nothing.
    again = client.post(
        page_url + "/run", data={**MAPPING, "csrf_token": csrf_of(client, "/admin/import")}
    )
    assert again.status_code == 404
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(ContactImport)) == 1


def test_the_history_lists_newest_first_and_pages(app, client):
    admin_login(app, client, "marketer")
    start(client, CSV.encode(), "newest.csv")
    base = utcnow() - timedelta(days=30)
    with app.app_context():
        # Two a minute: imports started at one time page by id.
        db.session.add_all(
            ContactImport(
                token=f"old-{n}",
                source="cli",
                filename=f"file-{n:02}.csv",
                status="done",
                rows_total=n,
                rows_done=n,
                errors=[],
                created_at=base + timedelta(minutes=n // 2),
            )
            for n in range(PER_PAGE + 1)
        )
        db.session.commit()
    names = [r[1] for r in history(client)]
    expected = ["newest.csv", *(f"file-{n:02}.csv" for n in reversed(range(PER_PAGE + 1)))]
    assert names == expected[:PER_PAGE]
    page = client.get("/admin/import").get_data(as_text=True)
    assert f"1\N{EN DASH}{PER_PAGE} of {PER_PAGE + 2} imports" in page
    older = re.search(r'rel="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert [r[1] for r in history(client, older)] == expected[PER_PAGE:]
    bad = client.get("/admin/import?after=last-tuesday")
    assert bad.status_code == 400 and "is not a position in this list" in bad.get_data(as_text=True)


def test_a_failed_job_is_recorded_with_its_reason(app, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the database went away <b>")

    monkeypatch.setattr("automation.contact_import._write_batch", broken)
    admin_login(app, client, "marketer")
    page_url = start(client, CSV.encode())
    run_worker(app, ["maintenance"], burst=True)
    page = client.get(page_url).get_data(as_text=True)
    assert "The import failed: RuntimeError: the database went away &lt;b&gt;" in page
    assert 'http-equiv="refresh"' not in page
    assert history(client)[0][3] == "failed"


def test_each_sees_their_own_imports_and_the_command_lines(app, client, tmp_path):
    ann = app.test_client()
    login(app, ann, "ann@example.com")
    bob = app.test_client()
    bob_id = login(app, bob, "bob@example.com")
    anns = start(ann, CSV.encode(), "anns.csv")
    bobs = start(bob, CSV.encode(), "bobs.csv")
    path = tmp_path / "server.csv"
    path.write_text("email,first name\nzed@x.io,Zed\n")
    result = cli(app, "contacts", "import", str(path))
    assert result.exit_code == 0, result.output
    cli_url = re.search(r"kept in the import history: (/admin/import/\S+)", result.output).group(1)

    assert [(r[1], r[2]) for r in history(ann)] == [
        ("server.csv", "command line"),
        ("anns.csv", "Marketer"),
    ]
    assert ann.get(bobs).status_code == 404 and bob.get(anns).status_code == 404
    cli_page = ann.get(cli_url).get_data(as_text=True)
    assert "1 rows read, 1 contacts created" in cli_page and "by the command line" in cli_page
    boss = app.test_client()
    login(app, boss, "boss@example.com", "admin")
    assert [r[1] for r in history(boss)] == ["server.csv", "bobs.csv", "anns.csv"]
    assert boss.get(anns).status_code == 200

    # Bob leaves: his import stays in the history, by a deleted user.
    with app.app_context():
        db.session.execute(delete(User).where(User.id == bob_id))
        db.session.commit()
    assert "by a deleted user" in boss.get(bobs).get_data(as_text=True)


def test_the_command_line_records_its_import_and_a_dry_run_does_not(app, tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("email,company\nann@x.io,Acme\nnobody,Bad\n")
    dry = cli(app, "contacts", "import", str(path), "--dry-run")
    assert dry.exit_code == 0 and "kept in the import history" not in dry.output
    with app.app_context():
        assert db.session.scalars(select(ContactImport)).all() == []
    done = cli(app, "contacts", "import", str(path))
    assert done.exit_code == 0, done.output
    broken = tmp_path / "broken.csv"
    broken.write_text("email\nann@x.io\n" + "x" * 200_000 + "\n")  # over csv's field limit
    failed = cli(app, "contacts", "import", str(broken))
    assert failed.exit_code == 1 and "is not CSV" in failed.output
    with app.app_context():
        rows = db.session.scalars(select(ContactImport).order_by(ContactImport.id)).all()
        recorded = rows[0]
        assert (recorded.source, recorded.user_id, recorded.status) == ("cli", None, "done")
        assert (recorded.filename, recorded.rows_total, recorded.rows_done) == (
            "people.csv",
            2,
            2,
        )
        assert (recorded.created, recorded.skipped) == (1, 1)
        assert recorded.errors == [[3, "'nobody' is not an email address"]]
        assert recorded.started_at is not None and recorded.finished_at is not None
        assert (rows[1].filename, rows[1].status) == ("broken.csv", "failed")
        assert "ImportFileError: line" in rows[1].failure and "is not CSV" in rows[1].failure


def test_a_stranger_sending_a_huge_file_gets_a_413_and_no_history(app, client, monkeypatch):
    with app.app_context():
        db.session.add(
            ContactImport(token="t", source="cli", filename="secret-list.csv", status="done")
        )
        db.session.commit()
    monkeypatch.setattr("automation.contact_import.MAX_UPLOAD_BYTES", 1000)
    response = client.post(
        "/admin/import",
        data={"file": (io.BytesIO(b"email\n" + b"someone@example.com\n" * 5000), "a.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert "secret-list.csv" not in response.get_data(as_text=True)
