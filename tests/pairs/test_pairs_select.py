"""`ja_instruct.pairs.select`: which two answers make a pair, and why a prompt gives none."""

from __future__ import annotations

import pytest

from ja_instruct.pairs.select import (JUDGE_ERROR, MARGIN_BELOW, NOT_PREFERRED, ORDER_DISAGREES, TIE,
                                      TRUNCATED_CHOSEN, heldout_ids, margin_histogram, select_pairwise,
                                      select_single)

NO_CUT = [False] * 4


def test_single_keeps_best_and_worst_at_or_above_the_margin():
    sel = select_single([4, 9, 2, 6], NO_CUT, margin=7)
    assert (sel.chosen, sel.rejected, sel.margin, sel.reason) == (1, 2, 7, None)
    assert sel.scores == {"chosen": 9, "rejected": 2}
    below = select_single([4, 9, 2, 6], NO_CUT, margin=7.5)
    assert below.reason == MARGIN_BELOW and (below.chosen, below.rejected) == (1, 2)


def test_single_float_grades_meet_a_margin_they_equal():
    # an hf judge's expected grades: 7.3 - 6.3 is 0.9999999999999991 in floating point
    assert select_single([7.3, 6.3], [False, False], margin=1.0).kept


def test_single_ties_go_to_the_lowest_sample_index():
    sel = select_single([8, 3, 8, 3], NO_CUT, margin=1)
    assert (sel.chosen, sel.rejected) == (0, 1)
    assert select_single([5, 5, 5, 5], NO_CUT, margin=0).reason == TIE  # a tie is never a pair, margin 0 or not


def test_single_never_chooses_a_cut_off_answer_but_may_reject_one():
    sel = select_single([9, 7, 1, 5], [True, False, True, False], margin=1)
    assert (sel.chosen, sel.rejected, sel.reason) == (1, 2, None)
    assert select_single([9, 7], [True, True], margin=1).reason == TRUNCATED_CHOSEN
    # the only whole answer is the worst: every better one was cut
    assert select_single([9, 2], [True, False], margin=1).reason == TRUNCATED_CHOSEN


def test_single_ungraded_samples_are_left_out_and_too_few_is_a_judge_error():
    sel = select_single([None, 6, None, 1], NO_CUT, margin=2)
    assert (sel.chosen, sel.rejected, sel.reason) == (1, 3, None)
    assert select_single([None, 6, None, None], NO_CUT, margin=0).reason == JUDGE_ERROR


def _v(**pairs):
    """``_v(p01=("A", "A"))`` -> {(0, 1): ("A", "A")}."""
    return {(int(k[1]), int(k[2])): v for k, v in pairs.items()}


def test_pairwise_counts_only_verdicts_that_agree_in_both_orders():
    # 0 beats 1 and 2 in both orders; 1 "beats" 2 only when shown first (flips): no win for either
    verdicts = _v(p01=("A", "A"), p02=("A", "A"), p12=("A", "B"))
    sel = select_pairwise(3, verdicts, [False] * 3, margin=2)
    assert (sel.chosen, sel.rejected, sel.scores, sel.reason) == (0, 1, {"chosen": 2.0, "rejected": 0.0}, None)
    # the same verdicts counted order by order would give 1 a win: then 0 would lead 2 by only 1
    assert select_pairwise(3, verdicts, [False] * 3, margin=3).reason == MARGIN_BELOW


def test_pairwise_needs_the_direct_comparison_to_agree_with_chosen_winning():
    # agreed wins 0: 1 (over 2), 1: 1 (over 2), 2: 1 (over 3), 3: 0; but 0 vs 3 flips with the order
    flips = _v(p01=("tie", "tie"), p02=("A", "A"), p03=("A", "B"), p12=("A", "A"), p13=("tie", "tie"),
               p23=("A", "A"))
    wins_check = select_pairwise(4, flips, [False] * 4, margin=1)
    assert (wins_check.chosen, wins_check.rejected) == (0, 3)
    assert wins_check.reason == ORDER_DISAGREES
    # wins 0: 2, 1: 1, 2: 1, 3: 0, but 0 and 3 tie directly (both orders): not a preference
    tied = _v(p01=("A", "A"), p02=("A", "A"), p03=("tie", "tie"), p12=("tie", "tie"), p13=("A", "A"),
              p23=("A", "A"))
    sel = select_pairwise(4, tied, [False] * 4, margin=2)
    assert (sel.chosen, sel.rejected, sel.margin, sel.reason) == (0, 3, 2.0, NOT_PREFERRED)
    tied[(0, 3)] = ("A", "A")
    assert select_pairwise(4, tied, [False] * 4, margin=2).kept


def test_pairwise_errors_and_cut_answers():
    assert select_pairwise(2, _v(p01=(None, "A")), [False, False], margin=1).reason == JUDGE_ERROR
    assert select_pairwise(2, _v(p01=("A", "A")), [True, False], margin=1).reason == TRUNCATED_CHOSEN
    assert select_pairwise(2, _v(p01=("B", "B")), [True, False], margin=1).reason is None


def test_heldout_is_stable_grouped_by_prompt_and_never_empty_when_asked():
    prompts = {f"id{i}": [{"role": "user", "content": f"質問{i}"}] for i in range(200)}
    held = heldout_ids(prompts, 0.1, seed=0)
    assert 5 < len(held) < 40
    more = dict(prompts, extra=[{"role": "user", "content": "新しい質問"}])
    assert heldout_ids(more, 0.1, seed=0) - {"extra"} == held  # others' sides do not move
    assert heldout_ids(prompts, 0.1, seed=1) != held
    twin = dict(prompts, twin=prompts[sorted(held)[0]])
    assert "twin" in heldout_ids(twin, 0.1, seed=0)  # the same prompt falls on the same side
    assert len(heldout_ids({"a": "x", "b": "y"}, 0.01, seed=0)) == 1
    assert heldout_ids(prompts, 0.0, seed=0) == set()


@pytest.mark.parametrize("margins,kept,expected", [
    ([0.0, 1.0, 1.0, 3.0], [False, True, True, True], [(0, 1, 1, 0), (1, 2, 2, 2), (2, 3, 0, 0), (3, 4, 1, 1)]),
    ([0.5, 0.25], [False, False], [(0, 1, 2, 0)]),
])
def test_margin_histogram_bins_from_zero(margins, kept, expected):
    got = [(b["from"], b["to"], b["prompts"], b["kept"]) for b in margin_histogram(margins, kept)]
    assert got == expected
