"""Bradley-Terry: against choix on the same games, recovery of simulated strengths and home advantage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ja_instruct.judge.bt import ANCHOR, SCALE, bt_ratings, fit_bt, simulate_games, to_rating


def test_matches_choix_without_home_advantage():
    choix = pytest.importorskip("choix")
    true = np.array([1.0, 0.3, 0.0, -0.5, -0.8])
    games = simulate_games(true, 3000, seed=1)
    ours, h = fit_bt(games, 5, home=False, alpha=1e-6)
    assert h == 0.0
    # choix takes (winner, loser) pairs; no ties in these games
    data = [(int(f), int(s)) if w == 1 else (int(s), int(f)) for f, s, w in games]
    theirs = choix.opt_pairwise(5, data, alpha=1e-6)
    theirs = theirs - theirs.mean()
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    ilsr = choix.ilsr_pairwise(5, data, alpha=1e-6)
    np.testing.assert_allclose(ours, ilsr - ilsr.mean(), atol=2e-3)


def test_ties_count_as_half_wins_like_doubled_choix_games():
    choix = pytest.importorskip("choix")
    games = simulate_games(np.array([0.6, 0.0, -0.6]), 1500, tie_band=0.15, seed=2)
    assert (games[:, 2] == 0.5).any()
    ours, _ = fit_bt(games, 3, home=False, alpha=1e-6)
    doubled = []  # a win = two wins, a tie = one win each way: same likelihood up to a factor 2
    for f, s, w in games:
        f, s = int(f), int(s)
        doubled += [(f, s), (f, s)] if w == 1 else [(s, f), (s, f)] if w == 0 else [(f, s), (s, f)]
    theirs = choix.opt_pairwise(3, doubled, alpha=2e-6)
    np.testing.assert_allclose(ours, theirs - theirs.mean(), atol=2e-3)


def test_recovers_simulated_strengths_and_home_advantage():
    true = np.array([1.2, 0.5, 0.0, -0.4, -1.3])
    games = simulate_games(true, 20000, home=0.4, seed=3)
    s, h = fit_bt(games, 5, home=True)
    np.testing.assert_allclose(s, true - true.mean(), atol=0.08)
    assert h == pytest.approx(0.4, abs=0.06)
    # ignoring the position term on the same games biases nothing here (random orders) but fits worse
    s0, _ = fit_bt(games, 5, home=False)
    np.testing.assert_allclose(s0, s, atol=0.1)


def test_rating_scale_and_bootstrap_cis():
    assert to_rating(np.array([0.0, 0.0])).tolist() == [ANCHOR, ANCHOR]
    r = to_rating(np.array([math.log(10) / 2, -math.log(10) / 2]))  # 10:1 odds = 400 points
    assert r[0] - r[1] == pytest.approx(400.0)
    assert SCALE == pytest.approx(400 / math.log(10))
    true = np.array([0.8, 0.0, -0.8])
    out = bt_ratings(simulate_games(true, 600, seed=4).tolist(), ["a", "b", "c"], bootstrap=60, seed=0)
    ratings = [out["ratings"][m]["rating"] for m in "abc"]
    assert np.mean(ratings) == pytest.approx(1000.0)
    assert ratings[0] > ratings[1] > ratings[2]
    for m in "abc":
        lo95, hi95 = out["ratings"][m]["ci95"]
        lo68, hi68 = out["ratings"][m]["ci68"]
        assert lo95 <= lo68 <= out["ratings"][m]["rating"] <= hi68 <= hi95


def test_all_wins_stays_finite():
    games = [(0, 1, 1.0)] * 20 + [(1, 0, 0.0)] * 20
    s, _ = fit_bt(games, 2)
    assert np.isfinite(s).all() and s[0] > s[1]
    assert bt_ratings([], ["a"], bootstrap=5)["ratings"]["a"]["rating"] is None
