"""Statistics of the report: bootstrap CIs, health flags, Bradley-Terry and bias measures."""

from __future__ import annotations

import math

import numpy as np

from ja_instruct.report.stats import (answer_health, bootstrap_ci, bradley_terry, pairwise_stats, single_scores,
                                      turn_flags)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.integers(1, 11, size=200).astype(float)
    lo, hi = bootstrap_ci(x, n_boot=1000, ci=0.95, seed=3)
    assert lo < x.mean() < hi
    # roughly the normal-theory interval (1.96 standard errors)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.35 * (2 * 1.96 * se)
    assert bootstrap_ci(x, 1000, 0.95, 3) == (lo, hi)
    assert bootstrap_ci([5.0], 100) == (5.0, 5.0)
    assert all(math.isnan(v) for v in bootstrap_ci([], 100))


def _single(model, qid, score, turn=1, cat="地理", status="ok"):
    return {"mode": "single", "question_id": qid, "category": cat, "turn": turn, "model": model,
            "score": score, "status": status}


def test_single_scores_per_category_turn_and_parse_errors():
    recs = [_single("m", "q1", 8), _single("m", "q2", 4, cat="歴史"), _single("m", "q1", 6, turn=2),
            _single("m", "q3", None, status="parse_error")]
    s = single_scores(recs, n_boot=200, ci=0.95, seed=0)["m"]
    assert s.n == 3 and s.parse_errors == 1
    assert s.mean == 6.0
    assert s.per_category == {"地理": 7.0, "歴史": 4.0}
    assert s.per_turn == {1: 6.0, 2: 6.0}


def test_health_flags_and_shares():
    assert turn_flags({"ja_ratio": 0.1, "repeat_ratio": 0.0}, 0.5, 0.5) == ["non_japanese"]
    assert turn_flags({"ja_ratio": 0.9, "repeat_ratio": 0.7, "truncated": True}, 0.5, 0.5) == ["looping", "truncated"]
    assert turn_flags({"ja_ratio": 0.0, "empty": True}, 0.5, 0.5) == ["empty"]  # empty is not also non-Japanese
    answers = {"q1": {"health": [{"ja_ratio": 0.9}, {"ja_ratio": 0.1}]}, "q2": {"health": [{"ja_ratio": 1.0}]}}
    h = answer_health(answers, 0.5, 0.5)
    assert h["turns"] == 3 and abs(h["non_japanese"] - 1 / 3) < 1e-9 and h["any"] == h["non_japanese"]
    assert answer_health({"q": {"choices": []}}, 0.5, 0.5) is None  # real FastChat answers: no health


def test_bradley_terry_orders_models_by_strength():
    # 0 beats 1 beats 2, mostly
    wins = np.array([[0, 8, 9], [2, 0, 7], [1, 3, 0]], dtype=float)
    theta = bradley_terry(wins, np.zeros((3, 3)))
    assert theta[0] > theta[1] > theta[2]
    assert abs(theta.mean()) < 1e-9
    # a model that won everything stays finite (the prior)
    theta = bradley_terry(np.array([[0, 5.0], [0, 0]]), np.zeros((2, 2)))
    assert np.all(np.isfinite(theta)) and theta[0] > theta[1]


def _pair(qid, a, b, order, verdict):
    return {"mode": "pairwise", "question_id": qid, "turn": 1, "model_a": a, "model_b": b, "order": order,
            "verdict": verdict, "status": "ok", "judge": "j", "repeat": 0}


def test_pairwise_position_bias_and_inconsistency():
    recs = []
    for i in range(10):
        recs.append(_pair(f"q{i}", "x", "y", "AB", "A"))  # x shown first and wins
        # when y is shown first, the judge picks y in 4 of 10 items: position bias + inconsistency
        recs.append(_pair(f"q{i}", "x", "y", "BA", "B" if i < 4 else "A"))
    pw = pairwise_stats(recs, n_boot=200, ci=0.95, seed=0)
    assert pw.models == ["x", "y"]
    assert pw.wins[0, 1] == 16 and pw.wins[1, 0] == 4
    assert abs(pw.inconsistency - 0.4) < 1e-9
    # decisive verdicts won by the first-shown answer: 10 (AB) + 4 (BA, y first) of 20
    assert abs(pw.position_bias - 14 / 20) < 1e-9
    assert pw.ratings["x"] > pw.ratings["y"]
    lo, hi = pw.rating_ci["x"]
    assert lo <= pw.ratings["x"] <= hi
    assert abs(pw.win_rate[0, 1] - 0.8) < 1e-9 and math.isnan(pw.win_rate[0, 0])
