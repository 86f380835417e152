"""`run_judging`: the judge stage's entry point (used by the CLI and `ja-instruct run`).

Reads the question set and the answer files, plans every judgment (all inputs and
prompts are checked before the first call), judges what the cache lacks, and writes::

    <out>/cache.jsonl        append-only judgment store (the cache; resumable, shareable)
    <out>/judgments.jsonl    one record per judged item (format: docs/judge.md)
    <out>/summary.json       per-model statistics, pairwise matrix + BT ratings, usage, cost
    <out>/config.yaml        the resolved judge config (answers_dir and questions resolved)
    <out>/manifest.json      written LAST: the config hash and the fingerprints of the answer
                             files, the question set and the prompts (`ja_instruct.manifest`)

With ``judge.panel`` every judge (``backend`` first, then the panel) grades the same items,
each with its own backend, into the same store (keys hold the judge) and judgments.jsonl
(``judge`` names it). The language guard (``judge.language_guard``; null = ``floor`` here) is
applied to each record after its judgment, so changing it re-uses every cached judgment.

A run whose manifest matches what it would write now does nothing at all (no model, no
file written) and logs ``judge: up to date``; otherwise it logs why it runs, removes the
manifest, judges only what the cache lacks and logs how many judgments were new vs cached.
The manifest is not written when some items failed (the next run finishes them) or when
more than ``max_error_rate`` of the items were refused (the exit code says so).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from ja_instruct.config import save_config
from ja_instruct.errors import UserError
from ja_instruct.io import write_json, write_jsonl
from ja_instruct.judge.config import EXECUTION_FIELDS, JudgeConfig

log = logging.getLogger(__name__)

STAGE = "judge"
# Settings that change how the work is done, never its result: left out of the manifest's
# config hash so that, e.g., a lower concurrency does not redo an up-to-date stage.
# retry_* are handled apart: they re-run the stage only when the manifest records such items.
_RUN_ONLY = {"retry_parse_errors", "retry_errors"}
_RUN_ONLY_BACKEND = EXECUTION_FIELDS


def resolve_config(recipe, judge_prompts: str | Path | None = None, repeats: int | None = None,
                   retry_errors: bool | None = None) -> JudgeConfig:
    """The recipe's judge section with CLI options and defaults from other sections filled in
    (answers from the generate stage's folder, questions from ``generate.questions``)."""
    from pydantic import ValidationError

    from ja_instruct.config import validation_to_user_error

    cfg = recipe.require("judge")
    data = cfg.model_dump()
    if judge_prompts is not None:
        data["judge_prompts"] = Path(judge_prompts)
    if repeats is not None:
        data["repeats"] = repeats
    if retry_errors is not None:
        data["retry_errors"] = retry_errors
    gen = getattr(recipe, "generate", None)
    if data["answers_dir"] is None:
        data["answers_dir"] = recipe.stage_dir("generate")
        if data["models"] is None and gen is not None:
            # this recipe's answers: exactly its generate models. An answer file left behind by a
            # model since removed or renamed in the recipe is stale and must not be judged.
            data["models"] = [m.id for m in gen.models]
    if data["questions"] is None:
        if gen is None or not getattr(gen, "questions", None):
            raise UserError("no question set: the judge section has no 'questions' and the recipe no 'generate'",
                            field="judge.questions", hint="Set judge.questions to a question JSONL or hub id.")
        data["questions"] = gen.questions
        if data.get("limit") is None and getattr(gen, "limit", None) is not None:
            data["limit"] = gen.limit  # the questions that were answered, not "24 have no answer"
        if data["reference_answers"] is None and getattr(gen, "reference_answers", None):
            data["reference_answers"] = Path(gen.reference_answers)
    try:
        return JudgeConfig.model_validate(data)
    except ValidationError as err:
        raise validation_to_user_error(err, JudgeConfig, None) from None


def _requested_models(cfg: JudgeConfig) -> list[str] | None:
    models = cfg.models
    if cfg.mode == "pairwise-baseline" and models is not None and cfg.baseline not in models:
        models = list(models) + [cfg.baseline]
    return models


def stage_inputs(cfg: JudgeConfig) -> dict[str, str]:
    """Content fingerprints of what the judgments are made from: every judged answer file
    (``answers:<model>``), the question set (``questions``; ``references``), the prompts in
    use (``prompt:<name>`` for ours, ``judge_prompts`` for a FastChat file) and a local hf
    judge model's files. Cheap: small files are hashed, nothing is parsed or loaded."""
    from ja_instruct.config import resolve_path
    from ja_instruct.io import stable_hash
    from ja_instruct.judge import prompt as prompt_mod
    from ja_instruct.judge.inputs import answer_files
    from ja_instruct.manifest import file_fingerprint

    def fingerprint(path: Path) -> str:
        return file_fingerprint(path) if path.exists() else "missing"

    inputs = {f"answers:{m}": file_fingerprint(p)
              for m, p in answer_files(Path(cfg.answers_dir), _requested_models(cfg)).items()}
    qpath = resolve_path(cfg.questions)
    if qpath.exists():
        inputs["questions"] = file_fingerprint(qpath)
    else:  # a hub id: the content as loaded (from the local datasets cache when offline)
        from ja_instruct.judge.inputs import load_question_set

        qs = load_question_set(cfg.questions)
        inputs["questions"] = stable_hash([[q.question_id, q.category, q.turns, q.reference]
                                           + ([q.eval_aspect] if getattr(q, "eval_aspect", None) else [])
                                           for q in qs])
    if cfg.reference_answers is not None:
        inputs["references"] = fingerprint(resolve_path(cfg.reference_answers))
    if cfg.judge_prompts is not None:
        inputs["judge_prompts"] = fingerprint(resolve_path(cfg.judge_prompts))
    else:
        family = cfg.prompt or ("single-ja" if cfg.mode == "single" else "pair-ja")
        families = [family]
        if cfg.mode == "single" and cfg.prompt is None:  # picked per question (eval_aspect); not parsed here
            families.append(prompt_mod.ASPECT_FAMILY)
        for fam in families:
            for suffix in ("", "-ref", "-multi", "-ref-multi"):
                path = prompt_mod.PROMPTS_DIR / f"{fam}{suffix}.yaml"
                if path.is_file():
                    inputs[f"prompt:{fam}{suffix}"] = file_fingerprint(path)
    from ja_instruct.judge.backends import judge_inputs

    for i, b in enumerate(judge_backends(cfg)):
        judge = judge_inputs(b)  # the endpoint really called, a local judge's files
        tag = "" if i == 0 else f":{b.model}"  # the main judge keeps the names of one-judge runs
        if "endpoint" in judge:
            inputs[f"endpoint{tag}"] = judge["endpoint"]
        if "model_files" in judge:
            inputs[f"judge_model{tag}"] = judge["model_files"]
    return inputs


def judge_backends(cfg: JudgeConfig) -> list:
    """Every judge of the run: ``backend``, then the panel's (their model ids differ, which
    `JudgeConfig` checks: the records' ``judge`` field tells them apart)."""
    return [cfg.backend, *cfg.panel]


def hashed_config(cfg: JudgeConfig) -> dict:
    """The resolved config the manifest hashes (no secrets in it: only the key's variable NAME)."""
    data = cfg.model_dump(mode="json")
    for k in _RUN_ONLY:
        data.pop(k, None)
    for b in [data["backend"], *data.get("panel", [])]:
        for k in _RUN_ONLY_BACKEND:
            b.pop(k, None)
    return data


def plan(cfg: JudgeConfig):
    """(items, models, missing answers per model) for a resolved config; no calls made."""
    from ja_instruct.judge.inputs import load_all_samples, load_question_set
    from ja_instruct.judge.pairwise import plan_pairwise
    from ja_instruct.judge.prompt import PromptSet
    from ja_instruct.judge.single import plan_single

    if cfg.judge_prompts is not None and cfg.prompt is not None:
        raise UserError("set either judge.prompt (our prompts) or judge.judge_prompts (a FastChat file), not both",
                        field="judge.prompt")
    judges = judge_backends(cfg)
    prompts = PromptSet(cfg.prompt, cfg.judge_prompts, cfg.judge_prompt_names)
    questions = load_question_set(cfg.questions, cfg.reference_answers, cfg.limit)
    answers = load_all_samples(Path(cfg.answers_dir), _requested_models(cfg))
    if cfg.mode == "pairwise-baseline" and cfg.baseline not in answers:
        raise UserError(f"baseline '{cfg.baseline}' has no answer file", field="judge.baseline",
                        hint=f"Available: {', '.join(answers)}.")
    if cfg.mode == "pairwise" and len(answers) < 2:
        raise UserError("pairwise mode needs at least two models", field="judge.models")
    missing: dict[str, int] = {}
    if cfg.mode == "single":
        items = []
        for b in judges:
            mine: dict[str, int] = {}
            items += plan_single(questions, answers, prompts, cfg, mine, backend=b)
        missing.update(mine)  # the same for every judge
    else:
        items = plan_pairwise(questions, answers, prompts, cfg, missing)
    for m, k in missing.items():
        log.warning("model %s has no answer for %d question(s): those are not judged", m, k)
    if not items:
        raise UserError("nothing to judge: no question has an answer from the selected models",
                        field="judge.questions", hint="Check that the answers were generated for this question set.")
    return items, list(answers), missing


def _why_run(cfg: JudgeConfig, out: Path, inputs: dict[str, str]) -> list[str]:
    """[] when the manifest in ``out`` matches; else the reasons to run."""
    from ja_instruct.manifest import input_changes, read_manifest

    old = read_manifest(out, STAGE)
    reasons = input_changes(old, inputs, hashed_config(cfg))
    if old is not None:  # a deleted output is not up to date, whatever the manifest says
        reasons += [f"output {name} missing" for name in old.outputs.values() if not (out / name).is_file()]
    if not reasons and old is not None:
        counts = old.details.get("counts", {})
        if cfg.retry_errors and counts.get("errors"):
            reasons.append(f"retrying {counts['errors']} refused judgment(s) (retry_errors)")
        if cfg.retry_parse_errors and counts.get("parse_errors"):
            reasons.append(f"retrying {counts['parse_errors']} parse error(s) (retry_parse_errors)")
    return reasons


def judge_config(cfg: JudgeConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Judge with a resolved `JudgeConfig` into ``out_dir`` (see module doc); returns ``out_dir``."""
    from ja_instruct.manifest import make_manifest, remove_manifest, write_manifest

    out = Path(out_dir)
    inputs = stage_inputs(cfg)
    reasons = _why_run(cfg, out, inputs)
    if not reasons:
        log.info("judge: up to date (%s)", out)
        return out
    log.info("judge: running: %s", "; ".join(reasons))
    items, models, missing = plan(cfg)
    out.mkdir(parents=True, exist_ok=True)
    remove_manifest(out)  # from here on the folder is incomplete until the new manifest lands
    from ja_instruct.judge.backends import public_judge_config

    save_config(public_judge_config(cfg), out)
    records, stats, summary = _judge_and_summarise(cfg, out, items, models, missing, progress)
    counts = {"items": len(items), "judged": stats.judged, "cached": stats.cached,
              "errors": sum(r.get("status") == "error" for r in records),
              "parse_errors": sum(r.get("status") == "parse_error" for r in records), "failed": stats.failed}
    log.info("judge: %d judged now, %d from the cache (%d of them by another run), %d parse errors, "
             "%d refused, %d failed -> %s", stats.judged, stats.cached, stats.waited, counts["parse_errors"],
             counts["errors"], stats.failed, out)
    problems, hints = [], [f"Outputs in {out} cover the rest."]
    if stats.failed:
        problems.append(f"{stats.failed} judgment(s) failed after every retry ({stats.errors[0]})")
        hints.append("Re-run the same command to finish them (stored judgments are not asked again).")
    rate = counts["errors"] / len(items)
    if rate > cfg.max_error_rate:
        first = next(r["error"] for r in records if r.get("status") == "error")
        problems.append(f"{counts['errors']} of {len(items)} judgment(s) ({rate:.1%}) were refused by the judge "
                        f"endpoint (status 'error' in judgments.jsonl; first: {first}), above "
                        f"judge.max_error_rate={cfg.max_error_rate:g}")
        hints.append("Fix the cause (e.g. shorter answers, a judge with a longer context), then re-run with "
                     "--retry-errors to ask again for the refused items, or raise judge.max_error_rate to "
                     "accept them.")
    if problems:
        raise UserError("; ".join(problems), hint=" ".join(hints))
    write_manifest(out, make_manifest(STAGE, hashed_config(cfg), inputs,
                                      outputs={"judgments": "judgments.jsonl", "summary": "summary.json",
                                               "config": "config.yaml"},
                                      details={"counts": counts, "models": models}))
    return out


def _merge(total, part) -> None:
    """Add one judge's `RunStats` into ``total``."""
    from dataclasses import fields

    for f in fields(total):
        setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))


