"""summary.json: refused judge calls (status error) are counted, never averaged; stats are ja_instruct.stats'."""

from __future__ import annotations

import pytest

from ja_instruct import stats
from ja_instruct.judge.summary import build_summary


def _single(model, qid, score, turn=1, status="ok", repeat=0):
    r = {"mode": "single", "question_id": qid, "category": "c", "turn": turn, "model": model, "score": score,
         "status": status, "judge": "j", "prompt": "p@1", "repeat": repeat}
    if status == "error":
        r["error"] = "HTTP 400: context length exceeded"
    return r


def test_single_errors_are_counted_not_averaged():
    recs = [_single("a", 1, 8), _single("a", 2, 6), _single("a", 3, None, status="parse_error"),
            _single("a", 4, None, status="error"), _single("b", 1, 3), _single("b", 2, None, status="error")]
    s = build_summary(recs, "single", ["a", "b"], judge="j", question_set=None, answers_dir=None, bootstrap=50)
    assert (s["errors"], s["parse_errors"]) == (2, 1)
    a, b = s["models"]["a"], s["models"]["b"]
    assert (a["n"], a["mean"], a["errors"], a["parse_errors"]) == (2, 7.0, 1, 1)
    assert (b["n"], b["mean"], b["errors"]) == (1, 3.0, 1)
    assert a["ci95"][0] <= 7.0 <= a["ci95"][1]
    assert s["stats"]["bootstrap"] == 50 and s["stats"]["seed"] == 0


def test_repeats_spread_per_item():
    recs = [_single("a", 1, 8, repeat=0), _single("a", 1, 6, repeat=1), _single("a", 2, 5, repeat=0),
            _single("a", 2, 5, repeat=0)]  # the last one is a duplicated row, not a second opinion
    s = build_summary(recs, "single", ["a"], judge="j", question_set=None, answers_dir=None, bootstrap=0)
    assert s["models"]["a"]["repeat_std"] == pytest.approx(2 ** 0.5)  # only item 1 has two repeats
    assert s["models"]["a"]["ci95"] is None  # no resamples, no interval


def _pair(qid, order, verdict, a="x", b="y", status="ok"):
    return {"mode": "pairwise", "question_id": qid, "turn": 1, "model_a": a, "model_b": b, "order": order,
            "verdict": verdict, "status": status, "judge": "j", "prompt": "p@1", "repeat": 0}


def test_pairwise_section_uses_the_stats_module_and_ignores_errors():
    recs = []
    for i in range(12):
        recs.append(_pair(i, "AB", "A" if i % 3 else "B"))
        recs.append(_pair(i, "BA", "A" if i % 4 else "tie"))
        recs.append(_pair(i, "AB", "B", a="y", b="z"))
        recs.append(_pair(i, "BA", "B" if i % 2 else "A", a="y", b="z"))
    bad = [_pair(20, "AB", None, status="error"), _pair(20, "BA", None, a="y", b="z", status="error")]
    kw = dict(judge="j", question_set=None, answers_dir=None, bootstrap=80, seed=5)
    s = build_summary(recs, "pairwise", ["x", "y", "z"], **kw)
    s_err = build_summary(recs + bad, "pairwise", ["x", "y", "z"], **kw)
    pw = s["pairwise"]
    assert pw["position_bias"] == stats.position_bias(recs)
    assert pw["inconsistency"] == stats.inconsistency(stats.combine_orders(recs))
    bt = stats.bt_ratings(stats.ordered_games(recs), bootstrap=80, seed=5)
    for m in "xyz":
        assert pw["bt"][m]["rating"] == pytest.approx(bt["ratings"][m]["rating"])
        assert pw["bt"][m]["ci68"] == pytest.approx(bt["ratings"][m]["ci68"])
    assert s_err["errors"] == 2
    assert {m: b["errors"] for m, b in s_err["models"].items()} == {"x": 1, "y": 2, "z": 1}
    # the refused calls change no rating (only the resampled question set gains an empty question)
    for m in "xyz":
        assert s_err["pairwise"]["bt"][m]["rating"] == pytest.approx(pw["bt"][m]["rating"])
        assert s_err["models"][m]["mean"] == s["models"][m]["mean"]
    assert s_err["pairwise"]["pairs_incomplete"] == 2 and s_err["pairwise"]["games"] == pw["games"]
