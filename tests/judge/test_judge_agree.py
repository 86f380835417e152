"""``ja-instruct judge agree``: judge vs judge and judge vs human ratings, item by item."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from ja_instruct.errors import UserError
from ja_instruct.judge.agree import agree, format_table

MODELS = ("model-a", "model-b", "model-c")


def single_records(scores: dict[tuple, float], judge: str = "judge-1", scale=(1, 10), repeats: int = 1) -> list[dict]:
    """Single-mode judgment records of ``scores[(model, question_id, turn)]``."""
    return [{"mode": "single", "model": m, "question_id": q, "turn": t, "sample": 0, "score": float(v),
             "scale": list(scale) if scale else None, "judge": judge, "status": "ok", "repeat": r}
            for (m, q, t), v in scores.items() for r in range(repeats)]


def write_judge_dir(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "judgments.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                            encoding="utf-8")
    return folder


def random_scores(n_items: int, seed: int = 0, lo: int = 1, hi: int = 10) -> dict[tuple, float]:
    rng = np.random.default_rng(seed)
    keys = [(MODELS[i % 3], i // 3 + 1, 1 + (i // 3) % 2) for i in range(n_items)]
    return {k: float(v) for k, v in zip(keys, rng.integers(lo, hi + 1, n_items))}


def test_two_copies_agree_perfectly(tmp_path):
    scores = random_scores(90)
    a = write_judge_dir(tmp_path / "a", single_records(scores))
    b = write_judge_dir(tmp_path / "b", single_records(scores, judge="judge-2"))
    res = agree(a, b)
    assert res["matched"] == 90 and res["unmatched"] == {"a": 0, "b": 0}
    ov = res["overall"]
    assert ov["spearman"] == pytest.approx(1.0) and ov["kendall"] == pytest.approx(1.0)
    assert ov["qwk"] == pytest.approx(1.0) and ov["mad"] == 0.0
    assert all(v["spearman"] == pytest.approx(1.0) for v in res["by_model"].values())
    assert res["models"]["spearman"] == pytest.approx(1.0)


def test_scores_shuffled_across_items_agree_about_zero(tmp_path):
    scores = random_scores(500, seed=1)
    shuffled = dict(zip(scores, np.random.default_rng(2).permutation(list(scores.values()))))
    a = write_judge_dir(tmp_path / "a", single_records(scores))
    b = write_judge_dir(tmp_path / "b", single_records(shuffled))
    ov = agree(a, b)["overall"]
    assert ov["n"] == 500
    assert abs(ov["spearman"]) < 0.15 and abs(ov["kendall"]) < 0.15 and abs(ov["qwk"]) < 0.15


def test_judge_vs_human_ratings_equals_scipy(tmp_path):
    # judge: 2 repeats per item (averaged); humans: 3 raters per item (averaged) in a CSV on 1-5
    rng = np.random.default_rng(3)
    keys = [(m, q, 1) for m in MODELS[:2] for q in range(1, 13)]
    judge = {k: int(rng.integers(1, 6)) for k in keys}
    recs = single_records(judge, scale=(1, 5)) + single_records({k: min(5, v + 1) for k, v in judge.items()},
                                                                  scale=(1, 5))
    for i, r in enumerate(recs):
        r["repeat"] = i // len(judge)
    a = write_judge_dir(tmp_path / "judge", recs)
    raters = {k: rng.integers(1, 6, 3) for k in keys}
    path = tmp_path / "human.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question_id", "model", "score", "rater"])
        for (m, q, _), vals in raters.items():
            for j, v in enumerate(vals):
                w.writerow([q, m, int(v), j])
        w.writerow([99, "model-a", 3, 0])  # an item the judge never saw
    res = agree(a, path)
    x = [(judge[k] + min(5, judge[k] + 1)) / 2 for k in keys]
    y = [float(np.mean(raters[k])) for k in keys]
    assert res["matched"] == 24 and res["unmatched"] == {"a": 0, "b": 1}
    assert res["scale"] == "1-5" and res["notes"]  # the CSV states no scale: taken as the judge's
    assert res["overall"]["spearman"] == pytest.approx(spearmanr(x, y)[0])
    assert res["overall"]["kendall"] == pytest.approx(kendalltau(x, y)[0])
    assert res["overall"]["mad"] == pytest.approx(np.mean(np.abs(np.subtract(x, y))))
    conf = np.array(res["confusion"])
    assert conf.shape == (5, 5) and conf.sum() == 24


def test_different_scales_refused_unless_rescaled(tmp_path):
    scores5 = random_scores(60, seed=4, hi=5)
    a = write_judge_dir(tmp_path / "elyza", single_records(scores5, scale=(1, 5)))
    b = write_judge_dir(tmp_path / "mt", single_records({k: 1 + (v - 1) * 9 / 4 for k, v in scores5.items()}))
    with pytest.raises(UserError, match="1-5.*1-10.*cannot be compared") as err:
        agree(a, b)
    assert "--rescale" in str(err.value)
    res = agree(a, b, rescale=True)
    assert res["rescaled"] and res["overall"]["qwk"] == pytest.approx(1.0) and res["overall"]["mad"] == pytest.approx(0)


def test_mismatched_inputs_name_the_file(tmp_path):
    a = write_judge_dir(tmp_path / "a", single_records(random_scores(30)))
    no_model = tmp_path / "ratings.csv"
    no_model.write_text("question_id,score\n1,3\n", encoding="utf-8")
    with pytest.raises(UserError, match="no column model") as err:
        agree(a, no_model)
    assert err.value.file == str(no_model)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"question_id": 1, "model": "someone-else", "score": 3}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="no item of") as err:
        agree(a, other)
    assert str(other) in str(err.value) and "someone-else" in str(err.value)
    bad = tmp_path / "bad.csv"
    bad.write_text("question_id,model,score\n1,model-a,good\n", encoding="utf-8")
    with pytest.raises(UserError, match="not a finite number") as err:
        agree(a, bad)
    assert err.value.file == str(bad) and err.value.line == 2
    with pytest.raises(UserError, match="no judgments.jsonl") as err:
        agree(a, tmp_path)
    assert err.value.file == str(tmp_path)
    for value in ("nan", "inf"):  # float() reads them; a rating they are not
        odd = tmp_path / f"{value}.csv"
        odd.write_text(f"question_id,model,score\n1,model-a,{value}\n", encoding="utf-8")
        with pytest.raises(UserError, match="not a finite number") as err:
            agree(odd, odd)
        assert err.value.file == str(odd) and err.value.line == 2


def test_panel_folder_needs_a_judge_choice_and_pairwise_compares_verdicts(tmp_path):
    scores = random_scores(30)
    panel = write_judge_dir(tmp_path / "panel", single_records(scores) + single_records(scores, judge="judge-2"))
    with pytest.raises(UserError, match="2 judges"):
        agree(panel, panel)
    res = agree(panel, panel, judge_a="judge-1", judge_b="judge-2")
    assert res["overall"]["qwk"] == pytest.approx(1.0) and res["a"]["judge"] == "judge-1"

    def pair(q, order, verdict):
        return {"mode": "pairwise", "question_id": q, "turn": 1, "model_a": "x", "model_b": "y", "order": order,
                "verdict": verdict, "judge": "j", "status": "ok"}
    v1 = ["A", "B", "tie", "A", "B", "A"]
    v2 = ["A", "B", "A", "tie", "A", "A"]
    p1 = write_judge_dir(tmp_path / "p1", [pair(q, o, v) for q, v in enumerate(v1) for o in ("AB", "BA")])
    p2 = write_judge_dir(tmp_path / "p2", [pair(q, o, v) for q, v in enumerate(v2) for o in ("AB", "BA")])
    res = agree(p1, p2)
    grade = {"A": 2, "tie": 1, "B": 0}
    assert res["mode"] == "pairwise" and res["scale"] == "0-2" and res["matched"] == 6
    assert res["overall"]["spearman"] == pytest.approx(spearmanr([grade[v] for v in v1], [grade[v] for v in v2])[0])
    with pytest.raises(UserError, match="pairwise.*single|single.*pairwise"):
        agree(p1, panel, judge_b="judge-1")


def test_cli_prints_the_table_and_writes_json_and_plot(tmp_path, capsys):
    from ja_instruct.cli import main

    scores = random_scores(60)
    a = write_judge_dir(tmp_path / "a", single_records(scores))
    b = write_judge_dir(tmp_path / "b", single_records({k: min(10, v + 1) for k, v in scores.items()}))
    out = tmp_path / "agree"
    assert main(["judge", "agree", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Spearman" in printed and "model-a" in printed and "60 items matched" in printed
    data = json.loads((out / "agree.json").read_text(encoding="utf-8"))
    assert data["overall"]["spearman"] > 0.95 and data["overall"]["mad"] == pytest.approx(
        np.mean([min(10, v + 1) - v for v in scores.values()]))
    assert data["a"]["fingerprint"] and (out / "agree.png").read_bytes()[:4] == b"\x89PNG"
    assert format_table(data).splitlines()[0].startswith("A: ")
    assert main(["judge", "agree", str(a), str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_judges_own_scores_unless_guarded(tmp_path):
    # B's judge agrees with A's but the language guard capped half of B's items at 1
    scores = random_scores(40, seed=5, lo=3)
    recs_b = single_records(scores, judge="judge-2")
    for i, r in enumerate(recs_b):
        r["score_unguarded"] = r["score"]
        if i % 2:
            r["score"], r["guarded"] = 1.0, True
    a = write_judge_dir(tmp_path / "a", single_records(scores))
    b = write_judge_dir(tmp_path / "b", recs_b)
    assert agree(a, b)["overall"]["mad"] == 0.0
    capped = agree(a, b, guarded=True)
    assert capped["guarded"] and capped["overall"]["mad"] > 1
