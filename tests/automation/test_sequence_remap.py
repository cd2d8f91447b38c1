"""Which old step became which new one when a sequence's steps are edited, and where that
leaves the people standing at each (pure: no database)."""

from __future__ import annotations

import pytest

from automation.sequence_remap import (
    ALIGN_CELLS,
    PlaceReport,
    match_origins,
    match_steps,
    remap,
    steps_digest,
)

WELCOME = {"send": "welcome"}
WAIT_2D = {"wait": "2d"}
CASE = {"send": "case-study"}
WAIT_1D = {"wait": "1d"}
PRICING = {"send": "pricing"}
STEPS = [WELCOME, WAIT_2D, CASE, WAIT_1D, PRICING]


def places(old, new) -> list[int]:
    """Where someone at each old position (and at the old end) stands after the edit."""
    moves = remap(match_steps(old, new), len(new))
    return [moves.place(p) for p in range(len(old) + 1)]


def test_unchanged_steps_move_nobody():
    step_map = match_steps(STEPS, list(STEPS))
    assert step_map == [0, 1, 2, 3, 4]
    moves = remap(step_map, 5)
    assert not moves.moves_places and not moves.moves_steps
    assert [moves.place(p) for p in range(7)] == [0, 1, 2, 3, 4, 5, 5]
    assert not any(moves.removed(p) for p in range(-1, 7))


def test_a_step_inserted_before_moves_everyone_after_it_along():
    new = [WELCOME, {"send": "intro"}, WAIT_2D, CASE, WAIT_1D, PRICING]
    assert match_steps(STEPS, new) == [0, 2, 3, 4, 5]
    # Someone waiting 2 days before the case study (at position 2) still gets it next.
    assert places(STEPS, new) == [0, 2, 3, 4, 5, 6]
    assert remap(match_steps(STEPS, new), 6).moves_places


def test_a_step_removed_before_moves_everyone_after_it_back():
    new = [WAIT_2D, CASE, WAIT_1D, PRICING]
    step_map = match_steps(STEPS, new)
    assert step_map == [None, 0, 1, 2, 3]
    moves = remap(step_map, 4)
    assert [moves.place(p) for p in range(6)] == [0, 0, 1, 2, 3, 4]
    assert moves.removed(0) and not moves.removed(1)


def test_people_at_a_removed_step_move_on_to_the_next_one_still_there_or_the_end():
    new = [WELCOME, WAIT_2D, WAIT_1D, PRICING]  # the case study is gone
    moves = remap(match_steps(STEPS, new), 4)
    assert moves.removed(2) and moves.place(2) == 2  # on to "wait 1d", the next old step
    last_gone = [WELCOME, WAIT_2D, CASE, WAIT_1D]
    moves = remap(match_steps(STEPS, last_gone), 4)
    assert moves.removed(4) and moves.place(4) == 4 == moves.new_count  # no step left: the end
    both = remap(match_steps(STEPS, [WELCOME, WAIT_2D, PRICING]), 3)
    assert [both.place(p) for p in range(6)] == [0, 1, 2, 2, 2, 3]


def test_a_step_changed_in_place_is_the_same_step():
    # A new template, a longer wait: the people waiting for the send still get it.
    new = [WELCOME, {"wait": "3d"}, {"send": "case-study-2"}, WAIT_1D, PRICING]
    assert match_steps(STEPS, new) == [0, 1, 2, 3, 4]
    # A named step is itself by its name, whatever else changed; another kind unnamed is not.
    old = [WELCOME, {"name": "hot", "send": "a"}, {"send": "b"}]
    assert match_steps(old, [WELCOME, {"name": "hot", "wait": "1d"}, {"wait": "1d"}]) == [
        0,
        1,
        None,
    ]
    assert match_steps(old, [WELCOME, {"name": "cold", "send": "a"}, {"send": "b"}]) == [0, None, 2]
    # Two sends replaced by one: the first is the one edited, the second removed.
    assert match_steps([WELCOME, CASE, PRICING, WAIT_1D], [WELCOME, {"send": "x"}, WAIT_1D]) == [
        0,
        1,
        None,
        2,
    ]


