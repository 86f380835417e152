"""The one statistics module: Bradley-Terry ratings, cluster-bootstrap intervals, position bias.

Both ``summary.json`` (`ja_instruct.judge.summary`) and the report (`ja_instruct.report`)
compute every number with the functions below, so the same judgments, bootstrap size and
seed give the same figures in both.

**Bradley-Terry.** The answer shown FIRST beats the one shown second with probability
``sigmoid(s_first - s_second + h)``: ``s`` are natural-log strengths, ``h`` is the judge's
home (first-position) advantage. A tie is half a win (likelihood ``w log p + (1-w) log(1-p)``,
``w = 0.5``). The fit is maximum a posteriori with weak Gaussian priors: precision
``STRENGTH_PRIOR`` on each strength (keeps a model that wins every game finite, and picks the
centred solution) and ``HOME_PRIOR`` on ``h`` (sd 2 logits: a judge that always prefers the
first answer gets a large but finite ``h`` instead of running off to infinity and taking the
intervals with it). Rakuda's scale: ``rating = 1000 + 400 log10(e) (s - mean s)``: the mean
rating is 1000 and 400 points are 10:1 odds.

**Intervals.** A cluster bootstrap over QUESTIONS: a resample draws questions with
replacement and keeps every judgment of a drawn question together (both orders, every turn,
repeat and judge), because those judgments are correlated and resampling them one by one
makes the intervals too narrow. Percentile intervals (68%: 16th-84th percentile, 95%:
2.5th-97.5th). An interval is never narrower than the one that treats every judgment as
independent (BT: the normal approximation of the posterior, ``inverse Hessian``; means:
``z std / sqrt(n)``): with few questions, or when both orders cancel exactly (a judge that
always picks the first answer), every resample is alike and the bootstrap alone would claim
certainty the data do not give.

**Position bias** = (decisive verdicts won by the answer shown first - those won by the
answer shown second) / decisive verdicts, over the ordered judgments: in [-1, 1], 0 = none,
+1 = the first answer always wins. **Inconsistency** = share of pairs judged in both orders
whose two verdicts differ (those pairs count as a tie in the win/tie/loss counts); `flip_rate` is
the same figure from the records. **First-position win rate** = share of decisive ordered
verdicts won by the first-shown answer (``(1 + position bias) / 2``; 0.5 = none).

**Length-controlled win rate** (`lc_win_rate`): AlpacaEval 2's length GLM, reimplemented with
scipy. **Agreement** (`agreement`): Spearman, Kendall, quadratic-weighted kappa and mean absolute
difference of two raters' scores of the same items (judge vs judge, judge vs humans).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, ndtri

SCALE = 400.0 / math.log(10.0)
ANCHOR = 1000.0
STRENGTH_PRIOR = 1e-3  # precision (1 / variance) of the Gaussian prior on each strength
HOME_PRIOR = 0.25      # precision of the prior on the home term: sd 2 logits
LEVELS = (0.68, 0.95)
VERDICT_VALUE = {"A": 1.0, "tie": 0.5, "B": 0.0}


def ci_key(level: float) -> str:
    """The summary key of an interval level: 0.95 -> ``ci95``, 0.68 -> ``ci68``."""
    return f"ci{round(level * 100, 1):g}"


def to_rating(strengths: np.ndarray) -> np.ndarray:
    """Rakuda's scale: ``1000 + 400 log10(e) (s - mean s)`` (along the last axis)."""
    s = np.asarray(strengths, dtype=float)
    return ANCHOR + SCALE * (s - s.mean(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- records -> games

def is_ok(r: dict) -> bool:
    """A judgment that counts: parsed, and not a refused/failed call (``parse_error`` / ``error``)."""
    return r.get("status", "ok") == "ok"


def first_is_a(r: dict) -> bool:
    """Whether ``model_a`` was shown first (``order`` AB, or ``swapped`` false)."""
    if r.get("order") in ("AB", "BA"):
        return r["order"] == "AB"
    return not r.get("swapped", False)


def pairwise_ok(records: list[dict]) -> list[dict]:
    """The ordered pairwise judgments that count (ok, with a verdict)."""
    return [r for r in records if r.get("mode") == "pairwise" and is_ok(r) and r.get("verdict") in VERDICT_VALUE]


@dataclass
class Games:
    """Ordered games: ``first``/``second`` model indices, ``w`` the first-shown answer's result
    (1 win, 0.5 tie, 0 loss) and ``cluster`` the index of the game's question."""

    models: list[str]
    first: np.ndarray
    second: np.ndarray
    w: np.ndarray
    cluster: np.ndarray
    n_clusters: int


def ordered_games(records: list[dict], questions: list[str] | None = None) -> Games:
    """The BT games of the ordered pairwise judgments: models sorted, clusters = questions
    (indices into ``questions``, default the sorted question ids of the games)."""
    ok = pairwise_ok(records)
    models = sorted({r["model_a"] for r in ok} | {r["model_b"] for r in ok})
    idx = {m: i for i, m in enumerate(models)}
    qids = questions if questions is not None else sorted({str(r["question_id"]) for r in ok})
    qidx = {q: i for i, q in enumerate(qids)}
    first, second, w = [], [], []
    for r in ok:
        a, b, wa = idx[r["model_a"]], idx[r["model_b"]], VERDICT_VALUE[r["verdict"]]
        f, s, wf = (a, b, wa) if first_is_a(r) else (b, a, 1.0 - wa)
        first.append(f)
        second.append(s)
        w.append(wf)
    cl = np.array([qidx[str(r["question_id"])] for r in ok], dtype=int)
    return Games(models, np.array(first, dtype=int), np.array(second, dtype=int), np.array(w, dtype=float),
                 cl, len(qids))


def combine_orders(records: list[dict]) -> list[dict]:
    """One outcome per (judge, question, turn, pair, repeat) from its two orders.

    Equal verdicts stand; differing ones are a tie and ``inconsistent``; ``verdict`` is None
    when either order is missing or did not count (FastChat's rule, applied to every pair).
    """
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r.get("mode") == "pairwise":
            g = (r.get("judge"), str(r["question_id"]), r.get("turn", 1), r["model_a"], r["model_b"],
                 r.get("repeat", 0))
            groups.setdefault(g, {}).setdefault("AB" if first_is_a(r) else "BA", r)
    out = []
    for (_, qid, turn, ma, mb, rep), by in groups.items():
        v1, v2 = ((by[o].get("verdict") if o in by and is_ok(by[o]) else None) for o in ("AB", "BA"))
        verdict = None if v1 is None or v2 is None else v1 if v1 == v2 else "tie"
        r0 = next(iter(by.values()))
        out.append({"question_id": r0["question_id"], "category": r0.get("category"), "turn": turn,
                    "model_a": ma, "model_b": mb, "repeat": rep, "verdict": verdict,
                    "inconsistent": verdict is not None and v1 != v2})
    return out


def _position_counts(records: list[dict]) -> tuple[int, int]:
    """(decisive ordered verdicts won by the answer shown first, those won by the one shown second)."""
    first = second = 0
    for r in pairwise_ok(records):
        if r["verdict"] != "tie":
            if (r["verdict"] == "A") == first_is_a(r):
                first += 1
            else:
                second += 1
    return first, second


def position_bias(records: list[dict]) -> float | None:
    """(first-shown wins - second-shown wins) / decisive ordered verdicts; None when none."""
    first, second = _position_counts(records)
    return (first - second) / (first + second) if first + second else None


def first_position_win_rate(records: list[dict]) -> float | None:
    """Share of the decisive ordered verdicts (ties left out) won by the answer shown first:
    0.5 = no position preference; ``(1 + position_bias) / 2``. None when no verdict is decisive."""
    first, second = _position_counts(records)
    return first / (first + second) if first + second else None


def inconsistency(combined: list[dict]) -> float | None:
    """Share of pairs judged in both orders whose verdicts differ (from `combine_orders`)."""
    both = [c for c in combined if c["verdict"] is not None]
    return sum(c["inconsistent"] for c in both) / len(both) if both else None


def flip_rate(records: list[dict]) -> float | None:
    """Share of the pairs judged in both orders (per judge, question, turn, pair and repeat)
    whose verdict changes when the two answers swap places (A -> tie counts as a change):
    `inconsistency` of `combine_orders`. None when no pair has both orders."""
    return inconsistency(combine_orders(records))


# --------------------------------------------------------------------------- bootstrap

def cluster_weights(n_clusters: int, bootstrap: int, seed: int) -> np.ndarray:
    """``(bootstrap, n_clusters)`` multiplicities of a cluster bootstrap: how often each question
    is drawn in each resample (rows sum to ``n_clusters``)."""
    rng = np.random.default_rng(seed)
    if n_clusters == 0 or bootstrap <= 0:
        return np.zeros((0, n_clusters))
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=bootstrap).astype(float)


def _interval(boot: np.ndarray, estimate: float, floor_se: float, level: float) -> list[float] | None:
    """Percentile interval of ``boot``, widened to at least ``estimate +- z floor_se``."""
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return None
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    half = float(ndtri((1 + level) / 2)) * floor_se  # ndtri: the normal quantile z
    return [float(min(lo, estimate - half)), float(max(hi, estimate + half))]


def mean_ci(values: np.ndarray, cluster: np.ndarray, weights: np.ndarray,
            levels: tuple[float, ...] = (0.95,)) -> dict[str, list[float] | None]:
    """Intervals of the mean of ``values`` by the cluster bootstrap ``weights``
    (`cluster_weights`; ``cluster[i]`` is the question of value i): ``{"ci95": [lo, hi]}``."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or weights.shape[0] == 0:
        return {ci_key(lv): None for lv in levels}
    n_c = weights.shape[1]
    sums = np.bincount(cluster, weights=v, minlength=n_c)
    counts = np.bincount(cluster, minlength=n_c).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (weights @ sums) / (weights @ counts)  # NaN where a resample drew none of its questions
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return {ci_key(lv): _interval(boot, float(v.mean()), se, lv) for lv in levels}


# --------------------------------------------------------------------------- Bradley-Terry

def _design(games: Games, home: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Games aggregated per (question, ordered pair): the design matrix ``A`` (pair -> +1 first,
    -1 second, +1 home; no home column entries without ``home``) and per-question game counts
    ``N`` and first-shown wins ``W``."""
    n = len(games.models)
    code = games.first * n + games.second
    pairs, inv = np.unique(code, return_inverse=True)
    A = np.zeros((len(pairs), n + 1))
    A[np.arange(len(pairs)), pairs // n] += 1.0
    A[np.arange(len(pairs)), pairs % n] -= 1.0
    A[:, n] = 1.0 if home else 0.0
    size = games.n_clusters * len(pairs)
    cell = games.cluster * len(pairs) + inv
    N = np.bincount(cell, minlength=size).reshape(games.n_clusters, len(pairs)).astype(float)
    W = np.bincount(cell, weights=games.w, minlength=size).reshape(games.n_clusters, len(pairs))
    prior = np.r_[np.full(n, STRENGTH_PRIOR), HOME_PRIOR]
    return A, N, W, prior


def _objective(x: np.ndarray, A: np.ndarray, N: np.ndarray, W: np.ndarray, prior: np.ndarray):
    """Negative log posterior, gradient and Hessian; ``x`` may be a batch ``(B, k)`` with
    ``N``/``W`` of shape ``(B, P)``."""
    d = x @ A.T
    p = expit(d)
    f = (W * np.logaddexp(0.0, -d) + (N - W) * np.logaddexp(0.0, d)).sum(-1) + 0.5 * (prior * x * x).sum(-1)
    g = (N * p - W) @ A + prior * x
    H = np.einsum("...p,pi,pj->...ij", N * p * (1 - p), A, A) + np.diag(prior)
    return f, g, H


def _fit(A, N, W, prior) -> np.ndarray:
    """The posterior mode for aggregated counts (scipy's trust-region Newton on an exact Hessian)."""
    res = minimize(lambda x: _objective(x, A, N, W, prior)[:2], np.zeros(A.shape[1]), jac=True,
                   hess=lambda x: _objective(x, A, N, W, prior)[2], method="trust-exact", options={"gtol": 1e-10})
    return res.x


def _fit_batch(A, N, W, prior, x0: np.ndarray, iters: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Posterior modes of many resamples at once: Newton steps with backtracking, all
    resamples in one array and warm-started at ``x0`` (the full-data fit). The objective is
    strictly convex, so this finds the same optimum as `_fit`, ~100x faster than one scipy
    call per resample; a resample that has not converged is handed to `_fit`."""
    X = np.tile(x0, (N.shape[0], 1))
    f, g, H = _objective(X, A, N, W, prior)
    todo = np.abs(g).max(-1) > tol
    for _ in range(iters):
        if not todo.any():
            break
        i = np.flatnonzero(todo)
        step = np.linalg.solve(H[i], g[i][..., None])[..., 0]
        t = np.ones(len(i))
        for _ in range(40):  # halve the step where the objective did not decrease enough (Armijo)
            fn, gn, Hn = _objective(X[i] - t[:, None] * step, A, N[i], W[i], prior)
            # (the last term forgives rounding: near the optimum a step gains less than f's precision)
            bad = fn > f[i] - 1e-4 * t * (g[i] * step).sum(-1) + 1e-12 * np.abs(f[i])
            if not bad.any():
                break
            t = np.where(bad, t / 2, t)
        X[i] -= t[:, None] * step
        f[i], g[i], H[i] = fn, gn, Hn
        todo[i] = np.abs(gn).max(-1) > tol
    for j in np.flatnonzero(todo):
        X[j] = _fit(A, N[j], W[j], prior)
    return X


def fit_bt(games: Games, home: bool = True) -> tuple[np.ndarray, float]:
    """Strengths (natural log, mean 0, in ``games.models`` order) and the home term (0 without ``home``)."""
    A, N, W, prior = _design(games, home)
    x = _fit(A, N.sum(0), W.sum(0), prior)
    n = len(games.models)
    return x[:n] - x[:n].mean(), float(x[n])


def bt_ratings(games: Games, bootstrap: int = 200, seed: int = 0, levels: tuple[float, ...] = LEVELS,
               weights: np.ndarray | None = None) -> dict:
    """Ratings with cluster-bootstrap intervals::

        {"ratings": {model: {"rating", "strength", "ci68": [lo, hi], "ci95": [lo, hi]}},
         "home_advantage": h (logit), "home_advantage_rating": h in rating points, "games": n}

    ``weights`` (`cluster_weights`) default to ``cluster_weights(games.n_clusters, bootstrap, seed)``;
    intervals are None without resamples.
    """
    n = len(games.models)
    if len(games.w) == 0:
        return {"ratings": {}, "home_advantage": None, "home_advantage_rating": None, "games": 0}
    A, N, W, prior = _design(games)
    x = _fit(A, N.sum(0), W.sum(0), prior)
    rating = to_rating(x[:n])
    if weights is None:
        weights = cluster_weights(games.n_clusters, bootstrap, seed)
    cis: dict[str, list] = {ci_key(lv): [None] * n for lv in levels}
    if weights.shape[0]:
        boots = to_rating(_fit_batch(A, weights @ N, weights @ W, prior, x)[:, :n])
        cov = np.linalg.inv(_objective(x, A, N.sum(0), W.sum(0), prior)[2])[:n, :n]
        centre = np.eye(n) - 1.0 / n  # the covariance of the centred strengths
        se = SCALE * np.sqrt(np.clip(np.diag(centre @ cov @ centre), 0, None))
        for lv in levels:
            cis[ci_key(lv)] = [_interval(boots[:, i], float(rating[i]), float(se[i]), lv) for i in range(n)]
    ratings = {m: {"rating": float(rating[i]), "strength": float(x[i] - x[:n].mean()),
                   **{k: v[i] for k, v in cis.items()}} for i, m in enumerate(games.models)}
    return {"ratings": ratings, "home_advantage": float(x[n]), "home_advantage_rating": float(SCALE * x[n]),
            "games": int(len(games.w))}


# --------------------------------------------------------------------------- paired ratios

def paired_ratio_difference(base_num, base_den, new_num, new_den, bootstrap: int, seed: int,
                            levels: tuple[float, ...] = (0.95,)) -> dict | None:
    """``new - base`` for two ratio-of-sums estimates measured on the SAME clusters, with
    cluster-bootstrap intervals.

    Cluster ``i`` (a held-out conversation, a question) adds ``base_num[i] / base_den[i]`` to the
    base side and ``new_num[i] / new_den[i]`` to the new one; each side's estimate is
    ``sum(num) / sum(den)``: with summed NLLs over token counts, the token-weighted mean NLL per
    token; with summed scores over judgment counts, the mean score; with matching answer turns over
    answer turns per question, a share of turns. A resample draws clusters
    with replacement (`cluster_weights`) and recomputes BOTH ratios from the same draw, so the
    pairing is kept. Percentile intervals, never narrower than the delta-method normal interval
    (influence of cluster i on a ratio ``R``: ``(num_i - R den_i) / mean(den)``; standard error =
    std of the paired influence differences / sqrt(n)), like every interval of this module.

    With one cluster every resample is the data itself and the interval has zero width: it says
    nothing, so a verdict read from it needs a minimum number of clusters (the report's ``MIN_PAIRED``).

    Returns ``{"n", "base", "new", "difference", "lower", "higher", "ci95": [lo, hi] | None, ...}``
    (``lower``/``higher``: clusters whose own new ratio is below/above their base ratio, among those
    with both denominators > 0), or None when either side has no denominator at all.
    """
    a_y, a_x = np.asarray(base_num, dtype=float), np.asarray(base_den, dtype=float)
    b_y, b_x = np.asarray(new_num, dtype=float), np.asarray(new_den, dtype=float)
    n = a_y.size
    if not (a_x.size == b_y.size == b_x.size == n):
        raise ValueError("paired_ratio_difference: the four arrays must have one value per cluster")
    if n == 0 or a_x.sum() <= 0 or b_x.sum() <= 0:
        return None
    ra, rb = a_y.sum() / a_x.sum(), b_y.sum() / b_x.sum()
    both = (a_x > 0) & (b_x > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        own_a, own_b = a_y / a_x, b_y / b_x
    lower = int(np.sum(both & (own_b < own_a)))
    higher = int(np.sum(both & (own_b > own_a)))
    w = cluster_weights(n, bootstrap, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (w @ b_y) / (w @ b_x) - (w @ a_y) / (w @ a_x)  # NaN where a resample has no denominator
    infl = (b_y - rb * b_x) / b_x.mean() - (a_y - ra * a_x) / a_x.mean()
    se = float(infl.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    diff = float(rb - ra)
    cis = {ci_key(lv): (_interval(boot, diff, se, lv) if w.shape[0] else None) for lv in levels}
    return {"n": int(n), "base": float(ra), "new": float(rb), "difference": diff, "lower": lower,
            "higher": higher, **cis}


# --------------------------------------------------------------------------- length-controlled win rate

LC_CS = np.logspace(-4, 4, 10)  # the grid of inverse penalties AlpacaEval's cross-validation picks from
LC_FOLDS = 5                    # question folds of that cross-validation
LC_DEFAULT_C = 100.0            # the penalty AlpacaEval uses when there is nothing to cross-validate


def _lc_lengths(lengths: dict) -> dict[tuple[str, str, int], float]:
    """``lengths`` keyed by ``(model, str(question_id), int(turn))`` (ids may be int or str in records)."""
    return {(str(m), str(q), int(t)): float(v) for (m, q, t), v in lengths.items() if v is not None}


def _soft_loss(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed log loss of soft labels ``y`` (a tie is 0.5) under ``sigmoid(X w)``, and its gradient."""
    z = X @ w
    f = float((y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)).sum())
    return f, X.T @ (expit(z) - y)


def _l1_logistic(X: np.ndarray, y: np.ndarray, C: float) -> np.ndarray:
    """``argmin C * loss(w) + |w|_1`` (liblinear's L1 objective, which AlpacaEval fits): ``w`` is split
    into non-negative parts ``u - v`` so that L-BFGS-B can handle the kink at 0."""
    k, n = X.shape[1], max(len(y), 1)

    def obj(uv):  # the same minimiser divided by C n: well scaled for every C of the grid
        f, g = _soft_loss(uv[:k] - uv[k:], X, y)
        pen = 1.0 / (C * n)
        return f / n + pen * uv.sum(), np.r_[g / n + pen, -g / n + pen]

    res = minimize(obj, np.zeros(2 * k), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * k),
                   options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-10})
    return res.x[:k] - res.x[k:]


def _lc_fit(y: np.ndarray, delta: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """AlpacaEval 2's length GLM for one model against the baseline: ``P(model wins) =
    sigmoid(theta_model + theta_len * tanh(delta / std(delta)))``, no other intercept, L1 penalty
    whose strength is chosen by grouped (per question) cross-validation of the log loss."""
    sd = float(np.std(delta, ddof=1)) if delta.size > 1 else 0.0
    X = np.c_[np.ones_like(delta), np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)]
    folds = np.unique(groups, return_inverse=True)[1] % LC_FOLDS  # question i -> fold i mod 5
    if len(np.unique(folds)) < 2:
        return _l1_logistic(X, y, LC_DEFAULT_C)
    losses = []
    for C in LC_CS:
        fold_loss = []
        for f in np.unique(folds):
            w = _l1_logistic(X[folds != f], y[folds != f], C)
            fold_loss.append(_soft_loss(w, X[folds == f], y[folds == f])[0] / np.sum(folds == f))
        losses.append(np.mean(fold_loss))
    return _l1_logistic(X, y, float(LC_CS[int(np.argmin(losses))]))


def lc_win_rate(records: list[dict], lengths: dict, baseline: str | None = None) -> dict[str, float]:
    """Length-controlled win rate of every model against ``baseline`` (AlpacaEval 2's, reimplemented).

    For each model separately, its ordered pairwise judgments against the baseline (a win 1, a
    tie 0.5, a loss 0; both orders, every turn) are regressed on a model term and the length
    term ``tanh(delta / std delta)``, ``delta`` = the model's answer length minus the baseline's
    in ``lengths[(model, question_id, turn)]`` (characters; judgments without both lengths are left
    out). The LC win rate is the mean predicted win probability with the length difference set to
    0: what the judge would say if both answers were equally long. Like AlpacaEval the fit has no
    intercept beyond the model term and an L1 penalty chosen by 5-fold cross-validation over
    questions (grid ``LC_CS``); unlike it there is no per-instruction difficulty term and no
    regularisation towards AlpacaEval's own "gamed" models (neither exists for our question sets).

    ``baseline`` None = the first model in sorted order. Returns ``{model: rate}`` for each model
    with at least one usable judgment against the baseline (the baseline itself is left out).
    """
    ok = pairwise_ok(records)
    if baseline is None:
        models = sorted({r["model_a"] for r in ok} | {r["model_b"] for r in ok})
        if not models:
            return {}
        baseline = models[0]
    lens = _lc_lengths(lengths)
    rows: dict[str, list[tuple[float, float, str]]] = {}
    for r in ok:
        if baseline not in (r["model_a"], r["model_b"]) or r["model_a"] == r["model_b"]:
            continue
        m = r["model_b"] if r["model_a"] == baseline else r["model_a"]
        key = (str(r["question_id"]), int(r.get("turn") or 1))
        lm, lb = lens.get((m, *key)), lens.get((baseline, *key))
        if lm is None or lb is None:
            continue
        wa = VERDICT_VALUE[r["verdict"]]
        rows.setdefault(m, []).append((wa if r["model_a"] == m else 1.0 - wa, lm - lb, key[0]))
    out = {}
    for m, obs in sorted(rows.items()):
        y, delta, groups = (np.array(col) for col in zip(*obs))
        w = _lc_fit(y.astype(float), delta.astype(float), groups)
        out[m] = float(np.mean(expit(np.full(len(y), w[0]))))  # every judgment, length term at 0
    return out


# --------------------------------------------------------------------------- agreement

def to_grades(values) -> np.ndarray:
    """Scores rounded half up to integer grades (a mean over repeats of 2.5 is grade 3)."""
    return np.floor(np.asarray(values, dtype=float) + 0.5).astype(int)


def quadratic_kappa(x, y) -> float | None:
    """Cohen's kappa with quadratic weights of two raters' integer grades (`to_grades`):
    ``1 - sum(W O) / sum(W E)``, ``O`` the confusion matrix over the grades lo..hi seen on either
    side, ``E`` the outer product of its margins / n, ``W_ij = (i - j)^2``. None when undefined
    (no items, or both raters give one and the same grade)."""
    a, b = to_grades(x), to_grades(y)
    if a.size == 0:
        return None
    lo, k = min(a.min(), b.min()), int(max(a.max(), b.max()) - min(a.min(), b.min())) + 1
    O = np.zeros((k, k))
    np.add.at(O, (a - lo, b - lo), 1.0)
    E = np.outer(O.sum(1), O.sum(0)) / O.sum()
    i = np.arange(k)
    W = (i[:, None] - i[None, :]) ** 2.0
    den = float((W * E).sum())
    return 1.0 - float((W * O).sum()) / den if den > 0 else None


def agreement(x, y, *, ordinal: bool) -> dict:
    """How far two raters of the same items agree (``x[i]``, ``y[i]``: their scores of item i)::

        {"n", "spearman", "kendall", "qwk", "mad"}

    Spearman's rho and Kendall's tau-b by `scipy.stats`, ``qwk`` the quadratic-weighted kappa of
    the scores rounded to integer grades (`quadratic_kappa`; None unless ``ordinal``), ``mad`` the
    mean absolute difference. A figure that is undefined or meaningless (fewer than 3 items, one side
    constant) is None.
    """
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("agreement: x and y must be 1-d with one score per item each")
    out = {"n": int(a.size), "spearman": None, "kendall": None, "qwk": None,
           "mad": float(np.abs(a - b).mean()) if a.size else None}
    # Fewer than 3 items: any two points give +-1, which would read as perfect (dis)agreement.
    # Constant input: both coefficients are undefined.
    if a.size >= 3 and np.ptp(a) > 0 and np.ptp(b) > 0:
        rho, tau = spearmanr(a, b)[0], kendalltau(a, b)[0]
        out["spearman"] = float(rho) if np.isfinite(rho) else None
        out["kendall"] = float(tau) if np.isfinite(tau) else None
    if ordinal and a.size >= 3:
        out["qwk"] = quadratic_kappa(a, b)
    return out
