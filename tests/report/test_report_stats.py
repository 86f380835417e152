"""The report's numbers: the judge summary's (same functions, same resamples), judge errors, health,
and the report stage's manifest (up to date = no work)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os

import pytest
import yaml

from ja_instruct.report.stats import answer_health, pairwise_stats, single_scores, turn_flags
from report_helpers import write_judge_dir, write_synthetic_run


def _single(model, qid, score, turn=1, cat="地理", status="ok"):
    return {"mode": "single", "question_id": qid, "category": cat, "turn": turn, "model": model,
            "score": score, "status": status}


def test_single_scores_per_category_turn_and_errors():
    recs = [_single("m", "q1", 8), _single("m", "q2", 4, cat="歴史"), _single("m", "q1", 6, turn=2),
            _single("m", "q3", None, status="parse_error"), dict(_single("m", "q4", 1, status="error"), error="x")]
    s = single_scores(recs, n_boot=200, ci=0.95, seed=0)["m"]
    assert s.n == 3 and s.parse_errors == 1 and s.errors == 1
    assert s.mean == 6.0  # neither the parse error nor the refused call (even with a score) is averaged
    assert s.per_category == {"地理": 7.0, "歴史": 4.0} and s.per_category_n == {"地理": 2, "歴史": 1}
    assert s.per_turn == {1: 6.0, 2: 6.0}
    assert s.ci[0] <= s.mean <= s.ci[1]


def test_health_flags_and_shares():
    assert turn_flags({"ja_ratio": 0.1, "repeat_ratio": 0.0}, 0.5, 0.5) == ["non_japanese"]
    assert turn_flags({"ja_ratio": 0.9, "repeat_ratio": 0.7, "truncated": True}, 0.5, 0.5) == ["looping", "truncated"]
    assert turn_flags({"ja_ratio": 0.0, "empty": True}, 0.5, 0.5) == ["empty"]  # empty is not also non-Japanese
    answers = {"q1": {"health": [{"ja_ratio": 0.9}, {"ja_ratio": 0.1}]}, "q2": {"health": [{"ja_ratio": 1.0}]}}
    h = answer_health(answers, 0.5, 0.5)
    assert h["turns"] == 3 and abs(h["non_japanese"] - 1 / 3) < 1e-9 and h["any"] == h["non_japanese"]
    assert answer_health({"q": {"choices": []}}, 0.5, 0.5) is None  # real FastChat answers: no health


def _pair(qid, order, verdict):
    return {"mode": "pairwise", "question_id": qid, "turn": 1, "model_a": "x", "model_b": "y", "order": order,
            "verdict": verdict, "status": "ok", "judge": "j", "repeat": 0}


def test_pairwise_counts_pairs_and_measures_bias():
    recs = []
    for i in range(10):
        recs.append(_pair(f"q{i}", "AB", "A"))  # x shown first and wins
        recs.append(_pair(f"q{i}", "BA", "B" if i < 4 else "A"))  # y shown first: the judge picks y 4 times
    pw = pairwise_stats(recs, n_boot=200, ci=0.95, seed=0)
    assert pw.models == ["x", "y"]
    # pairs, both orders combined: 6 agree on x, 4 disagree (a tie each)
    assert pw.wins[0, 1] == 6 and pw.wins[1, 0] == 0 and pw.ties[0, 1] == 4
    assert pw.inconsistency == pytest.approx(0.4)
    assert pw.position_bias == pytest.approx((14 - 6) / 20)  # signed: 0 = none
    assert pw.ratings["x"] > pw.ratings["y"]
    assert pw.rating_ci["x"][0] <= pw.ratings["x"] <= pw.rating_ci["x"][1]
    assert pw.win_rate[0, 1] == pytest.approx(0.8) and math.isnan(pw.win_rate[0, 0])


def _recipe(root, run: dict, mode: str, **report):
    """A recipe judging the synthetic run's answers (plus a third model) with the fake judge."""
    from ja_instruct.recipe import load_recipe

    mid = run["answers"] / "mid.jsonl"
    if not mid.exists():
        rows = [json.loads(line) for line in (run["answers"] / "tuned.jsonl").read_text(encoding="utf-8").splitlines()]
        for r in rows:
            r["model_id"], r["choices"][0]["turns"] = "mid", ["東京です。", "関東地方にあります。"]
        mid.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    data = {"name": "rs", "out_dir": str(root), "report": {"bootstrap": 500, "seed": 7, **report},
            "judge": {"questions": str(run["questions"]), "answers_dir": str(run["answers"]), "mode": mode,
                      "bootstrap": 150, "seed": 3, "backend": {"backend": "fake"}}}
    path = root.parent / f"recipe-{root.name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_recipe(path)


