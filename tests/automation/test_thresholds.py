"""The threshold engine: crossings fire once; refire only after falling below."""

from __future__ import annotations

import pytest

from automation.thresholds import (
    Standing,
    State,
    ThresholdError,
    evaluate,
    make_threshold,
)

MQL = make_threshold(1, "MQL", "total", 50, actions=[{"type": "set_stage", "stage": "mql"}])


def standing(engagement: int, fit: int = 0, stage: str = "lead", segments=(), contact: int = 7):
    return Standing(contact, engagement, fit, stage, frozenset(segments))


def test_crossing_fires_once_and_staying_above_does_not_fire_again():
    firings, states = evaluate([MQL], [standing(40, 15)], {})
    assert [(f.threshold.name, f.contact_id, f.number) for f in firings] == [("MQL", 7, 1)]
    assert states == {(1, 7): State(above=True, fired=1)}
    again, changed = evaluate([MQL], [standing(80, 15)], states)
    assert again == [] and changed == {}


def test_falling_below_and_crossing_again_fires_only_with_refire():
    states = {(1, 7): State(above=True, fired=1)}
    _, states_after_drop = evaluate([MQL], [standing(10)], states)
    assert states_after_drop == {(1, 7): State(above=False, fired=1)}
    firings, _ = evaluate([MQL], [standing(60)], states_after_drop)
    assert firings == []

    refiring = make_threshold(2, "hot again", "engagement", 50, refire=True)
    states = {(2, 7): State(above=False, fired=1)}
    firings, changed = evaluate([refiring], [standing(60)], states)
    assert [f.number for f in firings] == [2]
    assert changed[(2, 7)] == State(above=True, fired=2)


def test_score_kind_segment_and_stage_narrow_who_qualifies():
    fit_only = make_threshold(3, "good fit", "fit", 20)
    in_segment = make_threshold(4, "hot enterprise", "engagement", 30, segment_id=9)
    leads_only = make_threshold(5, "leads", "engagement", 30, stage="lead")
    firings, _ = evaluate(
        [fit_only, in_segment, leads_only], [standing(100, 5, stage="customer", segments=[9])], {}
    )
    assert [f.threshold.name for f in firings] == ["hot enterprise"]


def test_several_contacts_are_evaluated_independently():
    firings, _ = evaluate(
        [MQL], [standing(60, contact=1), standing(10, contact=2), standing(50, contact=3)], {}
    )
    assert sorted(f.contact_id for f in firings) == [1, 3]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"score": "karma"}, "score 'karma'"),
        ({"stage": "hot"}, "stage 'hot'"),
        ({"minimum": "50"}, "minimum must be a whole number"),
        ({"actions": [{"type": "call_mom"}]}, "action type 'call_mom'"),
        ({"actions": [{"type": "set_stage"}]}, "needs 'stage'"),
        ({"actions": [{"type": "set_stage", "stage": "hot"}]}, "stage 'hot'"),
        ({"actions": [{"type": "assign_owner"}]}, "needs 'owner'"),
        ({"actions": [{"type": "webhook"}]}, "needs 'webhook'"),
    ],
)
def test_thresholds_that_cannot_work_are_refused(kwargs, message):
    args = {"score": "total", "minimum": 50, **kwargs}
    with pytest.raises(ThresholdError, match=message):
        make_threshold(1, "t", args.pop("score"), args.pop("minimum"), **args)
