"""The report's judge-reliability figures (issue 11): grading scale in every heading and never a
mean across scales, scores with and without the language guard, language counts, mean answer
lengths, the category x turn table over samples, judge panels, and the pairwise bias figures
(flip rate, first-position win rate, length-controlled win rate) next to the raw win rate."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
from report_helpers11 import write_answers, write_pairwise_dir, write_questions, write_single_dir
from scipy.stats import kendalltau, spearmanr

from ja_instruct import stats
from ja_instruct.report import build_report
from ja_instruct.report.config import ReportConfig

MODELS = ["ja-model", "english-model"]


def _report(judge_dirs, out):
    build_report(judge_dirs, out, ReportConfig(bootstrap=100))
    md = (out / "summary.md").read_text(encoding="utf-8")
    rows = list(csv.DictReader((out / "scores.csv").read_text(encoding="utf-8").splitlines()))
    return md, rows, (out / "index.html").read_text(encoding="utf-8"), json.loads(
        (out / "summary.json").read_text(encoding="utf-8"))


def _md_rows(md: str, first: str, second: str | None = None) -> list[list[str]]:
    """The cells of summary.md's table rows whose first (and second) cell are these."""
    out = []
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first and (second is None or cells[1] == second):
            out.append(cells)
    assert out, f"no row {first} {second or ''} in summary.md"
    return out


def _md_row(md: str, first: str, second: str | None = None) -> list[str]:
    return _md_rows(md, first, second)[0]


def test_single_mode_scale_guard_language_length_and_samples(tmp_path):
    qs = write_questions(tmp_path / "questions.jsonl", 6)
    texts = write_answers(tmp_path / "answers", qs, MODELS, samples=3)
    recs = write_single_dir(tmp_path / "judge", tmp_path / "answers", tmp_path / "questions.jsonl", qs, MODELS,
                            texts, samples=3)
    md, rows, html, _ = _report([tmp_path / "judge"], tmp_path / "report")
    assert "## Scores (1-10)" in md and "Scores (single-answer grading, 1-10)" in html
    by = {r["model"]: r for r in rows}
    for m in MODELS:
        mine = [r for r in recs if r["model"] == m]
        assert float(by[m]["mean"]) == pytest.approx(np.mean([r["score"] for r in mine]), abs=1e-4)
        assert float(by[m]["mean_unguarded"]) == pytest.approx(np.mean([r["score_unguarded"] for r in mine]), abs=1e-4)
        assert float(by[m]["length_chars"]) == pytest.approx(np.mean([r["answer_chars"] for r in mine]), abs=1e-4)
        assert float(by[m]["length_tokens"]) == pytest.approx(np.mean([r["answer_tokens"] for r in mine]), abs=1e-4)
        assert by[m]["samples"] == "3" and by[m]["scale"] == "1-10"
    # the English model is capped by the guard: with and without it differ; 36 answers, all not-Japanese
    assert float(by["english-model"]["mean"]) == pytest.approx(1.0)
    assert float(by["english-model"]["mean_unguarded"]) > 2
    assert (by["english-model"]["language_ok"], by["english-model"]["language_not_japanese"]) == ("0", "36")
    row = _md_row(md, "english-model")
    assert "0 / 0 / 36" in row and any("capped" in c for c in row)
    assert _md_row(md, "ja-model")[6] == "36 / 0 / 0"
    # category x turn: mean over the 3 samples' means, and their spread
    cell = defaultdict(list)
    for r in recs:
        if r["model"] == "ja-model" and r["category"] == "writing" and r["turn"] == 2:
            cell[r["sample"]].append(r["score"])
    means = [np.mean(v) for _, v in sorted(cell.items())]
    assert "## Category x turn (1-10)" in md and "Mean over 3 samples" in md
    ct = _md_row(md, "writing", "2")
    assert ct[2] == f"{np.mean(means):.2f} ± {np.std(means, ddof=1):.2f}"
    assert 'id="category-turn-table"' in html


def test_scales_are_never_averaged_together(tmp_path):
    qs = write_questions(tmp_path / "questions.jsonl", 5)
    texts = write_answers(tmp_path / "answers", qs, MODELS)
    r10 = write_single_dir(tmp_path / "mt", tmp_path / "answers", tmp_path / "questions.jsonl", qs, MODELS, texts, 1)
    r5 = write_single_dir(tmp_path / "elyza", tmp_path / "answers", tmp_path / "questions.jsonl", qs, MODELS, texts,
                          1, scale=(1, 5))
    for r in r5:  # another run of the same items: its own cache keys
        r["key"] += "-elyza"
    (tmp_path / "elyza" / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in r5), encoding="utf-8")
    md, rows, html, summary = _report([tmp_path / "mt", tmp_path / "elyza"], tmp_path / "report")
    assert "## Scores (1-10)" in md and "## Scores (1-5)" in md
    assert "Scores (single-answer grading, 1-5)" in html and "never averaged" in html
    for scale, recs in (("1-10", r10), ("1-5", r5)):
        for m in MODELS:
            (row,) = [r for r in rows if r["model"] == m and r["scale"] == scale]
            assert float(row["mean_unguarded"]) == pytest.approx(
                np.mean([r["score_unguarded"] for r in recs if r["model"] == m]), abs=1e-4)
    assert set(summary["scales"]) == {"1-10", "1-5"}
    # the judge-score comparison of the signals uses the main table's scale only
    assert all(b["judge"] is None or b["judge"]["scale"] == summary["scales"][0] for b in summary["models"].values())


