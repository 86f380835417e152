"""Bradley-Terry ratings from pairwise verdicts, with a position ("home advantage") term.

Model: the answer shown FIRST beats the one shown second with probability
``sigmoid(s_first - s_second + h)``, where ``s`` are natural-log strengths and ``h`` is
the judge's position bias (h > 0: it favours the first answer). A tie counts as half a
win for each side (the likelihood term ``w*log p + (1-w)*log(1-p)`` with ``w = 0.5``).

Fit: maximum likelihood with `scipy.optimize.minimize` (L-BFGS-B, analytic gradient).
A weak Gaussian prior on the strengths (``alpha/2 * |s|^2``, default alpha 1e-3) keeps
the estimate finite when a model wins or loses every game; it is negligible otherwise
and, like any L2 term, also picks the centred solution. ``h`` is not penalised.

Scale (Rakuda's): ``rating = 1000 + 400 * log10(e) * s = 1000 + 400 * s / ln 10``, with
``s`` anchored to mean 0, so the MEAN rating of the judged models is 1000 and a
400-point gap means 10:1 odds. Confidence intervals: percentile bootstrap over games
(68%: 16th-84th, 95%: 2.5th-97.5th percentiles).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize

SCALE = 400.0 / math.log(10.0)
ANCHOR = 1000.0


def _nll_grad(x: np.ndarray, first: np.ndarray, second: np.ndarray, w: np.ndarray, n: int,
              home: bool, alpha: float) -> tuple[float, np.ndarray]:
    s = x[:n]
    h = x[n] if home else 0.0
    d = s[first] - s[second] + h
    # log sigmoid(d) and log sigmoid(-d), numerically stable
    ls_pos = -np.logaddexp(0.0, -d)
    ls_neg = -np.logaddexp(0.0, d)
    nll = -np.sum(w * ls_pos + (1 - w) * ls_neg) + 0.5 * alpha * np.dot(s, s)
    g = 1.0 / (1.0 + np.exp(-d)) - w  # d nll / d d
    grad = np.zeros_like(x)
    grad[:n] = np.bincount(first, weights=g, minlength=n) - np.bincount(second, weights=g, minlength=n) + alpha * s
    if home:
        grad[n] = g.sum()
    return float(nll), grad


def fit_bt(games: list[tuple[int, int, float]] | np.ndarray, n: int, home: bool = True,
           alpha: float = 1e-3) -> tuple[np.ndarray, float]:
    """MLE strengths (natural log, mean 0) and the home term from ``(first, second, w)`` games.

    ``w`` is the first-shown model's result: 1 win, 0.5 tie, 0 loss.
    """
    g = np.asarray(games, dtype=float).reshape(-1, 3)
    first, second, w = g[:, 0].astype(int), g[:, 1].astype(int), g[:, 2]
    x0 = np.zeros(n + (1 if home else 0))
    res = minimize(_nll_grad, x0, args=(first, second, w, n, home, alpha), jac=True, method="L-BFGS-B",
                   options={"maxiter": 1000, "gtol": 1e-9})
    s = res.x[:n] - res.x[:n].mean()
    return s, float(res.x[n]) if home else 0.0


def to_rating(strengths: np.ndarray) -> np.ndarray:
    """Rakuda's scale: ``1000 + 400 * log10(e) * (s - mean s)``."""
    s = np.asarray(strengths, dtype=float)
    return ANCHOR + SCALE * (s - s.mean())


def bt_ratings(games: list[tuple[int, int, float]], models: list[str], bootstrap: int = 200, seed: int = 0,
               home: bool = True, alpha: float = 1e-3) -> dict:
    """Ratings with bootstrap CIs: ``{"ratings": {model: {rating, ci68, ci95, strength}},
    "home_advantage": h (logit), "home_advantage_rating": h in rating points, "games": n}``."""
    n = len(models)
    g = np.asarray(games, dtype=float).reshape(-1, 3)
    if len(g) == 0:
        return {"ratings": {m: {"rating": None, "ci68": None, "ci95": None, "strength": None} for m in models},
                "home_advantage": None, "home_advantage_rating": None, "games": 0}
    s, h = fit_bt(g, n, home, alpha)
    rating = to_rating(s)
    boots = []
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        sample = g[rng.integers(0, len(g), len(g))]
        bs, _ = fit_bt(sample, n, home, alpha)
        boots.append(to_rating(bs))
    boots = np.array(boots) if boots else None
    out = {}
    for i, m in enumerate(models):
        ci68 = ci95 = None
        if boots is not None:
            ci68 = [float(np.percentile(boots[:, i], 16)), float(np.percentile(boots[:, i], 84))]
            ci95 = [float(np.percentile(boots[:, i], 2.5)), float(np.percentile(boots[:, i], 97.5))]
        out[m] = {"rating": float(rating[i]), "ci68": ci68, "ci95": ci95, "strength": float(s[i])}
    return {"ratings": out, "home_advantage": h, "home_advantage_rating": SCALE * h, "games": int(len(g))}


def simulate_games(strengths: np.ndarray, n_games: int, home: float = 0.0, tie_band: float = 0.0,
                   seed: int = 0) -> np.ndarray:
    """Games drawn from the model itself (for tests): random pairs, random order."""
    rng = np.random.default_rng(seed)
    n = len(strengths)
    first = rng.integers(0, n, n_games)
    second = (first + rng.integers(1, n, n_games)) % n
    d = strengths[first] - strengths[second] + home
    p = 1.0 / (1.0 + np.exp(-d))
    u = rng.random(n_games)
    w = np.where(u < p, 1.0, 0.0)
    if tie_band:
        w = np.where(np.abs(u - p) < tie_band, 0.5, w)
    return np.stack([first, second, w], axis=1)