def _cost(b, u: dict) -> float | None:
    if b.price_prompt_per_1k is None and b.price_completion_per_1k is None:
        return None
    return (u["prompt_tokens"] * (b.price_prompt_per_1k or 0)
            + u["completion_tokens"] * (b.price_completion_per_1k or 0)) / 1000


def _costs(pairs) -> float | None:
    """Total of the (judge config, usage) costs; None when no judge has a price."""
    costs = [c for c in (_cost(b, u) for b, u in pairs) if c is not None]
    return sum(costs) if costs else None


def _judge_and_summarise(cfg: JudgeConfig, out: Path, items, models, missing, progress: bool):
    """Judge what the cache lacks (each judge of a panel with its own backend), write
    judgments.jsonl and summary.json; (records, stats, summary)."""
    from ja_instruct.judge.backends import make_backend
    from ja_instruct.judge.engine import RunStats, execute, item_record
    from ja_instruct.judge.single import apply_language_guard
    from ja_instruct.judge.store import JudgmentStore
    from ja_instruct.judge.summary import build_summary

    order = list(items)
    random.Random(cfg.seed).shuffle(order)  # spread the models over the run (a partial run is balanced)
    judges = judge_backends(cfg)
    guard = cfg.language_guard or "floor"
    stats, http_calls, http_retries, run_usage = RunStats(), 0, 0, []
    with JudgmentStore(cfg.cache or out / "cache.jsonl") as store:
        for b in judges:
            backend = make_backend(b)
            concurrency = 1 if b.backend == "hf" else b.concurrency
            st = execute([it for it in order if it.record["judge"] == b.model], backend, store, concurrency,
                         b.parse_retries, cfg.retry_parse_errors, progress, retry_errors=cfg.retry_errors)
            _merge(stats, st)
            http_calls += getattr(backend, "calls", st.calls)
            http_retries += getattr(backend, "retries", 0)
            run_usage.append((b, {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.completion_tokens}))
        records = [apply_language_guard(item_record(it, store.get(it.key)), guard)
                   for it in items if it.key in store]
    write_jsonl(out / "judgments.jsonl", records)

    def usage(recs: list[dict]) -> dict:
        return {k: sum(r.get("usage", {}).get(k, 0) for r in recs) for k in ("prompt_tokens", "completion_tokens")}

    usage_all = usage(records)
    total = {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens}
    run = {"items": stats.items, "cached": stats.cached, "judged": stats.judged, "calls": stats.calls,
           "http_calls": http_calls, "http_retries": http_retries,
           "parse_retries": stats.parse_retries, "parse_errors": stats.parse_errors, "errors": stats.refused,
           "failed": stats.failed, "seconds": round(stats.seconds, 3), "usage": total, "cost": _costs(run_usage)}
    b = cfg.backend
    extra = {"backend": b.backend, "run": run, "usage_total": usage_all,
             "cost_total": _costs((j, usage([r for r in records if r.get("judge") == j.model])) for j in judges),
             "missing_answers": missing, "repeats": cfg.repeats, "failed": stats.failed, "language_guard": guard}
    summary = build_summary(records, cfg.mode, models, judge=b.model, question_set=str(cfg.questions),
                            answers_dir=str(cfg.answers_dir), bootstrap=cfg.bootstrap, seed=cfg.seed, extra=extra,
                            judges=[j.model for j in judges], baseline=cfg.baseline)
    write_json(out / "summary.json", summary)
    bt = (summary.get("pairwise") or {}).get("bt") or {}
    for m, blk in sorted(summary["models"].items(), key=lambda kv: -(kv[1]["mean"] or 0)):
        rating = bt.get(m, {}).get("rating")
        log.info("  %-32s %s %s  n=%d  parse errors=%d  refused=%d%s", m, blk.get("metric", "score"),
                 f"{blk['mean']:.3f}" if blk["mean"] is not None else "-", blk["n"], blk["parse_errors"],
                 blk.get("errors", 0), f"  BT {rating:.0f}" if rating is not None else "")
    log.info("judge: %d+%d tokens this run%s", stats.prompt_tokens, stats.completion_tokens,
             f", cost {run['cost']:.4f}" if run["cost"] is not None else "")
    return records, stats, summary


def run_judging(recipe, out_dir: str | Path | None = None, *, judge_prompts: str | Path | None = None,
                repeats: int | None = None, progress: bool = True, retry_errors: bool | None = None) -> Path:
    """Judge a recipe's answers (default: the generate stage's folder) into ``out_dir`` (default:
    the judge stage's folder of the run layout; an explicit one is registered there so later
    stages find it); returns the judge folder. Does nothing when its manifest is up to date."""
    cfg = resolve_config(recipe, judge_prompts, repeats, retry_errors)
    if out_dir is not None:
        out = Path(out_dir)
        recipe.layout.register(STAGE, out)
    else:
        out = recipe.stage_dir(STAGE)
    return judge_config(cfg, out, progress)