def test_reordered_steps_in_a_file_follow_their_step_when_they_can_be_told_apart():
    new = [PRICING, WELCOME, WAIT_2D, CASE, WAIT_1D]
    assert match_steps(STEPS, new) == [1, 2, 3, 4, 0]
    # The last two sends swapped: each is matched to itself, wherever it went.
    old = [WELCOME, WAIT_1D, CASE, WAIT_1D, PRICING]
    assert match_steps(old, [WELCOME, WAIT_1D, PRICING, WAIT_1D, CASE]) == [0, 1, 4, 3, 2]
    # Equal steps are interchangeable: each is matched to one of its equals, none twice.
    ambiguous = match_steps([WAIT_1D, CASE, WAIT_1D], [CASE, WAIT_1D, WAIT_1D])
    assert ambiguous[1] == 0 and sorted(ambiguous) == [0, 1, 2]
    # A step that moved and now appears twice is not guessed at: it counts as removed.
    assert match_steps([WELCOME, CASE, PRICING], [PRICING, CASE, WELCOME, WELCOME])[0] is None


def test_the_forms_row_origins_say_which_step_each_row_was():
    # Rows: the case study moved to the top, a new send after the welcome, the last wait removed.
    origins = [2, 0, None, 1, 4]
    step_map = match_origins(origins, 5)
    assert step_map == [1, 3, 0, None, 4]
    moves = remap(step_map, 5)
    assert [moves.place(p) for p in range(6)] == [1, 3, 0, 4, 4, 5]
    assert moves.moves_steps and moves.removed(3) and not moves.removed(2)
    # A forged form: out of range, negative and repeated origins are new rows.
    assert match_origins([0, 0, 7, -1, 1], 2) == [0, 4]


def test_a_form_moving_one_row_swaps_two_places():
    moves = remap(match_origins([1, 0, 2], 3), 3)
    assert [moves.place(p) for p in range(4)] == [1, 0, 2, 3]
    assert moves.step_map == (1, 0, 2)


def test_steps_all_replaced_or_emptied():
    assert match_steps(STEPS, [{"send": "other"}]) == [0, None, None, None, None]
    moves = remap(match_steps([WAIT_2D, CASE], [PRICING]), 1)
    assert [moves.place(p) for p in range(3)] == [0, 0, 1]
    assert match_steps([], [WELCOME]) == [] and remap([], 1).places == (1,)


def test_long_sequences_are_matched_without_comparing_forever():
    old = [{"send": f"t{i}"} for i in range(3000)]
    new = [*old[:10], {"wait": "1d"}, *old[10:]]
    step_map = match_steps(old, new)
    assert step_map[:10] == list(range(10)) and step_map[10:] == list(range(11, 3001))
    # Rewritten throughout: too large to align, yet every step is found by the move pass.
    mixed = [{"send": f"t{i}"} if i % 2 else {"wait": f"{i}d"} for i in range(3000)]
    assert len(mixed) ** 2 > ALIGN_CELLS
    assert match_steps(mixed, mixed[::-1]) == list(range(2999, -1, -1))


def test_the_digest_tells_stored_steps_apart_and_ignores_key_order():
    assert steps_digest([{"name": "a", "send": "b"}]) == steps_digest([{"send": "b", "name": "a"}])
    assert steps_digest(STEPS) != steps_digest(STEPS[:-1])
    assert len(steps_digest([])) == 64


@pytest.mark.parametrize(
    ("report", "words"),
    [
        (
            PlaceReport("W", 3, {3: 1}, 0, {3: "send welcome-2"}),
            "3 people in this sequence kept their place; "
            "1 at a removed step moved on to step 4 (send welcome-2)",
        ),
        (PlaceReport("W", 1, {}, 0, {}), "1 person in this sequence kept their place"),
        (
            PlaceReport("W", 0, {0: 2}, 1, {0: "wait 1d"}),
            "2 people in this sequence at a removed step moved on to step 1 (wait 1d); "
            "1 at a removed step completed, as no step is left after it",
        ),
    ],
)
def test_the_report_in_words(report, words):
    assert report.summary("this sequence") == words
    assert report.summary().startswith(words.split(" in ")[0] + " in sequence 'W'")
