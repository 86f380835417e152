"""Judging the sampled answers with the judge stage itself (`ja_instruct.judge.run.judge_config`).

The pairs stage hands the judge stage a resolved `JudgeConfig` whose inputs are its own files,
and reads back ``judgments.jsonl``; nothing of the judging (backends, retries, rate limits, the
append-only cache, the language guard, hidden-reasoning removal) is done here. So a re-run asks
the judge nothing (every request is in the cache), and a changed prompt or judge asks only for
the requests that changed.

* ``single``: ``<out>/answers/<model id>.jsonl`` holds the k samples of each prompt as
  ``choices``; the judge grades every sample. A sample's score is the mean of its ``ok``
  grades (several with ``repeats`` or a ``panel``); refused and unparsable grades are left out.
* ``pairwise``: the judge compares sample 0 of two MODELS in both orders; so sample i of every
  prompt is written as the answer of pseudo-model ``s<i>`` (``<out>/samples/s<i>.jsonl``) and
  the judge's ``pairwise`` mode compares every pair of them, both orders.

The section comes from ``pairs.judge``, else the recipe's ``judge``; the stage sets
``answers_dir``, ``models``, ``questions`` (``<out>/prompts.jsonl``), and clears what belongs to
a benchmark (``reference_answers``, ``turns``, ``limit``, ``baseline``). Two more are fixed:
``max_error_rate: 1`` (a refused judgment drops its prompt as ``judge_error`` instead of failing
the stage) and ``bootstrap: 0`` (the judge's summary of pseudo-models is not a result).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.io import iter_jsonl, stable_hash, write_jsonl

PROMPTS_FILE = "prompts.jsonl"
ANSWERS_DIR = "answers"
SAMPLES_DIR = "samples"
JUDGE_DIR = "judge"
SAMPLE_PREFIX = "s"
# Keys of the judge's hashed config that are paths inside the pairs folder: not settings.
_PLACES = ("answers_dir", "questions", "models", "cache")


def judge_section(recipe, cfg):
    """The judge section that labels the pairs: ``pairs.judge``, else the recipe's ``judge``."""
    section = cfg.judge if cfg.judge is not None else recipe.judge
    field = "pairs.judge" if cfg.judge is not None else "judge"
    if section is None:
        raise UserError("the pairs stage needs a judge: set pairs.judge, or give the recipe a judge section",
                        field="pairs.judge", hint="e.g. pairs: {judge: {backend: {backend: openai, model: gpt-4o}}}")
    if section.mode == "pairwise-baseline":
        raise UserError("mode must be single or pairwise for pairs (the samples have no baseline)",
                        field=f"{field}.mode", hint="Set pairs.judge with mode single or pairwise.")
    if section.mode == "pairwise" and section.repeats > 1:
        raise UserError("repeats > 1 is not supported in pairwise mode for pairs", field=f"{field}.repeats",
                        hint="Use repeats: 1, or mode single.")
    return section


def resolve_judge(recipe, cfg, out: Path, model_id: str):
    """The `JudgeConfig` the judge stage runs with for ``out`` (see the module doc)."""
    from pydantic import ValidationError

    from ja_instruct.config import validation_to_user_error
    from ja_instruct.judge.config import JudgeConfig

    section = judge_section(recipe, cfg)
    data = section.model_dump()
    single = section.mode == "single"
    data.update(answers_dir=out / (ANSWERS_DIR if single else SAMPLES_DIR),
                models=[model_id] if single else sample_models(cfg.samples),
                questions=str(out / PROMPTS_FILE), reference_answers=None, turns=None, limit=None, baseline=None,
                max_error_rate=1.0, bootstrap=0)
    try:
        return JudgeConfig.model_validate(data)
    except ValidationError as err:
        raise validation_to_user_error(err, JudgeConfig, None) from None


def sample_models(k: int) -> list[str]:
    """The pseudo-model ids of the k samples in pairwise mode."""
    return [f"{SAMPLE_PREFIX}{i}" for i in range(k)]


def hashed_judge(jcfg) -> dict:
    """The judge's settings as the pairs manifest hashes them: the judge stage's own hashed config
    without the stage's paths, endpoints hashed (a URL may carry credentials)."""
    from ja_instruct.judge.run import hashed_config

    data = {k: v for k, v in hashed_config(jcfg).items() if k not in _PLACES}
    for b in [data["backend"], *data.get("panel", [])]:
        if b.get("base_url"):
            b["base_url"] = stable_hash(b["base_url"])
    return data


