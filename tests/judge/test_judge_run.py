"""The judge stage end to end with the fake backend: modes, outputs, cache, repeats, parse errors, CLI."""

from __future__ import annotations

import json

import pytest

from ja_instruct.errors import UserError
from ja_instruct.io import read_jsonl
from ja_instruct.judge.run import run_judging

JUDGMENT_KEYS = {"mode", "question_id", "category", "turn", "model", "model_a", "model_b", "judge", "prompt",
                 "score", "verdict", "status", "text", "repeat", "key", "usage"}


def _load(out):
    return read_jsonl(out / "judgments.jsonl"), json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_single_mode_outputs(make_recipe, tmp_path):
    out = run_judging(make_recipe(), tmp_path / "j", progress=False)
    recs, summ = _load(out)
    # 3 models x (q1, q2: 1 turn; 3, 4: 2 turns) = 18 judgments
    assert len(recs) == 18 and len({r["key"] for r in recs}) == 18
    assert all(JUDGMENT_KEYS <= set(r) for r in recs)
    assert all(1 <= r["score"] <= 10 and r["status"] == "ok" for r in recs)
    by = {(r["model"], str(r["question_id"]), r["turn"]): r for r in recs}
    assert by[("model-a", "3", 1)]["prompt"] == "single-ja-ref@2"  # math has a reference
    assert by[("model-a", "3", 2)]["prompt"] == "single-ja-multi@2"
    assert by[("model-a", "4", 1)]["prompt"] == "single-ja@2"
    assert by[("model-c", "q2", 1)]["score"] == 1.0  # empty answer
    assert summ["mode"] == "single" and summ["pairwise"] is None
    m = summ["models"]["model-a"]
    assert m["n"] == 6 and m["parse_errors"] == 0 and set(m["per_turn"]) == {"1", "2"}
    assert set(m["per_category"]) == {"地理", "歴史", "math", "writing"}
    assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]
    assert summ["answers_dir"] and summ["questions"]
    assert (out / "config.yaml").is_file()
    assert summ["run"]["judged"] == 18 and summ["run"]["calls"] == 18


def _snapshot(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_unchanged_rerun_does_nothing_and_cache_hits_make_no_calls(make_recipe, tmp_path, caplog, monkeypatch):
    import logging

    from ja_instruct.judge import backends

    recipe = make_recipe()
    out = run_judging(recipe, tmp_path / "j", progress=False)
    assert (out / "manifest.json").is_file()
    first = (out / "judgments.jsonl").read_text(encoding="utf-8")
    before = _snapshot(out)

    def no_backend(cfg):
        raise AssertionError("an up-to-date judge stage must not create a backend (or load a model)")

    with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger="ja_instruct.judge.run"):
        m.setattr(backends, "make_backend", no_backend)
        run_judging(recipe, tmp_path / "j", progress=False)
    assert "judge: up to date" in caplog.text
    assert _snapshot(out) == before  # nothing rewritten, nothing created (no lock file either)

    # without the manifest (e.g. the run was killed after judging), the cache answers everything
    (out / "manifest.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ja_instruct.judge.run"):
        run_judging(recipe, tmp_path / "j", progress=False)
    assert "no complete output yet" in caplog.text
    recs, summ = _load(out)
    assert summ["run"]["calls"] == 0 and summ["run"]["cached"] == 18
    assert (out / "judgments.jsonl").read_text(encoding="utf-8") == first
    assert len(read_jsonl(out / "cache.jsonl")) == 18  # nothing appended twice
    assert (out / "manifest.json").is_file()


def test_parse_errors_are_stored_counted_and_not_averaged(make_recipe, unparseable_judge, tmp_path):
    unparseable_judge(1.0)
    recipe = make_recipe(backend={"backend": "fake", "parse_retries": 2})
    out = run_judging(recipe, tmp_path / "j", progress=False)
    recs, summ = _load(out)
    assert len(recs) == 18 and all(r["status"] == "parse_error" and r["score"] is None for r in recs)
    assert all(r["text"] and r["attempts"] == 3 for r in recs)
    assert summ["parse_errors"] == 18 and summ["models"]["model-a"]["parse_errors"] == 6
    assert summ["models"]["model-a"]["n"] == 0 and summ["models"]["model-a"]["mean"] is None
    assert summ["run"]["calls"] == 54 and summ["run"]["parse_retries"] == 36


def test_partial_parse_errors_and_retry_on_rerun(make_recipe, unparseable_judge, tmp_path):
    unparseable_judge(0.5)
    recipe = make_recipe(backend={"backend": "fake", "parse_retries": 0})
    out = run_judging(recipe, tmp_path / "j", progress=False)
    recs, summ = _load(out)
    bad = [r for r in recs if r["status"] == "parse_error"]
    assert 0 < len(bad) < 18
    m = summ["models"]
    assert sum(b["parse_errors"] for b in m.values()) == len(bad)
    assert sum(b["n"] for b in m.values()) == 18 - len(bad)
    # a re-run with retry_parse_errors judges only those again (the fake answers differently now? no:
    # same attempt index -> same outcome), so the count of calls equals the number of parse errors
    recipe2 = make_recipe(backend={"backend": "fake", "parse_retries": 0}, retry_parse_errors=True)
    run_judging(recipe2, tmp_path / "j", progress=False)
    _, summ2 = _load(out)
    assert summ2["run"]["calls"] == len(bad) and summ2["run"]["cached"] == 18 - len(bad)


