"""ja_instruct.stats: Bradley-Terry (against choix, on simulated games), the question-cluster bootstrap
(coverage on correlated simulated data), the bounded home term, position bias and inconsistency."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.special import expit, ndtr

from ja_instruct import stats
from ja_instruct.stats import ANCHOR, SCALE, STRENGTH_PRIOR, Games, bt_ratings, fit_bt, to_rating


def random_games(strengths, n_games: int, home: float = 0.0, tie_band: float = 0.0, seed: int = 0) -> Games:
    """Independent games drawn from the model itself: random pairs, random order, one question each."""
    rng = np.random.default_rng(seed)
    s = np.asarray(strengths, dtype=float)
    n = len(s)
    first = rng.integers(0, n, n_games)
    second = (first + rng.integers(1, n, n_games)) % n
    p = expit(s[first] - s[second] + home)
    u = rng.random(n_games)
    w = np.where(u < p, 1.0, 0.0)
    if tie_band:
        w = np.where(np.abs(u - p) < tie_band, 0.5, w)
    return Games([f"m{i}" for i in range(n)], first, second, w, np.arange(n_games), n_games)


def clustered_games(rng, n_questions: int, strengths, home: float, rho: float, turns: int = 2) -> Games:
    """Every pair x both orders x ``turns`` per question, outcomes correlated within a question.

    A per-question random effect ``u[q, model]`` enters a latent normal ``z`` of every game of
    the question (``corr = rho`` between the games of one pair); the first-shown answer wins
    iff ``Phi(z) < sigmoid(s_first - s_second + home)``. ``Phi(z)`` is uniform, so each game is
    exactly a Bradley-Terry game and the true ratings are ``to_rating(strengths)``.
    """
    s = np.asarray(strengths, dtype=float)
    n = len(s)
    a, b = np.triu_indices(n, 1)
    first, second = np.r_[a, b], np.r_[b, a]
    u = rng.normal(size=(n_questions, 1, n))
    z = (math.sqrt(rho) * (u[:, :, first] - u[:, :, second]) / math.sqrt(2)
         + math.sqrt(1 - rho) * rng.normal(size=(n_questions, turns, len(first))))
    w = (ndtr(z) < expit(s[first] - s[second] + home)).astype(float)
    reps = n_questions * turns
    return Games([f"m{i}" for i in range(n)], np.tile(first, reps), np.tile(second, reps), w.ravel(),
                 np.repeat(np.arange(n_questions), turns * len(first)), n_questions)


def test_matches_choix_without_home_advantage():
    choix = pytest.importorskip("choix")
    games = random_games([1.0, 0.3, 0.0, -0.5, -0.8], 3000, seed=1)
    ours, h = fit_bt(games, home=False)
    assert h == 0.0
    data = [(int(f), int(s)) if w == 1 else (int(s), int(f)) for f, s, w in zip(games.first, games.second, games.w)]
    theirs = choix.opt_pairwise(5, data, alpha=STRENGTH_PRIOR)  # the same Gaussian prior (precision alpha)
    np.testing.assert_allclose(ours, theirs - theirs.mean(), atol=2e-3)


def test_ties_count_as_half_wins_like_doubled_choix_games():
    choix = pytest.importorskip("choix")
    games = random_games([0.6, 0.0, -0.6], 1500, tie_band=0.15, seed=2)
    assert (games.w == 0.5).any()
    ours, _ = fit_bt(games, home=False)
    doubled = []  # a win = two wins, a tie = one win each way: the same likelihood, times 2
    for f, s, w in zip(games.first.tolist(), games.second.tolist(), games.w):
        doubled += [(f, s), (f, s)] if w == 1 else [(s, f), (s, f)] if w == 0 else [(f, s), (s, f)]
    theirs = choix.opt_pairwise(3, doubled, alpha=2 * STRENGTH_PRIOR)
    np.testing.assert_allclose(ours, theirs - theirs.mean(), atol=2e-3)


def test_recovers_simulated_strengths_and_home_advantage():
    true = np.array([1.2, 0.5, 0.0, -0.4, -1.3])
    s, h = fit_bt(random_games(true, 20000, home=0.4, seed=3))
    np.testing.assert_allclose(s, true - true.mean(), atol=0.08)
    assert h == pytest.approx(0.4, abs=0.06)


def test_rating_scale_and_nested_intervals():
    assert to_rating(np.array([0.0, 0.0])).tolist() == [ANCHOR, ANCHOR]
    r = to_rating(np.array([math.log(10) / 2, -math.log(10) / 2]))  # 10:1 odds = 400 points
    assert r[0] - r[1] == pytest.approx(400.0)
    assert SCALE == pytest.approx(400 / math.log(10))
    out = bt_ratings(clustered_games(np.random.default_rng(4), 30, [0.8, 0.0, -0.8], 0.2, 0.3), 100, seed=0)
    ratings = [out["ratings"][m]["rating"] for m in ("m0", "m1", "m2")]
    assert np.mean(ratings) == pytest.approx(1000.0)
    assert ratings[0] > ratings[1] > ratings[2]
    for v in out["ratings"].values():
        assert v["ci95"][0] <= v["ci68"][0] <= v["rating"] <= v["ci68"][1] <= v["ci95"][1]
    again = bt_ratings(clustered_games(np.random.default_rng(4), 30, [0.8, 0.0, -0.8], 0.2, 0.3), 100, seed=0)
    assert again == out  # seeded


def test_all_wins_stays_finite_and_no_games_gives_nothing():
    g = Games(["a", "b"], np.array([0] * 20 + [1] * 20), np.array([1] * 20 + [0] * 20),
              np.array([1.0] * 20 + [0.0] * 20), np.arange(40) % 10, 10)
    out = bt_ratings(g, 50)
    assert all(np.isfinite(out["ratings"][m]["rating"]) for m in "ab")
    assert out["ratings"]["a"]["rating"] > out["ratings"]["b"]["rating"]
    assert math.isfinite(out["home_advantage"])
    empty = Games(["a"], np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros(0, int), 0)
    assert bt_ratings(empty, 5)["ratings"] == {}


def test_question_bootstrap_covers_the_true_ratings():
    """100 data sets, 40 questions x 6 pairs x both orders x 2 turns, correlated within a question."""
    true_s = np.array([0.8, 0.2, 0.0, -0.6])
    truth = to_rating(true_s)

    def coverage(by_game: bool) -> float:
        rng, hits = np.random.default_rng(1), []
        for k in range(100):
            g = clustered_games(rng, 40, true_s, home=0.3, rho=0.5)
            if by_game:  # the old way: every game its own resampling unit
                g = Games(g.models, g.first, g.second, g.w, np.arange(len(g.w)), len(g.w))
            out = bt_ratings(g, 200, seed=k)
            hits += [lo <= t <= hi for t, (lo, hi) in zip(truth, (out["ratings"][m]["ci95"] for m in g.models))]
        return float(np.mean(hits))

    t0 = time.perf_counter()
    cov = coverage(by_game=False)
    print(f"95% interval coverage over 100 simulated data sets: {cov:.3f} ({time.perf_counter() - t0:.1f} s)")
    assert 0.90 <= cov <= 0.99
    # resampling single games ignores the correlation: intervals too narrow, coverage far below 95%
    assert coverage(by_game=True) < 0.85


def test_bootstrap_is_cheap():
    g = clustered_games(np.random.default_rng(0), 42, [0.8, 0.2, 0.0, -0.6], 0.3, 0.5)
    assert 900 < len(g.w) < 1100
    bt_ratings(g, 5)  # imports and caches warm
    t0 = time.perf_counter()
    bt_ratings(g, 200, seed=1)
    assert time.perf_counter() - t0 < 2.0


def test_a_judge_that_always_prefers_the_first_answer():
    n_q, models = 40, ["a", "b", "c"]
    a, b = np.triu_indices(3, 1)
    first, second = np.tile(np.r_[a, b], n_q * 2), np.tile(np.r_[b, a], n_q * 2)
    g = Games(models, first, second, np.ones(len(first)), np.repeat(np.arange(n_q), 12), n_q)
    out = bt_ratings(g, 200, seed=0)
    assert 2.0 < out["home_advantage"] < 10.0  # large, but the prior keeps it finite
    for m in models:
        r = out["ratings"][m]
        assert r["rating"] == pytest.approx(1000.0)
        lo, hi = r["ci95"]
        # every resample is alike (both orders cancel), yet the verdicts say nothing about the models:
        # the interval must not claim certainty
        assert lo < 1000 - 50 and hi > 1000 + 50 and math.isfinite(lo) and math.isfinite(hi)


def _pair(qid, order, verdict, judge="j", a="x", b="y", status="ok"):
    return {"mode": "pairwise", "question_id": qid, "turn": 1, "model_a": a, "model_b": b, "order": order,
            "verdict": verdict, "status": status, "judge": judge, "repeat": 0}


def test_position_bias_and_inconsistency():
    recs = []
    for i in range(10):
        recs.append(_pair(f"q{i}", "AB", "A"))  # x shown first and wins
        recs.append(_pair(f"q{i}", "BA", "B" if i < 4 else "A"))  # y shown first: y wins 4 of 10
    recs.append(_pair("q0", "AB", None, status="error"))  # refused calls count nowhere
    # first-shown answer won 10 + 4 decisive verdicts, the second-shown 6
    assert stats.position_bias(recs) == pytest.approx((14 - 6) / 20)
    combined = stats.combine_orders(recs)
    assert len(combined) == 10 and stats.inconsistency(combined) == pytest.approx(0.4)
    assert sum(c["verdict"] == "tie" for c in combined) == 4
    # the same question judged by two judges: two pairs, never one pair with four orders
    two = [_pair("q", "AB", "A", judge="j1"), _pair("q", "BA", "A", judge="j1"),
           _pair("q", "AB", "A", judge="j2"), _pair("q", "BA", "B", judge="j2")]
    assert sorted(c["verdict"] for c in stats.combine_orders(two)) == ["A", "tie"]
    assert stats.position_bias([_pair("q", "AB", "tie")]) is None


def test_mean_interval_resamples_questions():
    rng = np.random.default_rng(0)
    per_q = rng.normal(6, 2, size=30)
    values = np.repeat(per_q, 8)  # 8 identical judgments per question: 30 pieces of information, not 240
    cluster = np.repeat(np.arange(30), 8)
    w = stats.cluster_weights(30, 400, seed=0)
    lo, hi = stats.mean_ci(values, cluster, w)["ci95"]
    naive = 2 * 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert hi - lo > 2 * naive  # about sqrt(8) times wider
    assert lo < values.mean() < hi
    # one question only: resampling cannot vary, the independent-judgment interval is the floor
    lo1, hi1 = stats.mean_ci(np.array([4.0, 6.0, 8.0]), np.zeros(3, int), stats.cluster_weights(1, 50, 0))["ci95"]
    assert hi1 - lo1 == pytest.approx(2 * 1.959964 * 2 / math.sqrt(3), rel=1e-4)
    assert stats.mean_ci(np.zeros(0), np.zeros(0, int), w)["ci95"] is None


def test_paired_ratio_difference_by_hand():
    """Two conversations of 2 tokens each: base NLL/token 2.0 and 3.0, tuned 1.0 and 2.5."""
    res = stats.paired_ratio_difference([4.0, 6.0], [2, 2], [2.0, 5.0], [2, 2], bootstrap=2000, seed=0)
    assert res["n"] == 2 and res["lower"] == 2 and res["higher"] == 0
    assert res["base"] == pytest.approx(2.5) and res["new"] == pytest.approx(1.75)
    assert res["difference"] == pytest.approx(-0.75)
    # A resample draws conversation 1 twice (-1.0), each once (-0.75) or 2 twice (-0.5), a quarter of
    # them at each end: percentile interval [-1.0, -0.5]. The delta-method floor is wider: the
    # influences (y - R x) / mean(x) are tuned (-0.75, 0.75), base (-0.5, 0.5); their differences
    # (-0.25, 0.25) have sd 0.25 * sqrt(2), so se = 0.25.
    z = 1.959963984540054
    assert res["ci95"] == pytest.approx([-0.75 - z * 0.25, -0.75 + z * 0.25], abs=1e-9)


def test_paired_ratio_difference_weights_tokens_and_counts_clusters():
    # token-weighted: (10 + 2) / (10 + 1) for the base, not the mean of 1.0 and 2.0
    res = stats.paired_ratio_difference([10.0, 2.0, 3.0], [10, 1, 0], [9.0, 3.0, 1.0], [10, 1, 1],
                                        bootstrap=500, seed=1, levels=(0.68, 0.95))
    assert res["base"] == pytest.approx(15 / 11) and res["new"] == pytest.approx(13 / 12)
    assert (res["lower"], res["higher"]) == (1, 1)  # the third conversation has no base tokens: not counted
    lo68, hi68 = res["ci68"]
    lo95, hi95 = res["ci95"]
    assert lo95 <= lo68 <= res["difference"] <= hi68 <= hi95
    assert stats.paired_ratio_difference([], [], [], [], 100, 0) is None
    assert stats.paired_ratio_difference([1.0], [0], [1.0], [1], 100, 0) is None  # no base tokens at all
    with pytest.raises(ValueError):
        stats.paired_ratio_difference([1.0], [1], [1.0, 2.0], [1, 1], 100, 0)


def test_paired_ratio_difference_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(3)
    tok = rng.integers(20, 200, size=40).astype(float)
    base = tok * rng.normal(2.0, 0.3, size=40)
    better = tok * (base / tok - 0.2 + rng.normal(0, 0.05, size=40))
    res = stats.paired_ratio_difference(base, tok, better, tok, bootstrap=1000, seed=0)
    assert res["ci95"][1] < 0 and res["lower"] >= 35
    same = tok * (base / tok + rng.normal(0, 0.05, size=40))
    res = stats.paired_ratio_difference(base, tok, same, tok, bootstrap=1000, seed=0)
    assert res["ci95"][0] < 0 < res["ci95"][1]


def test_paired_ratio_difference_of_shares_over_questions():
    """Shares of answer turns, paired by question (2 turns each): one turn in 24 is noise, a shift
    on most questions is not, and one question alone gives a zero-width interval (the report's
    MIN_PAIRED guard exists for that)."""
    turns = [2] * 12
    base = [1] + [2] * 11                       # 23 of 24 turns
    res = stats.paired_ratio_difference(base, turns, [2] * 12, turns, bootstrap=2000, seed=0)
    assert res["difference"] == pytest.approx(1 / 24) and (res["lower"], res["higher"]) == (0, 1)
    assert res["ci95"][0] < 0 < res["ci95"][1]
    worse = [0] * 9 + [2] * 3                   # 6 of 24 turns -> 21 of 24
    better = [2] * 9 + [1, 1, 1]
    res = stats.paired_ratio_difference(worse, turns, better, turns, bootstrap=2000, seed=0)
    assert res["difference"] == pytest.approx(21 / 24 - 6 / 24) and res["ci95"][0] > 0
    one = stats.paired_ratio_difference([0], [2], [2], [2], bootstrap=500, seed=0)
    assert one["ci95"][0] == one["ci95"][1] == one["difference"] == 1.0