def judge_inputs(jcfg) -> dict[str, str]:
    """The judge's inputs its config does not show: prompt files' contents, the endpoint really
    called, a local judge's files (`ja_instruct.judge.run.stage_inputs`, without the answers and
    prompts, which are this stage's own). Needs the stage's files in place (`UserError` if not)."""
    from ja_instruct.judge.run import stage_inputs

    return {f"judge:{k}": v for k, v in stage_inputs(jcfg).items()
            if not k.startswith("answers:") and k not in ("questions", "references")}


def read_answers(path: Path, k: int) -> dict[str, tuple[list[str], list[bool]]]:
    """``{question id: ([sample texts], [truncated?])}`` from the generate stage's answer file."""
    from ja_instruct.generate.health import choice_health

    out = {}
    for _, rec in iter_jsonl(path, allow_empty=True):
        texts, cut = [], []
        for i, c in enumerate(rec["choices"][:k]):
            health = choice_health(rec, i)
            texts.append(c["turns"][0])
            cut.append(bool(health and health[0].get("truncated")))
        out[str(rec["question_id"])] = (texts, cut)
    return out


def write_sample_files(answers: dict[str, tuple[list[str], list[bool]]], order: list, folder: Path, k: int) -> None:
    """Sample i of every prompt as the answer file of pseudo-model ``s<i>``, in prompt order (the
    same answers make byte-identical files, so the judge sees unchanged inputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for i, model in enumerate(sample_models(k)):
        recs = [{"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model,
                 "choices": [{"index": 0, "turns": [answers[str(qid)][0][i]]}]}
                for qid in order if str(qid) in answers]
        write_jsonl(folder / f"{model}.jsonl", recs)
        wanted.add(f"{model}.jsonl")
    for stale in folder.glob("*.jsonl"):  # samples of a larger k: never judged again
        if stale.name not in wanted:
            stale.unlink()


def run_judge(jcfg, out: Path) -> dict:
    """Bring the judgments up to date; ``{"items", "now", "from_cache"}`` of this call."""
    from ja_instruct.judge.run import judge_config
    from ja_instruct.manifest import read_manifest

    folder = out / JUDGE_DIR
    before = read_manifest(folder, "judge")
    judge_config(jcfg, folder)
    after = read_manifest(folder, "judge")
    if before is not None and after is not None and before.created == after.created \
            and before.fingerprint == after.fingerprint:  # up to date: nothing was asked
        items = after.details.get("counts", {}).get("items", 0)
        return {"items": items, "now": 0, "from_cache": items}
    run = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("run", {})
    return {"items": run.get("items", 0), "now": run.get("judged", 0), "from_cache": run.get("cached", 0)}


def read_judgments(out: Path) -> list[dict]:
    return [rec for _, rec in iter_jsonl(out / JUDGE_DIR / "judgments.jsonl", allow_empty=True)]


def single_scores(records: list[dict], model_id: str, k: int) -> dict[str, list[float | None]]:
    """``{question id: [score of sample i or None]}``: the mean of each sample's ``ok`` grades of
    turn 1 (every judge of a panel, every repeat)."""
    grades: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(k)])
    for r in records:
        if r.get("mode") != "single" or r.get("model") != model_id or int(r.get("turn") or 1) != 1:
            continue
        i = int(r.get("sample") or 0)
        slot = grades[str(r["question_id"])]
        if r.get("status") == "ok" and r.get("score") is not None and i < k:
            slot[i].append(float(r["score"]))
    return {q: [sum(g) / len(g) if g else None for g in by_sample] for q, by_sample in grades.items()}


def pairwise_verdicts(records: list[dict], k: int) -> dict[str, dict[tuple[int, int], tuple[str | None, str | None]]]:
    """``{question id: {(i, j): (verdict with i shown first, with j shown first)}}`` for i < j,
    verdicts mapped so that "A" means sample i won; None: refused, unparsable or missing."""
    index = {m: i for i, m in enumerate(sample_models(k))}
    out: dict[str, dict[tuple[int, int], list]] = defaultdict(dict)
    for r in records:
        if r.get("mode") != "pairwise" or int(r.get("turn") or 1) != 1:
            continue
        a, b = index.get(r.get("model_a")), index.get(r.get("model_b"))
        if a is None or b is None:
            continue
        v = r.get("verdict") if r.get("status") == "ok" else None
        i_first = r.get("order", "AB") == "AB"  # the record's model_a was shown first
        i, j = min(a, b), max(a, b)
        if a > b:  # the record's model_a is our j: map its verdict and order to our (i, j)
            v = {"A": "B", "B": "A"}.get(v, v)
            i_first = not i_first
        slot = out[str(r["question_id"])].setdefault((i, j), [None, None])
        slot[0 if i_first else 1] = v
    return {q: {pair: tuple(v) for pair, v in by.items()} for q, by in out.items()}
