"""Pairwise comparison: every pair judged in BOTH orders.

Each ordered judgment is one record (``order`` "AB": model_a shown first; "BA": model_b
shown first); its ``verdict`` is mapped back so that "A" always means model_a won.
`ja_instruct.stats.combine_orders` merges the two orders of a pair: equal verdicts stand; verdicts that differ
(the judge changed its mind when the order changed) count as a tie and as an
inconsistency. This is FastChat's rule, applied to every pair instead of one order.
"""

from __future__ import annotations

from itertools import combinations

from ja_instruct.judge.backends import judge_identity
from ja_instruct.judge.engine import Item
from ja_instruct.judge.inputs import judged_turns, uses_reference
from ja_instruct.judge.prompt import PromptSet, build_context
from ja_instruct.judge.store import request_key


def model_pairs(models: list[str], mode: str, baseline: str | None) -> list[tuple[str, str]]:
    """All unordered pairs, or (model, baseline) for every other model."""
    if mode == "pairwise-baseline":
        return [(m, baseline) for m in models if m != baseline]
    return list(combinations(models, 2))


def plan_pairwise(questions, answers: dict[str, dict[str, list[str]]], prompts: PromptSet, cfg,
                  missing: dict[str, int]) -> list[Item]:
    """Both orders of every pair x question x turn x repeat."""
    b = cfg.backend
    judge = judge_identity(b)
    items = []
    for ma, mb in model_pairs(list(answers), cfg.mode, cfg.baseline):
        for q in questions:
            aa, ab = answers[ma].get(q.key), answers[mb].get(q.key)
            if aa is None or ab is None:
                for m, a in ((ma, aa), (mb, ab)):
                    if a is None:
                        missing[m] = missing.get(m, 0) + 1
                continue
            ref = uses_reference(q, cfg.reference_categories)
            for t in judged_turns(q, [aa, ab], cfg.turns):
                prompt = prompts.get("pairwise", ref, t > 1)
                refs = q.reference[:t] if ref else None
                for order in ("AB", "BA"):
                    first, second = (aa, ab) if order == "AB" else (ab, aa)
                    user = prompt.render(build_context(q.turns[:t], first[:t], second[:t], references=refs))
                    for r in range(cfg.repeats):
                        key = request_key(judge, prompt.system, user, prompt, r)
                        rec = {"mode": "pairwise", "question_id": q.question_id, "category": q.category,
                               "turn": t, "model": None, "model_a": ma, "model_b": mb, "order": order,
                               "judge": b.model, "prompt": prompt.id, "repeat": r, "reference_guided": ref}
                        items.append(Item(key, rec, prompt, prompt.system, user, [first[t - 1], second[t - 1]],
                                          swapped=order == "BA"))
    return items
