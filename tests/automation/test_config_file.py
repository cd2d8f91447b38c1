"""Rules files: checked with line numbers, applied by name, shown back."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from automation.config_file import ConfigFileError, parse, parse_duration
from tests.conftest import admin_login, post_form
from tracker.automation_models import ScoringRule, Threshold, Webhook
from tracker.db import db

GOOD = """\
rules:
  - name: Pricing page
    event: pageview
    when: {path: "/pricing*"}
    points: 10
    max_times: 3
    once_per: 1d
  - name: Director
    kind: fit
    when: {field: job_title, contains: director}
    points: 15
thresholds:
  - name: MQL
    score: total
    at_least: 25
    actions:
      - set_stage: mql
      - assign_owner: round_robin
      - notify_owner
      - add_tag: hot
      - webhook: crm
webhooks:
  - name: crm
    url: http://127.0.0.1:9/hook
    secret: a-long-enough-secret
"""


def test_a_good_file_parses_into_specs():
    spec = parse(GOOD, "rules.yaml")
    pricing, director = spec.rules
    assert (pricing.event_type, pricing.points, pricing.max_times, pricing.once_per_seconds) == (
        "pageview",
        10,
        3,
        86400,
    )
    assert pricing.line == 2 and director.kind == "fit"
    (mql,) = spec.thresholds
    assert mql.actions == [
        {"type": "set_stage", "stage": "mql"},
        {"type": "assign_owner", "round_robin": True},
        {"type": "notify_owner"},
        {"type": "add_tag", "tag": "hot"},
        {"type": "webhook", "webhook": "crm"},
    ]


def test_json_files_are_read_too():
    spec = parse('{"rules": [{"name": "x", "event": "download", "points": 5}]}', "r.json")
    assert spec.rules[0].event_type == "download"


def test_every_problem_is_named_with_its_line():
    bad = """\
rules:
  - name: Typo
    event: pageview
    points: 5
    colour: red
  - name: Unknown type
    event: purchase
    points: 5
  - name: Bad operator
    kind: fit
    when: {field: title, like: boss}
    points: 5
  - name: Bad period
    event: pageview
    points: 1
    once_per: fortnightly
thresholds:
  - name: No line
    actions: [call_mom]
segmentz: []
"""
    with pytest.raises(ConfigFileError) as caught:
        parse(bad, "rules.yaml")
    problems = caught.value.problems
    allowed = "segments, rules, thresholds, webhooks, decay, templates, sequences, broadcasts"
    assert f"rules.yaml:1: unknown section 'segmentz' (allowed: {allowed})" in problems
    assert any(p.startswith("rules.yaml:2: rule 'Typo': unknown field 'colour'") for p in problems)
    assert any(
        p.startswith("rules.yaml:6: rule 'Unknown type': event type 'purchase'") for p in problems
    )
    assert any(
        p.startswith("rules.yaml:9: rule 'Bad operator': unknown operator 'like'") for p in problems
    )
    assert any(
        p.startswith("rules.yaml:13: rule 'Bad period': 'fortnightly' is not a duration")
        for p in problems
    )
    assert any(p.startswith("rules.yaml:18: threshold 'No line':") for p in problems)


def test_broken_yaml_names_the_line():
    with pytest.raises(ConfigFileError, match=r"rules.yaml:4: not valid YAML or JSON"):
        parse("rules:\n  - name: x\n  - [unclosed\n", "rules.yaml")


def test_durations():
    assert parse_duration("30m") == 1800
    assert parse_duration("1w 2d") == 9 * 86400
    assert parse_duration(45) == 45
    for bad in ("soon", "0", -5, True, "5x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


def test_load_is_idempotent_and_updates_by_name(app, tmp_path):
    runner = app.test_cli_runner()
    for _ in range(2):
        result = runner.invoke(args=["automation", "load", write(tmp_path, GOOD)])
        assert result.exit_code == 0, result.output
        assert "2 rules, 1 thresholds, 1 webhooks, 0 decay policies, 0 templates" in result.output
    changed = GOOD.replace("points: 10", "points: 12")
    assert runner.invoke(args=["automation", "load", write(tmp_path, changed)]).exit_code == 0
    with app.app_context():
        rules = db.session.scalars(select(ScoringRule).order_by(ScoringRule.id)).all()
        assert [(r.name, r.points) for r in rules] == [("Pricing page", 12), ("Director", 15)]
        assert len(db.session.scalars(select(Threshold)).all()) == 1


def test_a_bad_file_changes_nothing(app, tmp_path):
    runner = app.test_cli_runner()
    bad = GOOD.replace("webhook: crm\n", "webhook: erp\n")
    result = runner.invoke(args=["automation", "load", write(tmp_path, bad)])
    assert result.exit_code == 1
    assert "nothing was changed" in result.output
    assert "no webhook named 'erp'" in result.output
    with app.app_context():
        assert db.session.scalars(select(ScoringRule)).all() == []
        assert db.session.scalars(select(Webhook)).all() == []


def test_show_prints_what_load_takes_back(app, tmp_path):
    runner = app.test_cli_runner()
    runner.invoke(args=["automation", "load", write(tmp_path, GOOD)])
    shown = runner.invoke(args=["automation", "show"]).output
    assert "secret: (hidden)" in shown
    full = runner.invoke(args=["automation", "show", "--with-secrets"]).output
    again = parse(full, "shown.yaml")
    original = parse(GOOD, "rules.yaml")
    assert [(r.name, r.points, r.conditions) for r in again.rules] == [
        (r.name, r.points, r.conditions) for r in original.rules
    ]
    assert again.thresholds[0].actions == original.thresholds[0].actions


def test_values_no_column_holds_are_refused_and_nothing_changes(app, tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n  - name: Huge\n    event: pageview\n    points: 99999999999999999999999\n"
    )
    result = app.test_cli_runner().invoke(args=["automation", "load", str(path)])
    assert result.exit_code != 0 and "nothing was changed" in result.output
    assert "too large" in result.output


def test_a_nul_character_is_refused_by_name():
    with pytest.raises(ConfigFileError) as caught:
        parse('rules:\n  - name: "a\\0b"\n    event: pageview\n    points: 1\n')
    assert "NUL character" in str(caught.value)


def test_the_admin_refuses_a_nul_in_a_name(app, client):
    admin_login(app, client, "marketer")
    response = post_form(
        client,
        "/admin/configure/rules/new",
        {"item": 'name: "x\\0y"\nevent: pageview\npoints: 1\n'},
    )
    assert response.status_code == 400
    assert "NUL character" in response.get_data(as_text=True)