@pytest.mark.parametrize("mode", ["single", "pairwise"])
def test_report_shows_the_numbers_of_summary_json(tmp_path, mode):
    from ja_instruct.judge.run import run_judging
    from ja_instruct.report import run_report
    from ja_instruct.report.load import load_report_data
    from ja_instruct.report.stats import bootstrap_params

    recipe = _recipe(tmp_path / "run", write_synthetic_run(tmp_path / "inputs"), mode)
    judge = run_judging(recipe, progress=False)
    summ = json.loads((judge / "summary.json").read_text(encoding="utf-8"))
    page = run_report(recipe)
    rows = {r["model"]: r for r in csv.DictReader(open(page.parent / "scores.csv", encoding="utf-8"))}
    data = load_report_data([judge])
    n_boot, seed = bootstrap_params(data.runs, 500, 7)
    assert (n_boot, seed) == (150, 3)  # the judge's own, not the report config's
    if mode == "single":
        scores = single_scores(data.judgments, n_boot, 0.95, seed)
        assert set(scores) == set(summ["models"]) == set(rows)
        for m, blk in summ["models"].items():
            assert (scores[m].mean, list(scores[m].ci)) == (blk["mean"], blk["ci95"])
            assert float(rows[m]["mean"]) == pytest.approx(blk["mean"], abs=1e-4)
            assert float(rows[m]["ci_low"]) == pytest.approx(blk["ci95"][0], abs=1e-4)
            assert float(rows[m]["ci_high"]) == pytest.approx(blk["ci95"][1], abs=1e-4)
    else:
        pw, sp = pairwise_stats(data.judgments, n_boot, 0.95, seed), summ["pairwise"]
        assert set(pw.ratings) == set(sp["bt"]) == {"base", "mid", "tuned"}
        for m, bt in sp["bt"].items():
            assert pw.ratings[m] == bt["rating"] and list(pw.rating_ci[m]) == bt["ci95"]
            assert float(rows[m]["bt_rating"]) == pytest.approx(bt["rating"], abs=1e-4)
            assert float(rows[m]["bt_ci_low"]) == pytest.approx(bt["ci95"][0], abs=1e-4)
            assert float(rows[m]["bt_ci_high"]) == pytest.approx(bt["ci95"][1], abs=1e-4)
        assert (pw.position_bias, pw.inconsistency) == (sp["position_bias"], sp["inconsistency"])
        md = (page.parent / "summary.md").read_text(encoding="utf-8")
        assert f"Position bias {sp['position_bias']:.3f}" in md and f"inconsistency {sp['inconsistency']:.3f}" in md


def test_judge_errors_are_listed_and_never_averaged(tmp_path):
    from ja_instruct.report import build_report

    run = write_synthetic_run(tmp_path / "run")
    judge = write_judge_dir(tmp_path / "errs", run["answers"], run["questions"], ["base", "tuned"],
                            error_every=4)
    page = build_report([judge], tmp_path / "report")
    recs = [json.loads(x) for x in (judge / "judgments.jsonl").read_text(encoding="utf-8").splitlines()]
    refused = [r for r in recs if r["status"] == "error"]
    assert len(refused) == 3
    rows = {r["model"]: r for r in csv.DictReader(open(page.parent / "scores.csv", encoding="utf-8"))}
    for m in ("base", "tuned"):
        ok = [r["score"] for r in recs if r["model"] == m and r["status"] == "ok"]
        assert int(rows[m]["errors"]) == sum(r["model"] == m for r in refused)
        assert int(rows[m]["n"]) == len(ok) and float(rows[m]["mean"]) == pytest.approx(sum(ok) / len(ok), abs=1e-4)
    html = page.read_text(encoding="utf-8")
    assert 'id="judge-errors"' in html and html.count("maximum context length exceeded") == 3
    md = (page.parent / "summary.md").read_text(encoding="utf-8")
    assert "## Judge errors" in md and refused[0]["error"] in md