def test_panel_shows_each_judge_the_panel_mean_and_agreement(tmp_path):
    qs = write_questions(tmp_path / "questions.jsonl", 8)
    texts = write_answers(tmp_path / "answers", qs, MODELS)
    recs = write_single_dir(tmp_path / "judge", tmp_path / "answers", tmp_path / "questions.jsonl", qs, MODELS, texts,
                            1, judges=("judge-1", "judge-2"))
    md, _, html, summary = _report([tmp_path / "judge"], tmp_path / "report")
    assert "## Judge panel" in md and 'id="agreement-table"' in html
    panel_row = _md_rows(md, "ja-model")[-1]  # the panel table comes after the score table
    means = [np.mean([r["score"] for r in recs if r["model"] == "ja-model" and r["judge"] == j])
             for j in ("judge-1", "judge-2")]
    assert panel_row[1].startswith(f"{means[0]:.2f}") and panel_row[2].startswith(f"{means[1]:.2f}")
    assert panel_row[3] == f"{np.mean(means):.2f}"
    items = defaultdict(dict)
    for r in recs:
        items[(r["model"], r["question_id"], r["turn"])][r["judge"]] = r["score_unguarded"]
    x = [v["judge-1"] for v in items.values()]
    y = [v["judge-2"] for v in items.values()]
    agree = _md_row(md, "judge-1 vs judge-2")
    assert agree[1] == str(len(x))
    assert agree[2] == f"{spearmanr(x, y)[0]:.3f}" and agree[3] == f"{kendalltau(x, y)[0]:.3f}"
    assert agree[4] == f"{stats.quadratic_kappa(x, y):.3f}"
    assert summary["panel"]["agreement"]["judge-1 vs judge-2"]["n"] == len(x)


def test_pairwise_bias_figures_match_the_statistics_and_the_judge_summary(tmp_path):
    from ja_instruct.judge.summary import build_summary

    qs = write_questions(tmp_path / "questions.jsonl", 30)
    models = ["ja-model", "base-model"]
    texts = write_answers(tmp_path / "answers", qs, models)
    recs = write_pairwise_dir(tmp_path / "judge", tmp_path / "answers", tmp_path / "questions.jsonl", qs, models,
                              texts, baseline="base-model")
    md, rows, html, summary = _report([tmp_path / "judge"], tmp_path / "report")
    lengths = {(m, q["question_id"], t): len(texts[(m, q["question_id"], t, 0)])
               for m in models for q in qs for t in (1, 2)}
    flip, first = stats.flip_rate(recs), stats.first_position_win_rate(recs)
    lc = stats.lc_win_rate(recs, lengths, "base-model")["ja-model"]
    assert f"flip rate {flip:.3f}" in md and f"first-position win rate {first:.3f}" in md
    assert 0 < flip < 1 and first > 0.5  # the planted first-position preference shows
    (row,) = [r for rank in ("1", "2") for r in _md_rows(md, rank) if r[1] == "ja-model" and len(r) == 10]
    assert row[8] == f"{lc:.3f}"
    combined = [c for c in stats.combine_orders(recs) if c["verdict"] is not None]
    raw = np.mean([stats.VERDICT_VALUE[c["verdict"]] for c in combined])  # ja-model is model_a everywhere
    assert row[7] == f"{raw:.3f}"
    mean_chars = np.mean([len(texts[("ja-model", q["question_id"], t, 0)]) for q in qs for t in (1, 2)])
    assert row[9].startswith(f"{mean_chars:.0f} / ")
    assert 'id="flip-rate"' in html and "LC win rate vs base-model" in html
    # the judge's own summary.json, built from the same records, says the same
    js = build_summary(recs, "pairwise-baseline", models, judge="judge-1", question_set=None, answers_dir=None,
                       bootstrap=0, baseline="base-model")
    bias = js["pairwise"]["bias"]
    assert summary["pairwise_bias"]["flip_rate"] == bias["flip_rate"]
    assert summary["pairwise_bias"]["first_position_win_rate"] == bias["first_position_win_rate"]
    assert summary["pairwise_bias"]["lc_win_rate"] == pytest.approx(bias["lc_win_rate"])
    assert summary["pairwise_bias"]["baseline"] == "base-model"


def test_runs_from_before_issue_11_still_report(synthetic_run, tmp_path):
    # records without scale, language, samples or answer lengths: 1-10, no guard columns, lengths
    # from the answer files, bias figures computed from the records, no LC win rate (no lengths)
    md, rows, html, summary = _report([synthetic_run["judge"]], tmp_path / "report")
    assert "## Scores (1-10)" in md and "mean without language guard" not in md
    answers = [json.loads(line) for line in (synthetic_run["answers"] / "tuned.jsonl").read_text(
        encoding="utf-8").splitlines()]
    chars = np.mean([len(t) for a in answers for t in a["choices"][0]["turns"]])
    (tuned,) = [r for r in rows if r["model"] == "tuned"]
    assert float(tuned["length_chars"]) == pytest.approx(chars, abs=1e-4)
    assert float(tuned["length_tokens"]) == pytest.approx(10.0)  # health n_tokens
    recs = [json.loads(line) for line in (synthetic_run["judge"] / "judgments.jsonl").read_text(
        encoding="utf-8").splitlines()]
    assert f"flip rate {stats.flip_rate(recs):.3f}" in md
    assert summary["pairwise_bias"]["lc_win_rate"] == {}
    assert "Category x turn" not in md or "One answer per question" in md