def test_repeats_report_spread(make_recipe, tmp_path):
    with pytest.raises(UserError, match="temperature"):
        make_recipe(repeats=3)
    recipe = make_recipe(backend={"backend": "fake", "temperature": 0.7})
    out = run_judging(recipe, tmp_path / "j", repeats=3, progress=False)
    recs, summ = _load(out)
    assert len(recs) == 54 and {r["repeat"] for r in recs} == {0, 1, 2}
    assert summ["repeats"] == 3
    assert summ["models"]["model-b"]["repeat_std"] is not None and summ["models"]["model-b"]["repeat_std"] > 0


def test_pairwise_both_orders_and_summary(make_recipe, tmp_path):
    out = run_judging(make_recipe(mode="pairwise", bootstrap=10), tmp_path / "j", progress=False)
    recs, summ = _load(out)
    # 3 pairs x 6 (question, turn) x 2 orders
    assert len(recs) == 36 and {r["order"] for r in recs} == {"AB", "BA"}
    assert all(r["model"] is None and r["verdict"] in ("A", "B", "tie") for r in recs)
    pw = summ["pairwise"]
    assert pw["models"] == ["model-a", "model-b", "model-c"]
    n = len(pw["models"])
    for i in range(n):
        for j in range(n):
            assert pw["wins"][i][j] == pw["losses"][j][i]
            assert pw["ties"][i][j] == pw["ties"][j][i]
    assert sum(map(sum, pw["wins"])) + sum(map(sum, pw["ties"])) // 2 == 18
    assert set(pw["bt"]) == set(pw["models"])
    assert abs(sum(v["rating"] for v in pw["bt"].values()) / n - 1000) < 1e-6
    assert 0 <= pw["inconsistency"] <= 1 and -1 <= pw["position_bias"] <= 1
    assert summ["models"]["model-a"]["metric"] == "win_rate"


def test_pairwise_baseline(make_recipe, tmp_path):
    with pytest.raises(UserError, match="baseline"):
        make_recipe(mode="pairwise-baseline")
    out = run_judging(make_recipe(mode="pairwise-baseline", baseline="model-b", models=["model-a", "model-c"],
                                  bootstrap=0), tmp_path / "j", progress=False)
    recs, summ = _load(out)
    assert {(r["model_a"], r["model_b"]) for r in recs} == {("model-a", "model-b"), ("model-c", "model-b")}
    assert len(recs) == 24


def test_inconsistent_orders_count_as_ties():
    from ja_instruct.stats import combine_orders as combine

    base = {"mode": "pairwise", "question_id": 1, "category": "c", "turn": 1, "model_a": "x", "model_b": "y",
            "repeat": 0, "status": "ok"}
    recs = [dict(base, order="AB", verdict="A"), dict(base, order="BA", verdict="B"),
            dict(base, question_id=2, order="AB", verdict="B"), dict(base, question_id=2, order="BA", verdict="B"),
            dict(base, question_id=3, order="AB", verdict="A"),
            dict(base, question_id=3, order="BA", verdict=None, status="parse_error")]
    out = {c["question_id"]: c for c in combine(recs)}
    assert out[1]["verdict"] == "tie" and out[1]["inconsistent"]
    assert out[2]["verdict"] == "B" and not out[2]["inconsistent"]
    assert out[3]["verdict"] is None


def test_cli_forms_and_user_errors(make_recipe, tmp_path, capsys):
    from ja_instruct.cli import main

    make_recipe()  # writes tmp_path/recipe.yaml
    recipe = str(tmp_path / "recipe.yaml")
    assert main(["judge", recipe, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert main(["judge", "run", recipe, "--out", str(tmp_path / "b"), "--no-progress",
                 "--set", "judge.models=[model-a]"]) == 0
    assert len(read_jsonl(tmp_path / "b" / "judgments.jsonl")) == 6
    assert main(["judge", recipe, "--set", "judge.mood=single"]) == 2
    assert "did you mean 'mode'" in capsys.readouterr().err.lower()
    assert main(["judge", recipe, "--set", "judge.models=[nobody]", "--out", str(tmp_path / "c")]) == 2
    assert "no answer file" in capsys.readouterr().err


def test_non_answer_jsonl_in_answers_dir_is_ignored(make_recipe, judge_inputs, tmp_path):
    from pathlib import Path

    qcopy = Path(judge_inputs["answers_dir"]) / "questions.jsonl"
    qcopy.write_text(Path(judge_inputs["questions"]).read_text(encoding="utf-8"), encoding="utf-8")
    out = run_judging(make_recipe(), tmp_path / "j", progress=False)
    _, summ = _load(out)
    assert set(summ["models"]) == {"model-a", "model-b", "model-c"}


def test_questions_from_generate_keep_its_limit(tmp_path):
    """The judge grades the questions that were answered: generate.limit carries over (else every
    unanswered question of the file is reported as missing)."""
    import yaml

    from ja_instruct.judge.run import resolve_config
    from ja_instruct.recipe import load_recipe

    def recipe(judge: dict):
        p = tmp_path / "r.yaml"
        p.write_text(yaml.safe_dump({"name": "x", "out_dir": str(tmp_path / "run"),
                                     "generate": {"questions": "embedded:questions_ja.jsonl", "limit": 5,
                                                  "models": [{"id": "m", "backend": "fake"}]},
                                     "judge": judge}), encoding="utf-8")
        return load_recipe(p)

    assert resolve_config(recipe({"backend": {"backend": "fake"}})).limit == 5
    assert resolve_config(recipe({"backend": {"backend": "fake"}, "limit": 2})).limit == 2
