"""Attribution models over hand-made touches, answers worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest

from automation.attribution import (
    CampaignIndex,
    CampaignKeys,
    Conversion,
    Touch,
    attribute,
    campaign_for_touches,
    campaign_touches,
    credit,
)


def day(n: int) -> datetime:
    return datetime(2026, 3, n, 12, tzinfo=UTC)


SPRING = CampaignKeys.of(1, utm_campaigns=["Spring-Sale", " spring "], template_ids=[7])
WEBINAR = CampaignKeys.of(2, utm_campaigns=["webinar"], sequence_ids=[3])
INDEX = CampaignIndex.build([WEBINAR, SPRING])


def test_keys_normalise_codes_and_touches_match_any_case() -> None:
    assert SPRING.utm_campaigns == frozenset({"spring-sale", "spring"})
    assert INDEX.campaign_of(Touch(day(1), utm_campaign="SPRING-sale")) == 1
    assert INDEX.campaign_of(Touch(day(1), utm_campaign="autumn")) is None
    assert INDEX.campaign_of(Touch(day(1), template_id=7)) == 1
    # A sequence's email whose template belongs elsewhere counts for the sequence's campaign.
    assert INDEX.campaign_of(Touch(day(1), template_id=7, sequence_id=3)) == 2
    assert INDEX.campaign_of(Touch(day(1), template_id=99)) is None


def test_a_shared_code_stays_with_the_older_campaign() -> None:
    index = CampaignIndex.build([CampaignKeys.of(9, ["x"]), CampaignKeys.of(4, ["X"])])
    assert index.campaign_of(Touch(day(1), utm_campaign="x")) == 4


def test_same_campaign_at_the_same_instant_is_one_touch() -> None:
    touches = [
        Touch(day(2), utm_campaign="webinar"),
        Touch(day(1), utm_campaign="spring"),
        Touch(day(1), utm_campaign="Spring-Sale"),
        Touch(day(3), utm_campaign="unknown"),
    ]
    assert campaign_touches(touches, INDEX) == [(day(1), 1), (day(2), 2)]


TOUCHES = [(day(1), 1), (day(2), 2), (day(3), 1), (day(9), 2)]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("first", {1: Fraction(1)}),
        ("last", {1: Fraction(1)}),  # day 9 is after the conversion on day 5
        ("linear", {1: Fraction(2, 3), 2: Fraction(1, 3)}),
    ],
)
def test_models_credit_touches_up_to_the_conversion(model: str, expected: dict) -> None:
    assert credit(TOUCHES, day(5), model) == expected


def test_no_touch_before_the_conversion_earns_nothing() -> None:
    assert credit(TOUCHES, datetime(2026, 2, 1, tzinfo=UTC), "linear") == {}


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown attribution model 'u'"):
        credit(TOUCHES, day(5), "u")


def test_campaign_for_touches_is_the_last_matching_touch_before() -> None:
    touches = [
        Touch(day(1), utm_campaign="spring"),
        Touch(day(4), sequence_id=3),
        Touch(day(6), utm_campaign="other"),
        Touch(day(8), template_id=7),
    ]
    assert campaign_for_touches(touches, [SPRING, WEBINAR], day(7)) == 2
    assert campaign_for_touches(touches, INDEX, day(9)) == 1
    assert campaign_for_touches(touches, INDEX, datetime(2026, 2, 1, tzinfo=UTC)) is None
    assert campaign_for_touches([], INDEX, day(9)) is None


def test_attribute_sums_credit_times_value_and_keeps_the_unattributed() -> None:
    touches = {10: [(day(1), 1), (day(2), 2)], 11: [(day(3), 2)]}
    conversions = [
        Conversion(10, day(4), "leads"),
        Conversion(11, day(4), "leads"),
        Conversion(12, day(4), "leads"),  # no touches at all
        Conversion(10, day(5), "revenue", Fraction(900)),
        # Chosen by hand: all to campaign 1 whatever the touches say.
        Conversion(11, day(5), "revenue", Fraction(300), campaign_id=1),
    ]
    assert attribute(conversions, touches, "linear") == {
        (1, "leads"): Fraction(1, 2),
        (2, "leads"): Fraction(3, 2),
        (None, "leads"): Fraction(1),
        (1, "revenue"): Fraction(450 + 300),
        (2, "revenue"): Fraction(450),
    }
    first = attribute(conversions, touches, "first")
    assert first[(1, "leads")] == 1 and first[(2, "leads")] == 1
    assert first[(1, "revenue")] == 1200 and (2, "revenue") not in first
    last = attribute(conversions, touches, "last")
    assert last[(2, "leads")] == 2 and (1, "leads") not in last
    assert last[(2, "revenue")] == 900 and last[(1, "revenue")] == 300
