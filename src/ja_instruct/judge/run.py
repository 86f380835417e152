"""`run_judging`: the judge stage's entry point (used by the CLI and `ja-instruct run`).

Reads the question set and the answer files, plans every judgment (all inputs and
prompts are checked before the first call), judges what the cache lacks, and writes::

    <out>/cache.jsonl        append-only judgment store (the cache; resumable)
    <out>/judgments.jsonl    this run's judgments (HELPERS.md schema)
    <out>/summary.json       per-model statistics, pairwise matrix + BT ratings, usage, cost
    <out>/config.yaml        the resolved judge config (answers_dir and questions resolved)
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from ja_instruct.config import save_config
from ja_instruct.errors import UserError
from ja_instruct.io import write_json, write_jsonl
from ja_instruct.judge.config import JudgeConfig

log = logging.getLogger(__name__)


def resolve_config(recipe, judge_prompts: str | Path | None = None, repeats: int | None = None) -> JudgeConfig:
    """The recipe's judge section with CLI options and defaults from other sections filled in."""
    from pydantic import ValidationError

    from ja_instruct.config import validation_to_user_error

    cfg = recipe.require("judge")
    data = cfg.model_dump()
    if judge_prompts is not None:
        data["judge_prompts"] = Path(judge_prompts)
    if repeats is not None:
        data["repeats"] = repeats
    if data["answers_dir"] is None:
        data["answers_dir"] = recipe.stage_dir("answers")
    gen = getattr(recipe, "generate", None)
    if data["questions"] is None:
        if gen is None or not getattr(gen, "questions", None):
            raise UserError("no question set: the judge section has no 'questions' and the recipe no 'generate'",
                            field="judge.questions", hint="Set judge.questions to a question JSONL or hub id.")
        data["questions"] = gen.questions
        if data["reference_answers"] is None and getattr(gen, "reference_answers", None):
            data["reference_answers"] = Path(gen.reference_answers)
    try:
        return JudgeConfig.model_validate(data)
    except ValidationError as err:
        raise validation_to_user_error(err, JudgeConfig, None) from None


def plan(cfg: JudgeConfig):
    """(items, models, missing answers per model) for a resolved config; no calls made."""
    from ja_instruct.judge.inputs import load_all_answers, load_question_set
    from ja_instruct.judge.pairwise import plan_pairwise
    from ja_instruct.judge.prompt import PromptSet
    from ja_instruct.judge.single import plan_single

    if cfg.judge_prompts is not None and cfg.prompt is not None:
        raise UserError("set either judge.prompt (our prompts) or judge.judge_prompts (a FastChat file), not both",
                        field="judge.prompt")
    prompts = PromptSet(cfg.prompt, cfg.judge_prompts, cfg.judge_prompt_names)
    questions = load_question_set(cfg.questions, cfg.reference_answers, cfg.limit)
    models = cfg.models
    if cfg.mode == "pairwise-baseline" and models is not None and cfg.baseline not in models:
        models = list(models) + [cfg.baseline]
    answers = load_all_answers(Path(cfg.answers_dir), models)
    if cfg.mode == "pairwise-baseline" and cfg.baseline not in answers:
        raise UserError(f"baseline '{cfg.baseline}' has no answer file", field="judge.baseline",
                        hint=f"Available: {', '.join(answers)}.")
    if cfg.mode == "pairwise" and len(answers) < 2:
        raise UserError("pairwise mode needs at least two models", field="judge.models")
    missing: dict[str, int] = {}
    planner = plan_single if cfg.mode == "single" else plan_pairwise
    items = planner(questions, answers, prompts, cfg, missing)
    for m, k in missing.items():
        log.warning("model %s has no answer for %d question(s): those are not judged", m, k)
    if not items:
        raise UserError("nothing to judge: no question has an answer from the selected models",
                        field="judge.questions", hint="Check that the answers were generated for this question set.")
    return items, list(answers), missing


