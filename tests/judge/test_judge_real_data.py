"""Real data from ../shared/data: Rakuda questions + 15 models' answers, JA MT-Bench, the prompt files."""

from __future__ import annotations

import json

from ja_instruct.io import read_jsonl
from ja_instruct.judge.run import run_judging
from judge_helpers import write_recipe


def _recipe(tmp_path, judge):
    from ja_instruct.recipe import load_recipe

    return load_recipe(write_recipe(tmp_path / "recipe.yaml", dict(judge, backend={"backend": "fake"})))


def test_rakuda_15_models_single_fake_judge(shared_data, tmp_path):
    r = _recipe(tmp_path, {"questions": str(shared_data / "rakuda/questions.jsonl"),
                           "answers_dir": str(shared_data / "rakuda/answers")})
    out = run_judging(r, tmp_path / "j", progress=False)
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summ["models"]) == 15
    assert all(m["n"] == 40 and set(m["per_category"]) == {"地理", "政治", "歴史", "社会"} for m in summ["models"].values())
    means = [m["mean"] for m in summ["models"].values()]
    assert max(means) - min(means) > 0.5  # plausible variety between models
    assert len(read_jsonl(out / "judgments.jsonl")) == 600


def test_rakuda_pairwise_with_rakuda_prompt(shared_data, tmp_path):
    r = _recipe(tmp_path, {"mode": "pairwise", "questions": str(shared_data / "rakuda/questions.jsonl"),
                           "answers_dir": str(shared_data / "rakuda/answers"), "bootstrap": 20,
                           "models": ["gpt-4-20230713", "claude-2", "rinna-3.6b-sft"],
                           "judge_prompts": str(shared_data / "judge_prompts/rakuda_judge_prompts.jsonl")})
    out = run_judging(r, tmp_path / "j", progress=False)
    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == 3 * 40 * 2 and all(r["prompt"].startswith("pair-ja@fc-") for r in recs)
    assert all(r["text"].strip().splitlines()[-1] in ("1", "2", "3") for r in recs)
    pw = json.loads((out / "summary.json").read_text(encoding="utf-8"))["pairwise"]
    assert pw["pairs_judged"] == 120 and set(pw["bt"]) == {"gpt-4-20230713", "claude-2", "rinna-3.6b-sft"}


def test_ja_mt_bench_two_turns_with_references_and_fastchat_prompts(shared_data, tmp_path):
    d = shared_data / "ja_mt_bench"
    r = _recipe(tmp_path, {"questions": str(d / "question.jsonl"), "answers_dir": str(d / "model_answer"),
                           "reference_answers": str(d / "reference_answer/gpt-4.jsonl"), "models": ["gpt-4"],
                           "judge_prompts": str(shared_data / "judge_prompts/fastchat_judge_prompts.jsonl")})
    out = run_judging(r, tmp_path / "j", progress=False)
    recs = read_jsonl(out / "judgments.jsonl")
    assert {r["turn"] for r in recs} == {1, 2}
    prompts = {(r["category"], r["turn"]): r["prompt"].split("@")[0] for r in recs}
    assert prompts[("reasoning", 1)] == "single-math-v1" and prompts[("reasoning", 2)] == "single-math-v1-multi-turn"
    assert prompts[("writing", 1)] == "single-v1" and prompts[("writing", 2)] == "single-v1-multi-turn"
    assert all(r["status"] == "ok" and r["text"].endswith("]]") and "Rating: [[" in r["text"] for r in recs)
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert set(summ["models"]["gpt-4"]["per_turn"]) == {"1", "2"}


def test_ja_mt_bench_prompt_file_turn_one(shared_data, tmp_path):
    d = shared_data / "ja_mt_bench"
    r = _recipe(tmp_path, {"questions": str(d / "question.jsonl"), "answers_dir": str(d / "model_answer"),
                           "reference_answers": str(d / "reference_answer/gpt-4.jsonl"), "models": ["gpt-4o"],
                           "turns": [1], "limit": 20,
                           "judge_prompts": str(shared_data / "judge_prompts/ja_mt_bench_judge_prompts.jsonl")})
    recs = read_jsonl(run_judging(r, tmp_path / "j", progress=False) / "judgments.jsonl")
    assert len(recs) == 20 and all("評価：[[" in r["text"] and r["status"] == "ok" for r in recs)