def test_report_stage_does_nothing_when_up_to_date(tmp_path, caplog):
    from ja_instruct.judge.run import run_judging
    from ja_instruct.manifest import read_manifest
    from ja_instruct.report import run_report

    recipe = _recipe(tmp_path / "run", write_synthetic_run(tmp_path / "inputs"), "single")
    judge = run_judging(recipe, progress=False)
    page = run_report(recipe)
    out = page.parent
    m = read_manifest(out, "report")
    assert m is not None and {k.split(":")[0] for k in m.inputs} >= {"judge", "answers", "questions"}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    caplog.set_level(logging.INFO, logger="ja_instruct.report.build")
    assert run_report(recipe) == page
    assert "report: up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten

    # an answer file changed (the judge folder did not): rebuilt, and the log says why
    caplog.clear()
    ans = next((tmp_path / "inputs" / "answers").glob("base.jsonl"))
    ans.write_text(ans.read_text(encoding="utf-8").replace("Hello", "Bonjour"), encoding="utf-8")
    run_report(recipe)
    assert "report: building" in caplog.text and "input 'answers:" in caplog.text
    assert read_manifest(out, "report").fingerprint != m.fingerprint

    # a setting changed: rebuilt
    caplog.clear()
    recipe.report = recipe.report.model_copy(update={"min_ja_ratio": 0.3})
    run_report(recipe)
    assert "config changed: min_ja_ratio 0.5 -> 0.3" in caplog.text

    # the judge re-summarised with another bootstrap size: rebuilt, with the summary's new numbers
    caplog.clear()
    recipe.judge = recipe.judge.model_copy(update={"bootstrap": 60})
    run_judging(recipe, progress=False)
    run_report(recipe)
    assert f"input 'judge:{judge}' changed" in caplog.text
    assert read_manifest(out, "report").details["bootstrap"] == 60

    # an explicit --out is registered: the recipe's report folder is now that one
    other = tmp_path / "elsewhere"
    assert run_report(recipe, other) == other / "index.html"
    assert recipe.stage_dir("report") == other and read_manifest(other, "report") is not None
    assert os.path.isfile(other / "scores.csv")


def test_report_is_rebuilt_when_a_retry_changes_the_judgments_under_the_same_judge_fingerprint(
        tmp_path, caplog, monkeypatch):
    """--retry-errors leaves the judge's manifest fingerprint (inputs + config) unchanged but
    rewrites judgments.jsonl: the report must not call itself up to date."""
    from ja_instruct.judge import backends
    from ja_instruct.judge.run import run_judging
    from ja_instruct.manifest import read_manifest
    from ja_instruct.report import run_report

    refuse = {"on": True}

    class RefusingOnce(backends.FakeBackend):
        async def judge(self, req):
            if refuse["on"] and "東京です。" in req.user:  # the "mid" model's answers
                raise backends.JudgeItemError("HTTP 400: maximum context length exceeded")
            return await super().judge(req)

    monkeypatch.setitem(backends.BACKENDS, "fake", RefusingOnce)
    recipe = _recipe(tmp_path / "run", write_synthetic_run(tmp_path / "inputs"), "single")
    recipe.judge = recipe.judge.model_copy(update={"max_error_rate": 1.0})
    judge = run_judging(recipe, progress=False)
    page = run_report(recipe)
    fp = read_manifest(judge, "judge").fingerprint
    before = {r["model"]: r for r in csv.DictReader(open(page.parent / "scores.csv", encoding="utf-8"))}
    assert int(before["mid"]["errors"]) > 0

    refuse["on"] = False
    recipe.judge = recipe.judge.model_copy(update={"retry_errors": True})
    run_judging(recipe, progress=False)
    assert read_manifest(judge, "judge").fingerprint == fp  # same inputs and config...
    caplog.set_level(logging.INFO, logger="ja_instruct.report.build")
    run_report(recipe)
    assert "report: up to date" not in caplog.text  # ...but other judgments: rebuilt
    after = {r["model"]: r for r in csv.DictReader(open(page.parent / "scores.csv", encoding="utf-8"))}
    assert int(after["mid"]["errors"]) == 0 and int(after["mid"]["n"]) > int(before["mid"]["n"])