def judge_config(cfg: JudgeConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Judge with a resolved `JudgeConfig` into ``out_dir`` (see module doc); returns ``out_dir``."""
    from ja_instruct.judge.backends import make_backend
    from ja_instruct.judge.engine import execute
    from ja_instruct.judge.store import JudgmentStore
    from ja_instruct.judge.summary import build_summary

    out = Path(out_dir)
    items, models, missing = plan(cfg)
    order = list(items)
    random.Random(cfg.seed).shuffle(order)  # spread the models over the run (a partial run is balanced)
    backend = make_backend(cfg.backend)
    concurrency = 1 if cfg.backend.backend == "hf" else cfg.backend.concurrency
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    with JudgmentStore(cfg.cache or out / "cache.jsonl") as store:
        stats = execute(order, backend, store, concurrency, cfg.backend.parse_retries, cfg.retry_parse_errors,
                        progress)
        records = [store.get(it.key) for it in items if it.key in store]
    write_jsonl(out / "judgments.jsonl", records)
    b = cfg.backend
    usage_all = {k: sum(r.get("usage", {}).get(k, 0) for r in records) for k in ("prompt_tokens", "completion_tokens")}

    def cost(u: dict) -> float | None:
        if b.price_prompt_per_1k is None and b.price_completion_per_1k is None:
            return None
        return (u["prompt_tokens"] * (b.price_prompt_per_1k or 0) + u["completion_tokens"] * (b.price_completion_per_1k or 0)) / 1000

    run_usage = {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens}
    run = {"items": stats.items, "cached": stats.cached, "judged": stats.judged, "calls": stats.calls,
           "http_calls": getattr(backend, "calls", stats.calls), "http_retries": getattr(backend, "retries", 0),
           "parse_retries": stats.parse_retries, "parse_errors": stats.parse_errors, "failed": stats.failed,
           "seconds": round(stats.seconds, 3), "usage": run_usage, "cost": cost(run_usage)}
    extra = {"backend": b.backend, "run": run, "usage_total": usage_all, "cost_total": cost(usage_all),
             "missing_answers": missing, "repeats": cfg.repeats, "failed": stats.failed}
    summary = build_summary(records, cfg.mode, models, judge=b.model, question_set=str(cfg.questions),
                            answers_dir=str(cfg.answers_dir), bootstrap=cfg.bootstrap, seed=cfg.seed, extra=extra)
    write_json(out / "summary.json", summary)
    bt = (summary.get("pairwise") or {}).get("bt") or {}
    for m, blk in sorted(summary["models"].items(), key=lambda kv: -(kv[1]["mean"] or 0)):
        rating = bt.get(m, {}).get("rating")
        log.info("  %-32s %s %s  n=%d  parse errors=%d%s", m, blk.get("metric", "score"),
                 f"{blk['mean']:.3f}" if blk["mean"] is not None else "-", blk["n"], blk["parse_errors"],
                 f"  BT {rating:.0f}" if rating is not None else "")
    log.info("judged %d new, %d cached, %d parse errors, %d failed; %d+%d tokens%s -> %s", stats.judged,
             stats.cached, summary["parse_errors"], stats.failed, stats.prompt_tokens, stats.completion_tokens,
             f", cost {run['cost']:.4f}" if run["cost"] is not None else "", out)
    if stats.failed:
        raise UserError(f"{stats.failed} judgment(s) failed after every retry ({stats.errors[0]})",
                        hint=f"Outputs in {out} cover the rest; re-run the same command to finish (cached ones are skipped).")
    return out


def run_judging(recipe, out_dir: str | Path | None = None, *, judge_prompts: str | Path | None = None,
                repeats: int | None = None, progress: bool = True) -> Path:
    """Judge a recipe's answers; returns the judge folder (default ``<root>/judge``)."""
    cfg = resolve_config(recipe, judge_prompts, repeats)
    return judge_config(cfg, Path(out_dir) if out_dir is not None else recipe.stage_dir("judge"), progress)
