"""Single-answer grading: one score per (judge, model, question, turn, sample, repeat).

Turn t > 1 is judged with the multi-turn prompt, which shows the whole conversation up to
turn t and grades its last answer (FastChat's MT-Bench convention). Questions of the
reference categories that have a reference are judged reference-guided. A question with its
own grading aspect (ELYZA-tasks-100's ``eval_aspect``) is graded with `ASPECT_FAMILY` (1-5,
reference and aspect shown) unless ``judge.prompt`` / ``judge.judge_prompts`` say otherwise;
that prompt always shows the reference (ELYZA's protocol grades every item against it).

Every sample of an answer (``generate.samples``) is judged; samples with the same text send
the same request and share one judgment. Each answer's hidden reasoning (``judge.think_pattern``)
is removed from every turn shown; the record says what happened (``reasoning``). The answer's
language (`ja_instruct.generate.health.language_label`) is recorded at planning; the language
guard (`apply_language_guard`) acts on the finished record, so it never changes a request.
"""

from __future__ import annotations

import logging
import re

from ja_instruct.judge.backends import judge_identity
from ja_instruct.judge.engine import Item
from ja_instruct.judge.inputs import judged_turns, prepare_answer, uses_reference
from ja_instruct.judge.prompt import ASPECT_FAMILY, PromptSet, build_context
from ja_instruct.judge.store import request_key

log = logging.getLogger(__name__)

GUARDS = ("off", "flag", "floor")
# A question that asks for another language (a translation into English, an English letter) is
# answered rightly in it: its answer is flagged, never floored.
_OTHER_LANGUAGE = re.compile(r"英語|英訳|英文|翻訳|中国語|韓国語|フランス語|ドイツ語|スペイン語|in English|translate",
                             re.IGNORECASE)


def asks_for_other_language(turn: str) -> bool:
    """Whether a question turn asks for an answer in another language, or is itself not in
    Japanese (then a non-Japanese answer may be right)."""
    from ja_instruct.generate.health import language_label

    return bool(_OTHER_LANGUAGE.search(turn)) or language_label(turn) == "not-japanese"


def _family(q, prompts: PromptSet) -> str | None:
    """The prompt family of question ``q``: `ASPECT_FAMILY` for an item with its own grading
    aspect when the user chose no prompt, else the set's own (None)."""
    if prompts.family is None and prompts.fastchat is None and getattr(q, "eval_aspect", None):
        return ASPECT_FAMILY
    return None


def plan_single(questions, answers: dict, prompts: PromptSet, cfg, missing: dict[str, int],
                backend=None) -> list[Item]:
    """Every single-mode item of one judge (``backend``, default ``cfg.backend``); ``answers`` is
    ``{model: {question_id: [AnswerSample]}}``; ``missing`` collects per model how many
    questions lack an answer."""
    from ja_instruct.generate.health import language_label

    b = backend or cfg.backend
    judge = judge_identity(b)
    items = []
    for model, by_q in answers.items():
        for q in questions:
            samples = by_q.get(q.key)
            if samples is None:
                missing[model] = missing.get(model, 0) + 1
                continue
            family = _family(q, prompts)
            aspect_prompt = (family or prompts.family) == ASPECT_FAMILY
            ref = uses_reference(q, None if aspect_prompt else cfg.reference_categories)
            for k, smp in enumerate(samples):
                for t in judged_turns(q, [smp.turns], cfg.turns):
                    prompt = prompts.get("single", ref, t > 1, family=family)
                    shown, reasoning = prepare_answer(smp.turns[:t], cfg.think_pattern)
                    refs = q.reference[:t] if ref else None
                    ctx = build_context(q.turns[:t], shown, references=refs,
                                        eval_aspect=getattr(q, "eval_aspect", None))
                    user = prompt.render(ctx)
                    answer = shown[-1]
                    facts = {"sample": k, "scale": list(prompt.scale), "language": language_label(answer),
                             "language_exempt": asks_for_other_language(q.turns[t - 1]),
                             "reasoning": reasoning, "answer_chars": len(answer),
                             "answer_tokens": smp.tokens[t - 1]}
                    for r in range(cfg.repeats):
                        key = request_key(judge, prompt.system, user, prompt, r)
                        rec = {"mode": "single", "question_id": q.question_id, "category": q.category, "turn": t,
                               "model": model, "model_a": None, "model_b": None, "judge": b.model,
                               "prompt": prompt.id, "repeat": r, "reference_guided": ref, **facts}
                        items.append(Item(key, rec, prompt, prompt.system, user, [answer]))
    return items


def apply_language_guard(rec: dict, guard: str) -> dict:
    """``rec`` (a single-mode judgment) with the language guard applied, in place:

    * ``off``: no ``language`` shown (None), the judge's score stands;
    * ``flag``: ``language`` shown, the judge's score stands;
    * ``floor``: a parsed score of a ``not-japanese`` answer becomes the scale's lowest grade,
      unless the question asked for another language (``language_exempt``: flagged only).

    ``score_unguarded`` always holds the judge's own score and ``guarded`` says whether the
    floor was applied (true even when the judge had already given the lowest grade). Records of
    other modes, and records without a ``language`` (imported without answers), are left as
    they are apart from those two fields."""
    if guard not in GUARDS:
        raise ValueError(f"unknown language guard {guard!r}; known: {GUARDS}")
    if rec.get("mode") != "single":
        return rec
    score = rec.get("score_unguarded", rec.get("score"))
    rec["score_unguarded"] = score
    rec["guarded"] = False
    if guard == "off":
        rec["language"] = None
    elif (guard == "floor" and rec.get("language") == "not-japanese" and score is not None
          and not rec.get("language_exempt")):
        lo = (rec.get("scale") or [1, 10])[0]
        rec["score"] = float(min(score, lo))
        rec["guarded"] = True
    else:
        rec["score"] = score
    return rec
