"""Which two answers of a prompt make a preference pair: pure functions, no I/O.

**Single grades** (`select_single`): each sample has a score (None: the judge refused it or its
grade could not be parsed). ``chosen`` is the highest-scored sample that was not cut off at
``max_new_tokens``; ``rejected`` the lowest-scored of the others (cut-off answers included: a
cut answer is a fine negative, never a positive). Ties on either side go to the lowest sample
index, so the choice never depends on dict or thread order. The pair is kept when the score
difference is at least ``margin``; a difference of 0 is a tie and never kept, whatever the margin.

**Pairwise** (`select_pairwise`): every pair of samples was judged in both orders; a
comparison counts only when the two orders agree (both "A", both "B" or both "tie"), so a
judge that prefers whichever answer it sees first gives no one a win. Each sample's wins are
its agreed wins; ``chosen`` has the most (not cut off), ``rejected`` the fewest, ties to the
lowest index. Kept when the win difference is at least ``margin`` AND their own comparison
agrees in both orders with ``chosen`` winning (a cycle A>B>C>A can give C more wins than A
while losing to it).

Every prompt that gives no pair gets exactly one reason (the first check it fails), in
`DROP_REASONS` order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ja_instruct.io import stable_hash

# Per-prompt drop reasons, in the order they are checked (prompt-level ones first).
NO_PROMPT = "no_prompt"  # no user turn to answer (data rows)
MULTI_TURN = "multi_turn"  # the prompt has earlier assistant turns (data rows): see docs/pairs.md
HAS_SYSTEM = "has_system"  # the data row has its own system message (data rows)
DUPLICATE_PROMPT = "duplicate_prompt"  # the same prompt again (e.g. a data source weighted > 1)
JUDGE_ERROR = "judge_error"  # fewer than two samples graded / the deciding comparison failed
TRUNCATED_CHOSEN = "truncated_chosen"  # every better answer was cut off at max_new_tokens
TIE = "tie"  # best and worst are judged equal
MARGIN_BELOW = "margin_below"  # separated, but by less than the margin
ORDER_DISAGREES = "order_disagrees"  # pairwise: chosen vs rejected flips with the order
NOT_PREFERRED = "not_preferred_directly"  # pairwise: both orders agree, but not for chosen
DROP_REASONS = (NO_PROMPT, MULTI_TURN, HAS_SYSTEM, DUPLICATE_PROMPT, JUDGE_ERROR, TRUNCATED_CHOSEN, TIE,
                MARGIN_BELOW, ORDER_DISAGREES, NOT_PREFERRED)

# Scores are compared with this slack: an hf judge's expected grades 7.3 - 6.3 must meet a margin of 1.
EPS = 1e-9


@dataclass(frozen=True)
class Selection:
    """What one prompt gives: a pair (``reason`` None) or why not. ``chosen``/``rejected`` are
    sample indices (set whenever a candidate pair existed, so dropped ones show in the histogram);
    ``scores`` are the scores (single) or wins (pairwise) of the two; ``margin`` their difference."""

    chosen: int | None = None
    rejected: int | None = None
    scores: dict | None = None
    margin: float | None = None
    reason: str | None = None

    @property
    def kept(self) -> bool:
        return self.reason is None


def _best_and_worst(values: Sequence[float], pool: Sequence[int], truncated: Sequence[bool]
                    ) -> tuple[int, int] | None:
    """(best not-truncated index of ``pool``, worst other index), ties to the lowest index;
    None when every index of ``pool`` is truncated."""
    candidates = [i for i in pool if not truncated[i]]
    if not candidates:
        return None
    best = min(candidates, key=lambda i: (-values[i], i))
    worst = min((i for i in pool if i != best), key=lambda i: (values[i], i))
    return best, worst


def _judge_by_difference(best: int, worst: int, values: Sequence[float], margin: float) -> Selection:
    diff = values[best] - values[worst]
    base = dict(chosen=best, rejected=worst, scores={"chosen": values[best], "rejected": values[worst]},
                margin=diff)
    if diff < -EPS:  # every answer judged better than this one was cut off
        return Selection(**base, reason=TRUNCATED_CHOSEN)
    if abs(diff) <= EPS:
        return Selection(**base, reason=TIE)
    if diff < margin - EPS:
        return Selection(**base, reason=MARGIN_BELOW)
    return Selection(**base)


def select_single(scores: Sequence[float | None], truncated: Sequence[bool], margin: float) -> Selection:
    """The pair of one prompt from per-sample scores (None: not graded); see the module doc."""
    graded = [i for i, s in enumerate(scores) if s is not None]
    if len(graded) < 2:
        return Selection(reason=JUDGE_ERROR)
    values = [float(s) if s is not None else math.nan for s in scores]
    picked = _best_and_worst(values, graded, truncated)
    if picked is None:
        return Selection(reason=TRUNCATED_CHOSEN)
    return _judge_by_difference(*picked, values, margin)


def agreed(ab: str | None, ba: str | None) -> str | None:
    """The verdict of one comparison from its two orders (both already mapped so that "A" means
    the first sample of the pair won): the common verdict, or None when they differ or one is
    missing."""
    return ab if ab is not None and ab == ba else None


def agreed_wins(k: int, verdicts: Mapping[tuple[int, int], tuple[str | None, str | None]]) -> list[int]:
    """Wins of each of ``k`` samples over the comparisons whose two orders agree."""
    wins = [0] * k
    for (i, j), (ab, ba) in verdicts.items():
        v = agreed(ab, ba)
        if v == "A":
            wins[i] += 1
        elif v == "B":
            wins[j] += 1
    return wins


def select_pairwise(k: int, verdicts: Mapping[tuple[int, int], tuple[str | None, str | None]],
                    truncated: Sequence[bool], margin: float) -> Selection:
    """The pair of one prompt from its pairwise verdicts: ``{(i, j): (verdict shown i first, verdict
    shown j first)}`` for i < j, each "A" (i won), "B" (j won), "tie" or None (refused, unparsable
    or missing); see the module doc."""
    if not any(ab is not None and ba is not None for ab, ba in verdicts.values()):
        return Selection(reason=JUDGE_ERROR)
    wins = agreed_wins(k, verdicts)
    picked = _best_and_worst([float(w) for w in wins], range(k), truncated)
    if picked is None:
        return Selection(reason=TRUNCATED_CHOSEN)
    sel = _judge_by_difference(*picked, [float(w) for w in wins], margin)
    if not sel.kept:
        return sel
    c, r = sel.chosen, sel.rejected
    ab, ba = verdicts.get((min(c, r), max(c, r)), (None, None))
    if ab is None or ba is None:
        return Selection(c, r, sel.scores, sel.margin, JUDGE_ERROR)
    if ab != ba:
        return Selection(c, r, sel.scores, sel.margin, ORDER_DISAGREES)
    if ab != ("A" if c < r else "B"):
        return Selection(c, r, sel.scores, sel.margin, NOT_PREFERRED)
    return sel


def heldout_ids(prompt_keys: Mapping[str, object], fraction: float, seed: int) -> set[str]:
    """The pair ids set aside (``split: heldout``): those whose seeded hash of the PROMPT is below
    ``fraction`` (so a pair's side never moves when other pairs come or go, and every pair of one
    prompt falls on the same side). When that picks none but ``fraction`` > 0 and there are two
    or more pairs, the lowest hash is held out: DPO needs at least one to measure accuracy on."""
    if fraction <= 0 or not prompt_keys:
        return set()
    keyed = {pid: int(stable_hash({"seed": seed, "prompt": p}), 16) / 16 ** 16 for pid, p in prompt_keys.items()}
    held = {pid for pid, u in keyed.items() if u < fraction}
    if not held and len(keyed) >= 2:
        lowest = min(keyed.values())
        held = {pid for pid, u in keyed.items() if u == lowest}
    return held


def margin_histogram(margins: Sequence[float], kept: Sequence[bool], width: float = 1.0) -> list[dict]:
    """Bins of ``width`` from 0 over the (chosen, rejected) differences of every prompt that had a
    candidate pair: ``[{"from", "to", "prompts", "kept"}]`` (the last bin closed on the right)."""
    import numpy as np

    if not margins:
        return []
    m = np.maximum(np.asarray(margins, dtype=float), 0.0)  # a negative difference counts in the first bin
    # bins [0, w), [w, 2w), ...: a difference of exactly d*w (integer grades) opens its own bin
    edges = np.arange(int(math.floor(float(m.max()) / width + EPS)) + 2) * width
    all_counts, _ = np.histogram(m, bins=edges)
    kept_counts, _ = np.histogram(m[np.asarray(kept, dtype=bool)], bins=edges)
    return [{"from": float(edges[i]), "to": float(edges[i + 1]), "prompts": int(all_counts[i]),
             "kept": int(kept_counts[i])} for i in range(len(edges) - 1)]
