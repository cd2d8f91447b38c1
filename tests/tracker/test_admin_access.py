"""The admin's door: logins, lock-out, sessions, CSRF, roles, and no page without a login."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from werkzeug.routing import Rule

from tests.conftest import admin_login, csrf_of, make_app, make_user
from tracker.auth import LOCK_AFTER_FAILURES, lock_seconds
from tracker.db import db
from tracker.models import User, as_utc, utcnow


def _sample_path(rule: Rule) -> str:
    """A URL for `rule` with made-up values for its arguments."""
    values = {}
    for name in rule.arguments:
        converter = rule._converters[name].__class__.__name__
        values[name] = 1 if "Integer" in converter else "x"
    path = rule.rule
    for name, value in values.items():
        path = re.sub(rf"<[^>]*\b{name}>", str(value), path)
    return path


def _admin_rules(app):
    return [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("admin.") and rule.endpoint != "admin.login"
    ]


def test_no_admin_route_answers_without_a_login(app, client):
    rules = _admin_rules(app)
    assert rules, "the admin has routes"
    for rule in rules:
        path = _sample_path(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method)
            if method == "GET":
                assert response.status_code == 302, (path, response.status_code)
                assert response.headers["Location"].startswith("/admin/login"), path
            else:
                # Without a session there is no CSRF token either: refused before anything runs.
                assert response.status_code in (400, 401), (method, path, response.status_code)
            assert b"<script" not in response.data


def test_every_role_restricted_page_refuses_the_other_roles(app, client):
    users = {}
    for role in ("marketer", "sales"):
        users[role] = make_user(app, role, email=f"{role}@example.com")
    for rule in _admin_rules(app):
        allowed = getattr(app.view_functions[rule.endpoint], "allowed_roles", None)
        if not allowed or "GET" not in rule.methods:
            continue
        for role in ("marketer", "sales"):
            if role in allowed:
                continue
            with app.test_client() as other:
                other.post(
                    "/admin/login",
                    data={
                        "email": f"{role}@example.com",
                        "password": "correct horse 9",
                        "csrf_token": csrf_of(other),
                    },
                )
                assert other.get(_sample_path(rule)).status_code == 403, (role, rule.rule)


def test_logging_in_and_out(app, client):
    assert client.get("/admin/").status_code == 302
    admin_login(app, client)
    page = client.get("/admin/")
    assert page.status_code == 200 and b"Hello, Admin" in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    token = csrf_of(client, "/admin/")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/").status_code == 302


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer(app, client):
    make_user(app, "marketer")
    for email, password in (("marketer@example.com", "nope"), ("nobody@example.com", "nope")):
        response = client.post(
            "/admin/login",
            data={"email": email, "password": password, "csrf_token": csrf_of(client)},
        )
        assert response.status_code == 401
        assert b"wrong email or password" in response.data


def test_repeated_failures_lock_the_account_for_longer_each_time(app, client):
    make_user(app, "sales")
    for _ in range(LOCK_AFTER_FAILURES):
        client.post(
            "/admin/login",
            data={"email": "sales@example.com", "password": "x", "csrf_token": csrf_of(client)},
        )
    # Locked now: even the right password is refused, with a clear message.
    response = client.post(
        "/admin/login",
        data={
            "email": "sales@example.com",
            "password": "correct horse 9",
            "csrf_token": csrf_of(client),
        },
    )
    assert response.status_code == 401 and b"too many failed logins" in response.data
    with app.app_context():
        user = db.session.query(User).one()
        assert user.failed_logins == LOCK_AFTER_FAILURES
        assert as_utc(user.locked_until) > utcnow() + timedelta(seconds=30)
        # Once the lock lapses the right password works and the count starts over.
        user.locked_until = utcnow() - timedelta(seconds=1)
        db.session.commit()
    response = client.post(
        "/admin/login",
        data={
            "email": "sales@example.com",
            "password": "correct horse 9",
            "csrf_token": csrf_of(client),
        },
    )
    assert response.status_code == 302
    with app.app_context():
        assert db.session.query(User).one().failed_logins == 0
    assert lock_seconds(LOCK_AFTER_FAILURES + 1) == 2 * lock_seconds(LOCK_AFTER_FAILURES)


def test_forms_without_the_sessions_csrf_token_are_refused(app, client):
    make_user(app, "admin")
    data = {"email": "admin@example.com", "password": "correct horse 9"}
    assert client.post("/admin/login", data=data).status_code == 400
    assert client.post("/admin/login", data={**data, "csrf_token": "forged"}).status_code == 400
    admin_login(app, client, role="marketer")
    assert client.post("/admin/logout").status_code == 400
    assert client.get("/admin/").status_code == 200  # still logged in


def test_after_login_only_same_site_paths_are_followed(app, client):
    make_user(app, "admin")
    for target, expected in (
        ("/admin/?x=1", "/admin/?x=1"),
        ("//evil.example/", "/admin/"),
        ("https://evil.example/", "/admin/"),
        ("/\\evil.example", "/admin/"),
    ):
        with app.test_client() as fresh:
            response = fresh.post(
                "/admin/login",
                data={
                    "email": "admin@example.com",
                    "password": "correct horse 9",
                    "next": target,
                    "csrf_token": csrf_of(fresh),
                },
            )
            assert response.headers["Location"] == expected, target


def test_session_cookie_flags(database_url, redis_url):
    for env, secure in (("development", False), ("production", True)):
        app = make_app(database_url, redis_url, ENV=env)
        make_user(app, "admin", email=f"admin-{env}@example.com")
        client = app.test_client()
        client.environ_base["wsgi.url_scheme"] = "https"
        response = client.post(
            "/admin/login",
            data={
                "email": f"admin-{env}@example.com",
                "password": "correct horse 9",
                "csrf_token": csrf_of(client),
            },
        )
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("Secure" in cookie) is secure
        with app.app_context():
            db.session.query(User).delete()
            db.session.commit()
            db.session.remove()


def test_users_create_prints_a_generated_password_once_and_it_logs_in(app, client):
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["users", "create", "--email", "Ann@Example.com", "--role", "sales"]
    )
    assert result.exit_code == 0, result.output
    password = re.search(r"password \(shown once\): (\S+)", result.output).group(1)
    again = runner.invoke(args=["users", "create", "--email", "ann@example.com", "--role", "sales"])
    assert again.exit_code != 0 and "exists already" in again.output
    response = client.post(
        "/admin/login",
        data={"email": "ann@example.com", "password": password, "csrf_token": csrf_of(client)},
    )
    assert response.status_code == 302
    with app.app_context():
        user = db.session.query(User).one()
        assert user.password_hash.startswith("scrypt:") and password not in user.password_hash


@pytest.mark.parametrize(
    ("given", "ok"),
    [("a long enough secret\na long enough secret\n", True), ("short\nshort\n", False)],
)
def test_users_create_can_ask_for_the_password(app, given, ok):
    result = app.test_cli_runner().invoke(
        args=["users", "create", "--email", "m@example.com", "--role", "marketer", "--prompt"],
        input=given,
    )
    assert (result.exit_code == 0) is ok, result.output
    assert "shown once" not in result.output
