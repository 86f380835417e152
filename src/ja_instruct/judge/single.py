"""Single-answer grading: one 1-10 score per (model, question, turn, repeat).

Turn t > 1 is judged with the multi-turn prompt, which shows the whole conversation up to
turn t and grades its last answer (FastChat's MT-Bench convention). Questions of the
reference categories that have a reference are judged reference-guided.
"""

from __future__ import annotations

import logging

from ja_instruct.judge.backends import judge_identity
from ja_instruct.judge.engine import Item
from ja_instruct.judge.inputs import judged_turns, uses_reference
from ja_instruct.judge.prompt import PromptSet, build_context
from ja_instruct.judge.store import request_key

log = logging.getLogger(__name__)


def plan_single(questions, answers: dict[str, dict[str, list[str]]], prompts: PromptSet, cfg,
                missing: dict[str, int]) -> list[Item]:
    """Every single-mode item; ``missing`` collects per model how many questions lack an answer."""
    b = cfg.backend
    judge = judge_identity(b)
    items = []
    for model, by_q in answers.items():
        for q in questions:
            ans = by_q.get(q.key)
            if ans is None:
                missing[model] = missing.get(model, 0) + 1
                continue
            ref = uses_reference(q, cfg.reference_categories)
            for t in judged_turns(q, [ans], cfg.turns):
                prompt = prompts.get("single", ref, t > 1)
                refs = q.reference[:t] if ref else None
                ctx = build_context(q.turns[:t], ans[:t], references=refs)
                user = prompt.render(ctx)
                for r in range(cfg.repeats):
                    key = request_key(judge, prompt.system, user, prompt, r)
                    rec = {"mode": "single", "question_id": q.question_id, "category": q.category, "turn": t,
                           "model": model, "model_a": None, "model_b": None, "judge": b.model,
                           "prompt": prompt.id, "repeat": r, "reference_guided": ref}
                    items.append(Item(key, rec, prompt, prompt.system, user, [ans[t - 1]]))
    return items
