"""The scoring engine: matching, caps, bots, and the fit score. Pure: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from automation.scoring import (
    RuleError,
    ScoredEvent,
    Usage,
    award_points,
    event_matches,
    fit_score,
    make_rule,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def ev(id: int, type: str = "pageview", contact: int = 1, minutes: int = 0, **fields):
    return ScoredEvent(
        id=id,
        contact_id=contact,
        type=type,
        site_id=fields.pop("site", 1),
        occurred_at=T0 + timedelta(minutes=minutes),
        **fields,
    )


def test_conditions_narrow_what_an_event_rule_matches():
    pricing = make_rule(
        1, "pricing", "engagement", 10, event_type="pageview", conditions={"path": "/pricing*"}
    )
    assert event_matches(pricing, ev(1, path="/pricing"))
    assert event_matches(pricing, ev(2, path="/pricing/enterprise"))
    assert not event_matches(pricing, ev(3, path="/blog/pricing"))
    assert not event_matches(pricing, ev(4, type="download", path="/pricing"))

    regex = make_rule(
        2,
        "docs",
        "engagement",
        1,
        event_type="pageview",
        conditions={"path_regex": r"^/docs/(api|sdk)/"},
    )
    assert event_matches(regex, ev(5, path="/docs/api/auth"))
    assert not event_matches(regex, ev(6, path="/docs/guide"))

    site_only = make_rule(3, "site 2", "engagement", 1, event_type="pageview", site_id=2)
    assert not event_matches(site_only, ev(7, site=1)) and event_matches(site_only, ev(8, site=2))

    search = make_rule(
        4, "search", "engagement", 3, event_type="search", conditions={"query_contains": "PRICING"}
    )
    assert event_matches(search, ev(9, type="search", query="enterprise pricing"))
    assert not event_matches(search, ev(10, type="search", query="docs"))

    video = make_rule(
        5,
        "video",
        "engagement",
        5,
        event_type="custom",
        conditions={"name": "video_play", "props": {"video": "intro"}},
    )
    assert event_matches(video, ev(11, type="custom", name="video_play", props={"video": "intro"}))
    assert not event_matches(
        video, ev(12, type="custom", name="video_play", props={"video": "other"})
    )

    pdf = make_rule(
        6, "pdf", "engagement", 8, event_type="download", conditions={"target": "*.pdf"}
    )
    assert event_matches(pdf, ev(13, type="download", target="https://a.test/white.pdf"))

    opened = make_rule(
        7, "opened", "engagement", 2, event_type="email_open", conditions={"template": 42}
    )
    assert event_matches(opened, ev(14, type="email_open", props={"template_id": 42}))
    assert not event_matches(opened, ev(15, type="email_open", props={"template_id": 7}))


def test_caps_limit_awards_within_the_batch_and_across_batches():
    capped = make_rule(1, "pricing", "engagement", 10, event_type="pageview", max_times=2)
    events = [ev(i, minutes=i) for i in range(1, 5)]
    assert [a.event_id for a in award_points([capped], events, {})] == [1, 2]
    # One award already earned before this batch: only one more.
    assert len(award_points([capped], events, {(1, 1): Usage(1, T0)})) == 1

    first = make_rule(
        2, "first visit", "engagement", 5, event_type="pageview", first_time_only=True
    )
    assert [a.event_id for a in award_points([first], events, {})] == [1]
    assert award_points([first], events, {(1, 2): Usage(1, T0)}) == []

    daily = make_rule(3, "daily", "engagement", 1, event_type="pageview", once_per_seconds=86400)
    spread = [ev(1), ev(2, minutes=60), ev(3, minutes=60 * 24), ev(4, minutes=60 * 25)]
    assert [a.event_id for a in award_points([daily], spread, {})] == [1, 3]


def test_caps_are_per_contact_and_awards_keep_event_order():
    rule = make_rule(1, "p", "engagement", 10, event_type="pageview", max_times=1)
    events = [ev(3, contact=2, minutes=5), ev(1, contact=1, minutes=9), ev(2, contact=1, minutes=1)]
    awards = award_points([rule], events, {})
    assert [(a.contact_id, a.event_id) for a in awards] == [(1, 2), (2, 3)]
    assert all(a.delta == 10 for a in awards)


def test_negative_points_and_several_rules_per_event():
    rules = [
        make_rule(
            1, "careers", "engagement", -20, event_type="pageview", conditions={"path": "/careers*"}
        ),
        make_rule(2, "any page", "engagement", 1, event_type="pageview"),
    ]
    awards = award_points(rules, [ev(1, path="/careers/dev")], {})
    assert sorted(a.delta for a in awards) == [-20, 1]


def test_bots_earn_nothing():
    rule = make_rule(1, "p", "engagement", 10, event_type="pageview")
    assert award_points([rule], [ev(1, is_bot=True)], {}) == []


def test_fit_score_sums_matching_attribute_rules():
    rules = [
        make_rule(
            1, "director", "fit", 15, conditions={"field": "job_title", "contains": "director"}
        ),
        make_rule(2, "big company", "fit", 10, conditions={"field": "company_size", "gte": 200}),
        make_rule(3, "dach", "fit", 5, conditions={"field": "country", "in": ["DE", "AT", "CH"]}),
        make_rule(4, "student", "fit", -30, conditions={"field": "email", "regex": r"\.edu$"}),
        make_rule(5, "has phone", "fit", 2, conditions={"field": "phone", "exists": True}),
        make_rule(6, "not a page rule", "engagement", 100, event_type="pageview"),
    ]
    assert (
        fit_score(
            rules,
            {
                "job_title": "Marketing Director",
                "company_size": "500",
                "country": "de",
                "email": "a@acme.com",
                "phone": "+49",
            },
        )
        == 32
    )
    assert fit_score(rules, {"company_size": "many", "email": "kid@uni.edu"}) == -30
    assert fit_score(rules, {}) == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "engagement", "event_type": "purchase"}, "event type 'purchase'"),
        (
            {"kind": "engagement", "event_type": "pageview", "conditions": {"url": "/x"}},
            "unknown condition 'url'",
        ),
        (
            {"kind": "engagement", "event_type": "pageview", "conditions": {"path_regex": "("}},
            "not a valid regular expression",
        ),
        ({"kind": "engagement", "event_type": "pageview", "max_times": 0}, "max_times"),
        ({"kind": "fit", "conditions": {"field": "x", "like": "y"}}, "unknown operator 'like'"),
        ({"kind": "fit", "conditions": {"contains": "y"}}, "needs 'field'"),
        ({"kind": "fit", "conditions": {"field": "x", "gte": 1, "lte": 2}}, "exactly one operator"),
        ({"kind": "behaviour", "event_type": "pageview"}, "rule kind 'behaviour'"),
    ],
)
def test_rules_that_cannot_work_are_refused_with_the_reason(kwargs, message):
    kind = kwargs.pop("kind")
    with pytest.raises(RuleError, match=message):
        make_rule(1, "r", kind, 1, **kwargs)
