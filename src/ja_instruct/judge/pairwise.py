"""Pairwise comparison: every pair judged in BOTH orders.

Each ordered judgment is one record (``order`` "AB": model_a shown first; "BA": model_b
shown first); its ``verdict`` is mapped back so that "A" always means model_a won.
`ja_instruct.stats.combine_orders` merges the two orders of a pair: equal verdicts stand; verdicts that differ
(the judge changed its mind when the order changed) count as a tie and as an
inconsistency. This is FastChat's rule, applied to every pair instead of one order.

Only sample 0 of each answer is compared (with ``generate.samples`` N > 1 the other samples
are judged in single mode only): every pair x order x sample would multiply the calls by N.
Records say so (``sample``: 0). Each answer's hidden reasoning (``judge.think_pattern``) is
removed before it is shown; ``reasoning``, ``answer_chars`` and ``answer_tokens`` are dicts
keyed by model (the length-controlled win rate reads ``answer_chars``).
"""

from __future__ import annotations

from itertools import combinations

from ja_instruct.judge.backends import judge_identity
from ja_instruct.judge.engine import Item
from ja_instruct.judge.inputs import judged_turns, prepare_answer, uses_reference
from ja_instruct.judge.prompt import PromptSet, build_context
from ja_instruct.judge.store import request_key


def model_pairs(models: list[str], mode: str, baseline: str | None) -> list[tuple[str, str]]:
    """All unordered pairs, or (model, baseline) for every other model."""
    if mode == "pairwise-baseline":
        return [(m, baseline) for m in models if m != baseline]
    return list(combinations(models, 2))


def plan_pairwise(questions, answers: dict, prompts: PromptSet, cfg, missing: dict[str, int]) -> list[Item]:
    """Both orders of every pair x question x turn x repeat; ``answers`` is ``{model:
    {question_id: [AnswerSample]}}`` (sample 0 is compared)."""
    b = cfg.backend
    judge = judge_identity(b)
    items = []
    for ma, mb in model_pairs(list(answers), cfg.mode, cfg.baseline):
        for q in questions:
            sa, sb = answers[ma].get(q.key), answers[mb].get(q.key)
            if sa is None or sb is None:
                for m, a in ((ma, sa), (mb, sb)):
                    if a is None:
                        missing[m] = missing.get(m, 0) + 1
                continue
            ref = uses_reference(q, cfg.reference_categories)
            for t in judged_turns(q, [sa[0].turns, sb[0].turns], cfg.turns):
                prompt = prompts.get("pairwise", ref, t > 1)
                refs = q.reference[:t] if ref else None
                (aa, ra), (ab, rb) = (prepare_answer(s[0].turns[:t], cfg.think_pattern) for s in (sa, sb))
                facts = {"sample": 0, "reasoning": {ma: ra, mb: rb},
                         "answer_chars": {ma: len(aa[-1]), mb: len(ab[-1])},
                         "answer_tokens": {ma: sa[0].tokens[t - 1], mb: sb[0].tokens[t - 1]}}
                for order in ("AB", "BA"):
                    first, second = (aa, ab) if order == "AB" else (ab, aa)
                    user = prompt.render(build_context(q.turns[:t], first, second, references=refs,
                                                       eval_aspect=getattr(q, "eval_aspect", None)))
                    for r in range(cfg.repeats):
                        key = request_key(judge, prompt.system, user, prompt, r)
                        rec = {"mode": "pairwise", "question_id": q.question_id, "category": q.category,
                               "turn": t, "model": None, "model_a": ma, "model_b": mb, "order": order,
                               "judge": b.model, "prompt": prompt.id, "repeat": r, "reference_guided": ref,
                               **facts}
                        items.append(Item(key, rec, prompt, prompt.system, user, [first[-1], second[-1]],
                                          swapped=order == "BA"))
    return items
