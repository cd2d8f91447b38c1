"""Segment rules: checking trees, and their compiled SQL run on the real database."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from automation.segment_rules import SegmentError, check_tree, referenced_segments
from automation.segment_sql import compile_condition, contacts
from tests.conftest import event, ingest_all, post_events
from tracker.automation_models import ContactTag, Segment, SegmentMember
from tracker.db import db
from tracker.models import Contact, Event, Visitor

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


# -- checking, no database --------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (
            {"all": [{"tag": "a"}, {"tag": "b"}, {"visited": {"pth": "/x"}}]},
            "all[2].visited: unknown key 'pth'",
        ),
        ({"al": []}, "rules: unknown rule 'al'"),
        ({"all": []}, "all: must be a non-empty list"),
        ({"any": {"tag": "a"}}, "any: must be a non-empty list"),
        ({"tag": "a", "stage": "mql"}, "rules: must be a mapping with exactly one of"),
        ([{"tag": "a"}], "rules: must be a mapping with exactly one of"),
        ({"not": {"any": [{"tag": ""}]}}, "not.any[0].tag: must be non-empty text"),
        ({"visited": {"at_least": 2}}, "visited: needs 'path'"),
        ({"visited": {"path": "/p", "at_least": -1}}, "visited.at_least: must be a whole number"),
        ({"visited": {"path": "/p", "at_least": 0}}, "visited.at_least: must be a whole number"),
        ({"visited": {"path": "/p", "at_least": True}}, "visited.at_least: must be a whole number"),
        ({"visited": {"path": "/p", "within_days": "30"}}, "visited.within_days: must be a whole"),
        ({"visited": {"path": "/p", "site": 1.5}}, "visited.site: must be a whole number"),
        ({"visited": "/pricing"}, "visited: must be a mapping with keys from"),
        ({"searched": {"within_days": 3}}, "searched: needs 'contains'"),
        (
            {"utm": {"touch": "first"}},
            "utm: needs at least one of ['source', 'medium', 'campaign']",
        ),
        (
            {"utm": {"source": "g", "touch": "last"}},
            "utm.touch: 'last' is not one of ['any', 'first']",
        ),
        ({"utm": {"source": 3}}, "utm.source: must be non-empty text"),
        ({"referrer_domain": {"is": "https://hn.com/"}}, "referrer_domain.is: give a host name"),
        ({"referrer_domain": {"touch": "any"}}, "referrer_domain: needs 'is'"),
        ({"field": {"name": "country"}}, "field: takes exactly one of"),
        ({"field": {"name": "country", "equals": "x", "in": ["x"]}}, "field: takes exactly one of"),
        ({"field": {"name": "country", "like": "x"}}, "field: unknown operator 'like'"),
        ({"field": {"equals": "x"}}, "field.name: must be non-empty text"),
        ({"field": {"name": 'a"b', "exists": True}}, "field.name: a field name cannot hold quotes"),
        ({"field": {"name": "country", "in": []}}, "field.in: must be a non-empty list"),
        ({"field": {"name": "country", "in": ["a", None]}}, "field.in[1]: must be text, a number"),
        ({"field": {"name": "country", "in": [True]}}, "field.in: use 'equals'"),
        ({"field": {"name": "country", "exists": "yes"}}, "field.exists: must be true or false"),
        ({"field": {"name": "employees", "gte": "50"}}, "field.gte: must be a number"),
        ({"field": {"name": "company", "gte": 5}}, "field.gte: 'company' holds text"),
        ({"field": {"name": "score", "contains": "5"}}, "field.contains: 'score' holds a number"),
        ({"field": {"name": "score", "equals": "5"}}, "field.equals: 'score' holds a number"),
        ({"field": {"name": "email", "equals": 5}}, "field.equals: 'email' holds text"),
        ({"field": {"name": "plan", "equals": {"a": 1}}}, "field.equals: must be text, a number"),
        ({"score": {"gte": 5}}, "score: needs 'kind'"),
        ({"score": {"kind": "fit"}}, "score: needs 'gte', 'lte' or both"),
        ({"score": {"kind": "hot", "gte": 1}}, "score.kind: 'hot' is not one of"),
        ({"score": {"kind": "fit", "gte": 9, "lte": 1}}, "score: gte 9 is above lte 1"),
        ({"stage": "hot"}, "stage: 'hot' is not one of"),
        ({"stage": {"in": ["lead", "won"]}}, "stage.in[1]: 'won' is not one of"),
        ({"stage": {"in": []}}, "stage.in: must be a non-empty list"),
        ({"stage": {"is": "mql"}}, "stage: unknown key 'is'"),
        ({"email": {"action": "sent"}}, "email.action: 'sent' is not one of ['opened', 'clicked']"),
        ({"email": {"action": "opened", "template": "42"}}, "email.template: must be a whole"),
        ({"event": {"name": "play", "at_least": -3}}, "event.at_least: must be a whole number"),
        ({"in_segment": ["a"]}, "in_segment: must be non-empty text"),
    ],
)
def test_a_bad_tree_is_refused_naming_the_part(tree, message):
    with pytest.raises(SegmentError) as caught:
        check_tree(tree)
    assert message in str(caught.value)


def test_too_deep_a_tree_is_refused():
    tree: dict[str, Any] = {"tag": "a"}
    for _ in range(25):
        tree = {"not": tree}
    with pytest.raises(SegmentError, match="nested deeper than 20 levels"):
        check_tree(tree)


def test_a_valid_tree_passes_and_names_the_segments_it_uses():
    tree = {
        "all": [
            {"in_segment": "Trial users"},
            {"any": [{"not": {"in_segment": "Customers"}}, {"in_segment": "Trial users"}]},
            {"visited": {"path": "/pricing*", "at_least": 2, "within_days": 30, "site": 1}},
            {"field": {"name": "plan", "equals": True}},
            {"stage": {"in": ["lead", "mql"]}},
        ]
    }
    check_tree(tree)
    assert referenced_segments(tree) == {"Trial users", "Customers"}
    assert referenced_segments({"tag": "hot"}) == set()


def test_marketer_text_reaches_the_sql_only_as_parameters():
    hostile = "x'; drop table contacts; --"
    tree = {
        "any": [
            {"visited": {"path": hostile}},
            {"searched": {"contains": hostile}},
            {"field": {"name": hostile, "equals": hostile}},
            {"utm": {"source": hostile}},
            {"tag": hostile},
        ]
    }
    sql = str(compile_condition(tree, NOW, {}).compile())
    assert "drop table" not in sql


def test_plain_conjuncts_are_semi_joins_and_the_rest_correlated_exists():
    # Under any/not an uncorrelated IN is rescanned per contact once it outgrows work_mem.
    pricing = {"visited": {"path": "/pricing", "at_least": 2}}
    joined = str(compile_condition({"all": [pricing, {"tag": "hot"}]}, NOW, {}).compile())
    assert joined.count("contacts.id IN (SELECT") == 2 and "EXISTS" not in joined
    nested = str(compile_condition({"any": [pricing, {"not": {"tag": "hot"}}]}, NOW, {}).compile())
    assert nested.count("EXISTS (SELECT") == 2 and "contacts.id IN" not in nested
    assert "events.contact_id = contacts.id" in nested


def test_an_unknown_segment_or_a_naive_now_is_refused():
    with pytest.raises(SegmentError, match=r"any\[1\].in_segment: no segment named 'Gone'"):
        compile_condition({"any": [{"tag": "a"}, {"in_segment": "Gone"}]}, NOW, {"Other": 1})
    with pytest.raises(ValueError, match="timezone-aware"):
        compile_condition({"tag": "a"}, datetime(2026, 11, 1), {})


# -- compiled SQL on the real database ---------------------------------------------------


def person(name: str, **fields: Any) -> int:
    contact = Contact(email=f"{name}@example.test", **fields)
    db.session.add(contact)
    db.session.flush()
    return contact.id


def happened(
    contact_id: int | None, site_id: int, type: str = "pageview", days_ago: float = 1, **fields: Any
) -> None:
    db.session.add(
        Event(
            uuid=uuid.uuid4(),
            site_id=site_id,
            contact_id=contact_id,
            type=type,
            occurred_at=NOW - timedelta(days=days_ago),
            **fields,
        )
    )


def visitor(contact_id: int | None, site_id: int, **fields: Any) -> None:
    db.session.add(
        Visitor(
            site_id=site_id,
            key=uuid.uuid4().hex,
            contact_id=contact_id,
            first_seen=NOW - timedelta(days=60),
            last_seen=NOW,
            **fields,
        )
    )


def matching(tree: Any, segment_ids: dict[str, int] | None = None, **kw: Any) -> set[str]:
    """The names of the contacts the compiled tree selects."""
    db.session.flush()
    condition = compile_condition(tree, kw.pop("now", NOW), segment_ids or {}, **kw)
    emails = db.session.execute(select(contacts.c.email).where(condition)).scalars()
    return {email.split("@")[0] for email in emails}


def test_visited_counts_matching_pageviews_within_the_window(app, site):
    with app.app_context():
        ann, bob, cat, dan = (person(n) for n in ("ann", "bob", "cat", "dan"))
        happened(ann, site.id, path="/pricing", days_ago=1)
        happened(ann, site.id, path="/pricing/enterprise", days_ago=30)  # on the boundary
        happened(bob, site.id, path="/pricing", days_ago=1)
        happened(bob, site.id, path="/pricing", days_ago=30.001)  # just outside
        happened(cat, site.id, path="/pricing", days_ago=2)
        happened(cat, site.id, path="/pricing", days_ago=3, is_bot=True)
        happened(dan, site.id, "download", path="/pricing", days_ago=1)
        happened(dan, site.id, path="/blog/pricing", days_ago=1)
        happened(None, site.id, path="/pricing", days_ago=1)  # anonymous
        twice = {"visited": {"path": "/pricing*", "at_least": 2, "within_days": 30}}
        assert matching(twice) == {"ann"}
        assert matching({"not": twice}) == {"bob", "cat", "dan"}
        assert matching({"any": [twice, {"stage": "customer"}]}) == {"ann"}
        assert matching({"visited": {"path": "/pricing*", "at_least": 2}}) == {"ann", "bob"}
        assert matching({"visited": {"path": "/pricing"}}) == {"ann", "bob", "cat"}
        assert matching({"visited": {"path": "/pricing", "at_least": 3}}) == set()
        # Anonymous events must not turn `not` into NULL for everyone.
        assert matching({"not": {"visited": {"path": "/pricing*"}}}) == {"dan"}


def test_visited_narrows_to_a_site(app, site):
    with app.app_context():
        from tracker.sites import create_site

        other = create_site("Other", ["other.test"])
        db.session.flush()
        ann, bob = person("ann"), person("bob")
        happened(ann, site.id, path="/docs")
        happened(bob, other.id, path="/docs")
        assert matching({"visited": {"path": "/docs", "site": other.id}}) == {"bob"}
        assert matching({"visited": {"path": "/docs"}}) == {"ann", "bob"}


def test_glob_wildcards_work_and_like_wildcards_in_the_glob_are_literal(app, site):
    with app.app_context():
        for name, path in [
            ("ann", "/sale/100%_off"),
            ("bob", "/sale/100xyoff"),
            ("cat", "/sale/100%Xoff"),
            ("dan", "/a!b"),
            ("eve", "/ab"),
        ]:
            happened(person(name), site.id, path=path)
        assert matching({"visited": {"path": "/sale/100%_off"}}) == {"ann"}
        assert matching({"visited": {"path": "/sale/100%?off"}}) == {"ann", "cat"}
        assert matching({"visited": {"path": "/sale/*off"}}) == {"ann", "bob", "cat"}
        assert matching({"visited": {"path": "/a!b"}}) == {"dan"}
        assert matching({"visited": {"path": "/a*"}}) == {"dan", "eve"}


def test_searched_matches_text_inside_the_query_ignoring_case(app, site):
    with app.app_context():
        ann, bob, cat, dan = (person(n) for n in ("ann", "bob", "cat", "dan"))
        happened(ann, site.id, "search", query="Enterprise pricing", days_ago=2)
        happened(bob, site.id, "search", query="enterprise", days_ago=40)
        happened(cat, site.id, "search", query="enterprise", is_bot=True)
        happened(dan, site.id, "search", query="save 50% now")
        happened(person("eve"), site.id, "search", query="save 500 now")
        assert matching({"searched": {"contains": "ENTERPRISE", "within_days": 30}}) == {"ann"}
        assert matching({"searched": {"contains": "enterprise"}}) == {"ann", "bob"}
        assert matching({"searched": {"contains": "50%"}}) == {"dan"}


def test_utm_first_touch_reads_visitors_and_any_touch_reads_events(app, site):
    with app.app_context():
        ann, bob, cat = person("ann"), person("bob"), person("cat")
        visitor(ann, site.id, utm_source="Google", utm_medium="cpc", utm_campaign="fall")
        happened(ann, site.id, utm_source="newsletter", utm_medium="email")
        visitor(bob, site.id, utm_source="newsletter", utm_medium="email")
        happened(bob, site.id, utm_source="google", utm_medium="cpc")
        visitor(cat, site.id, utm_source="google", utm_medium="organic")
        visitor(None, site.id, utm_source="google", utm_medium="cpc")
        google_first = {"utm": {"source": "google", "medium": "cpc", "touch": "first"}}
        assert matching(google_first) == {"ann"}
        assert matching({"utm": {"source": "google", "medium": "cpc"}}) == {"bob"}
        assert matching({"utm": {"source": "GOOGLE", "touch": "first"}}) == {"ann", "cat"}
        assert matching({"utm": {"campaign": "fall", "touch": "first"}}) == {"ann"}
        assert matching({"not": google_first}) == {"bob", "cat"}


@pytest.mark.parametrize(
    ("referrer", "matches"),
    [
        ("https://news.ycombinator.com/item?id=1", True),
        ("https://news.ycombinator.com", True),
        ("http://NEWS.YCombinator.com/", True),
        ("https://www.news.ycombinator.com/", True),
        ("https://news.ycombinator.com:443/x", True),
        ("https://news.ycombinator.com?x=1", True),
        ("https://news.ycombinator.com#top", True),
        ("https://notnews.ycombinator.com/", False),
        ("https://news.ycombinator.com.evil.test/", False),
        ("https://evil.test/?from=https://news.ycombinator.com/", False),
        ("https://evil.test/news.ycombinator.com/", False),
        ("https://evil.test/x.news.ycombinator.com/", False),
        ("news.ycombinator.com", False),
        ("xxnews.ycombinator.com/", False),
        (None, False),
    ],
)
def test_referrer_domain_matches_the_host_or_its_subdomains(app, site, referrer, matches):
    with app.app_context():
        ann = person("ann")
        happened(ann, site.id, referrer=referrer)
        visitor(ann, site.id, referrer=referrer)
        expected = {"ann"} if matches else set()
        for touch in ("any", "first"):
            tree = {"referrer_domain": {"is": "news.ycombinator.com", "touch": touch}}
            assert matching(tree) == expected
            assert matching({"not": tree}) == {"ann"} - expected


def test_referrer_domain_first_touch_differs_from_any_touch(app, site):
    with app.app_context():
        ann, bob = person("ann"), person("bob")
        visitor(ann, site.id, referrer="https://www.google.com/")
        happened(ann, site.id, referrer="https://news.ycombinator.com/item")
        visitor(bob, site.id, referrer="https://news.ycombinator.com/")
        happened(bob, site.id, referrer="https://news.ycombinator.com/", is_bot=True)
        hn = {"is": "ycombinator.com"}
        assert matching({"referrer_domain": {**hn, "touch": "first"}}) == {"bob"}
        assert matching({"referrer_domain": hn}) == {"ann"}


def test_field_compares_contact_columns(app, site):
    with app.app_context():
        person("ann", company="Acme Corp", first_name="Ann", score=80, fit_score=30)
        person("bob", company="acme_labs", score=20)
        person("cat", company="", score=50)
        person("dan", score=0)

        def field(**operator: Any) -> set[str]:
            name = operator.pop("name")
            return matching({"field": {"name": name, **operator}})

        assert field(name="company", equals="ACME CORP") == {"ann"}
        assert field(name="company", **{"in": ["acme corp", "ACME_LABS"]}) == {"ann", "bob"}
        assert field(name="company", contains="e_l") == {"bob"}
        assert field(name="company", contains="acme") == {"ann", "bob"}
        assert field(name="company", exists=True) == {"ann", "bob"}
        assert field(name="company", exists=False) == {"cat", "dan"}
        assert field(name="first_name", equals="ann") == {"ann"}
        assert field(name="score", gte=50) == {"ann", "cat"}
        assert field(name="score", lte=20) == {"bob", "dan"}
        assert field(name="score", equals=20) == {"bob"}
        assert field(name="fit_score", **{"in": [30, 31]}) == {"ann"}
        assert field(name="email", contains="@example.test") == {"ann", "bob", "cat", "dan"}
        # A contact without a company is "not at Acme Corp", not unknown.
        assert matching({"not": {"field": {"name": "company", "equals": "acme corp"}}}) == {
            "bob",
            "cat",
            "dan",
        }


def test_field_compares_traits_by_their_json_kind(app, site):
    with app.app_context():
        person("ann", traits={"country": "France", "employees": 250, "trial": True, "note": ""})
        person("bob", traits={"country": "france", "employees": "lots", "trial": False})
        person("cat", traits={"country": "Germany", "employees": 12.5, "note": "50% off"})
        person("dan", traits={"country": None})

        def trait(**operator: Any) -> set[str]:
            return matching({"field": operator})

        assert trait(name="country", equals="FRANCE") == {"ann", "bob"}
        assert trait(name="country", **{"in": ["germany", "spain"]}) == {"cat"}
        assert trait(name="country", contains="man") == {"cat"}
        assert trait(name="country", exists=True) == {"ann", "bob", "cat"}
        assert trait(name="country", exists=False) == {"dan"}
        # "lots" is text: numeric comparisons skip it instead of failing the query.
        assert trait(name="employees", gte=100) == {"ann"}
        assert trait(name="employees", lte=100) == {"cat"}
        assert trait(name="employees", equals=250) == {"ann"}
        assert trait(name="employees", **{"in": [12.5, "lots"]}) == {"bob", "cat"}
        assert trait(name="trial", equals=True) == {"ann"}
        assert trait(name="trial", equals=False) == {"bob"}
        assert trait(name="trial", exists=True) == {"ann", "bob"}
        assert trait(name="note", exists=True) == {"cat"}
        assert trait(name="note", contains="50%") == {"cat"}
        assert trait(name="note", contains="0_") == set()
        assert matching({"not": {"field": {"name": "employees", "gte": 100}}}) == {
            "bob",
            "cat",
            "dan",
        }


def test_tag_score_and_stage(app, site):
    with app.app_context():
        ann = person("ann", stage="mql", score=70, engagement_score=50, fit_score=20)
        bob = person("bob", stage="lead", score=30, engagement_score=5, fit_score=25)
        person("cat", stage="customer", score=100, engagement_score=100, fit_score=0)
        db.session.add_all(
            [ContactTag(contact_id=ann, tag="hot"), ContactTag(contact_id=bob, tag="cold")]
        )
        assert matching({"tag": "hot"}) == {"ann"}
        assert matching({"not": {"tag": "hot"}}) == {"bob", "cat"}
        assert matching({"score": {"kind": "total", "gte": 70}}) == {"ann", "cat"}
        assert matching({"score": {"kind": "engagement", "gte": 5, "lte": 50}}) == {"ann", "bob"}
        assert matching({"score": {"kind": "fit", "gte": 25}}) == {"bob"}
        assert matching({"score": {"kind": "fit", "lte": 0}}) == {"cat"}
        assert matching({"stage": "mql"}) == {"ann"}
        assert matching({"stage": {"in": ["lead", "customer"]}}) == {"bob", "cat"}


def test_email_opens_and_clicks_by_template_and_window(app, site):
    with app.app_context():
        ann, bob, cat, dan = (person(n) for n in ("ann", "bob", "cat", "dan"))
        happened(ann, site.id, "email_open", props={"template_id": 42}, days_ago=3)
        happened(bob, site.id, "email_open", props={"template_id": 7}, days_ago=3)
        happened(bob, site.id, "email_click", props={"template_id": 42}, days_ago=20)
        happened(cat, site.id, "email_click", props={"template_id": 42}, is_bot=True)
        happened(dan, site.id, "email_open", props={"template_id": "not a number"})
        happened(dan, site.id, "email_open", props=None)
        assert matching({"email": {"action": "opened"}}) == {"ann", "bob", "dan"}
        assert matching({"email": {"action": "opened", "template": 42}}) == {"ann"}
        assert matching({"email": {"action": "clicked", "template": 42}}) == {"bob"}
        clicked_lately = {"email": {"action": "clicked", "within_days": 14}}
        assert matching(clicked_lately) == set()


def test_custom_events_by_name_count_and_window(app, site):
    with app.app_context():
        ann, bob, cat = person("ann"), person("bob"), person("cat")
        for days in (1, 2, 7):
            happened(ann, site.id, "custom", name="video_play", days_ago=days)
            happened(bob, site.id, "custom", name="video_play", days_ago=days + 1)
            happened(cat, site.id, "custom", name="video_play", days_ago=days, is_bot=True)
        happened(bob, site.id, "custom", name="video_pause")
        happened(bob, site.id, "pageview", name="video_play")
        three = {"event": {"name": "video_play", "at_least": 3, "within_days": 7}}
        assert matching(three) == {"ann"}
        assert matching({"event": {"name": "video_play", "at_least": 3}}) == {"ann", "bob"}
        assert matching({"event": {"name": "video_play", "within_days": 7}}) == {"ann", "bob"}


def test_in_segment_reads_stored_members(app, site):
    with app.app_context():
        ann, bob = person("ann"), person("bob")
        person("cat")
        trial = Segment(name="Trial", rules={"tag": "trial"})
        other = Segment(name="Other", rules={"tag": "x"})
        db.session.add_all([trial, other])
        db.session.flush()
        db.session.add_all(
            [
                SegmentMember(segment_id=trial.id, contact_id=ann),
                SegmentMember(segment_id=other.id, contact_id=bob),
            ]
        )
        ids = {"Trial": trial.id, "Other": other.id}
        assert matching({"in_segment": "Trial"}, ids) == {"ann"}
        assert matching({"not": {"in_segment": "Trial"}}, ids) == {"bob", "cat"}


def test_all_any_and_not_combine(app, site):
    with app.app_context():
        ann = person("ann", stage="mql", company="Acme")
        bob = person("bob", stage="lead", company="Acme")
        cat = person("cat", stage="lead")
        happened(ann, site.id, path="/pricing")
        happened(bob, site.id, path="/pricing")
        db.session.add(ContactTag(contact_id=cat, tag="hot"))
        pricing = {"visited": {"path": "/pricing"}}
        assert matching({"all": [pricing, {"stage": "lead"}]}) == {"bob"}
        assert matching({"any": [{"stage": "mql"}, {"tag": "hot"}]}) == {"ann", "cat"}
        assert matching({"all": [pricing, {"not": {"stage": "mql"}}]}) == {"bob"}
        tree = {
            "any": [
                {"all": [pricing, {"field": {"name": "company", "equals": "acme"}}]},
                {"not": {"any": [pricing, {"tag": "hot"}]}},
            ]
        }
        assert matching(tree) == {"ann", "bob"}
        assert matching({"not": tree}) == {"cat"}


def test_contact_ids_narrow_the_evaluation_to_touched_contacts(app, site):
    with app.app_context():
        ann, bob, cat = person("ann"), person("bob"), person("cat")
        for contact in (ann, bob, cat):
            happened(contact, site.id, path="/pricing")
            happened(contact, site.id, path="/pricing")
        db.session.add(ContactTag(contact_id=bob, tag="hot"))
        tree = {"all": [{"visited": {"path": "/pricing", "at_least": 2}}, {"not": {"tag": "hot"}}]}
        assert matching(tree) == {"ann", "cat"}
        assert matching(tree, contact_ids=[ann, bob]) == {"ann"}
        # The caller may equally narrow the plain condition itself.
        condition = compile_condition(tree, NOW, {})
        narrowed = select(contacts.c.id).where(contacts.c.id.in_([bob, cat]), condition)
        assert db.session.execute(narrowed).scalars().all() == [cat]
        # With contact_ids, each subquery reads only those contacts' rows (an index range).
        sql = str(compile_condition(tree, NOW, {}, contact_ids=[ann]).compile())
        assert "events.contact_id IN" in sql and "contact_tags.contact_id IN" in sql


def test_now_in_another_zone_means_the_same_instant(app, site):
    with app.app_context():
        ann = person("ann")
        happened(ann, site.id, path="/pricing", days_ago=1.9)
        paris = NOW.astimezone(timezone(timedelta(hours=2)))
        within = {"visited": {"path": "/pricing", "within_days": 2}}
        assert matching(within, now=paris) == {"ann"}
        assert matching(within, now=NOW + timedelta(hours=3)) == set()


def test_events_stored_by_the_pipeline_are_matched(app, client, site):
    """The whole path: POST /e, ingestion, then the compiled tree over what was stored."""
    now_ms = int(time.time() * 1000)
    post_events(
        client,
        site.key,
        [
            event(
                "pageview",
                url="https://example.com/pricing?utm_source=google&utm_medium=cpc",
                referrer="https://news.ycombinator.com/item?id=9",
                ts=now_ms,
            ),
            event("pageview", url="https://example.com/pricing/teams", ts=now_ms),
            event("search", query="Enterprise plan", ts=now_ms),
            event("identify", email="ada@example.com", traits={"employees": 250}, ts=now_ms),
        ],
    )
    assert ingest_all(app) == 4
    tree = {
        "all": [
            {"visited": {"path": "/pricing*", "at_least": 2, "within_days": 1}},
            {"searched": {"contains": "enterprise", "within_days": 1}},
            {"utm": {"source": "google", "medium": "cpc", "touch": "first"}},
            {"referrer_domain": {"is": "ycombinator.com", "touch": "first"}},
            {"field": {"name": "employees", "gte": 200}},
        ]
    }
    with app.app_context():
        assert matching(tree, now=datetime.now(UTC)) == {"ada"}
        later = datetime.now(UTC) + timedelta(days=2)
        assert matching(tree, now=later) == set()
