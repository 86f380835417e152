"""The numbers of a report: bootstrap CIs, per-category/turn means, health, pairwise ratings.

Everything is computed from the judgment records themselves (not from the judge's
summary.json), so several judge folders can be merged and the same code serves a
FastChat import. Bootstraps are seeded: the same inputs give the same report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)  # Bradley-Terry log-strength -> Elo-like points
ELO_BASE = 1000.0


def bootstrap_ci(values, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN, NaN when empty)."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return (float(lo), float(hi))


@dataclass
class ModelScores:
    """Single-answer grading results of one model."""

    model: str
    scores: list[float]
    n: int
    mean: float
    std: float
    median: float
    ci: tuple[float, float]
    parse_errors: int
    per_category: dict[str, float] = field(default_factory=dict)
    per_category_n: dict[str, int] = field(default_factory=dict)
    per_turn: dict[int, float] = field(default_factory=dict)
    health: dict[str, float] = field(default_factory=dict)


def single_scores(judgments: list[dict], n_boot: int, ci: float, seed: int) -> dict[str, ModelScores]:
    """Mean ± bootstrap CI, per-category and per-turn means of every single-graded model."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in judgments:
        if r.get("mode") == "single" and r.get("model"):
            by_model[r["model"]].append(r)
    out = {}
    for i, (m, recs) in enumerate(sorted(by_model.items())):
        ok = [r for r in recs if r.get("status", "ok") == "ok" and r.get("score") is not None]
        s = [float(r["score"]) for r in ok]
        cats: dict[str, list[float]] = defaultdict(list)
        turns: dict[int, list[float]] = defaultdict(list)
        for r in ok:
            cats[str(r.get("category") or "uncategorised")].append(float(r["score"]))
            turns[int(r.get("turn") or 1)].append(float(r["score"]))
        out[m] = ModelScores(
            model=m, scores=s, n=len(s),
            mean=float(np.mean(s)) if s else math.nan,
            std=float(np.std(s, ddof=1)) if len(s) > 1 else 0.0,
            median=float(np.median(s)) if s else math.nan,
            ci=bootstrap_ci(s, n_boot, ci, seed + i),
            parse_errors=sum(1 for r in recs if r.get("status") == "parse_error"),
            per_category={c: float(np.mean(v)) for c, v in sorted(cats.items())},
            per_category_n={c: len(v) for c, v in sorted(cats.items())},
            per_turn={t: float(np.mean(v)) for t, v in sorted(turns.items())},
        )
    return out


HEALTH_FLAGS = ("non_japanese", "looping", "truncated", "empty")


def turn_flags(h: dict, min_ja_ratio: float, max_repeat_ratio: float) -> list[str]:
    """The health flags of one answer turn (from the generate stage's ``health`` record)."""
    flags = []
    text_present = not h.get("empty")
    if text_present and h.get("ja_ratio") is not None and float(h["ja_ratio"]) < min_ja_ratio:
        flags.append("non_japanese")
    if h.get("loop") or (h.get("repeat_ratio") is not None and float(h["repeat_ratio"]) >= max_repeat_ratio):
        flags.append("looping")
    if h.get("truncated"):
        flags.append("truncated")
    if h.get("empty"):
        flags.append("empty")
    return flags


def answer_health(answers: dict[str, dict], min_ja_ratio: float, max_repeat_ratio: float) -> dict[str, float] | None:
    """Share of answer turns flagged per flag (and ``any``); None when answers carry no ``health``."""
    counts = dict.fromkeys(HEALTH_FLAGS + ("any",), 0)
    n = 0
    for a in answers.values():
        for h in a.get("health") or []:
            if not isinstance(h, dict):
                continue
            n += 1
            flags = turn_flags(h, min_ja_ratio, max_repeat_ratio)
            for f in flags:
                counts[f] += 1
            counts["any"] += bool(flags)
    if n == 0:
        return None
    return {k: v / n for k, v in counts.items()} | {"turns": n}


# --------------------------------------------------------------------------- pairwise

@dataclass
class Pairwise:
    """Pairwise results: counts, win-rate matrix, Bradley-Terry ratings, bias measures."""

    models: list[str]
    wins: np.ndarray      # wins[i, j]: times i beat j
    ties: np.ndarray
    n_judgments: int
    parse_errors: int
    win_rate: np.ndarray  # (wins + ties/2) / games, NaN where never compared
    ratings: dict[str, float]
    rating_ci: dict[str, tuple[float, float]]
    position_bias: float | None
    inconsistency: float | None


def bradley_terry(wins: np.ndarray, ties: np.ndarray, iters: int = 500, tol: float = 1e-9) -> np.ndarray:
    """Bradley-Terry log-strengths by Hunter's MM algorithm; a tie counts half a win each way.

    A small prior (one half-game against every other model, split evenly) keeps a
    model that won or lost everything finite. Returned centred at 0.
    """
    k = wins.shape[0]
    w = wins + 0.5 * ties + 0.5 * (1 - np.eye(k)) * 0.5  # prior: 0.25 win each way per pair
    games = w + w.T
    p = np.ones(k)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = w.sum(axis=1) / np.maximum(denom, 1e-12)
        new /= np.exp(np.mean(np.log(new)))
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    theta = np.log(p)
    return theta - theta.mean()


def _order_of(r: dict) -> bool | None:
    """True if model_a was shown second (the judge saw B first), when the record says so."""
    if "swapped" in r:
        return bool(r["swapped"])
    order = r.get("order")
    if order in ("AB", "BA"):
        return order == "BA"
    return None


def pairwise_stats(judgments: list[dict], n_boot: int, ci: float, seed: int,
                   summary: dict | None = None) -> Pairwise | None:
    """Win/tie counts, win rates and Bradley-Terry ratings (bootstrap CIs over judgments)."""
    recs = [r for r in judgments if r.get("mode") == "pairwise" and r.get("model_a") and r.get("model_b")]
    if not recs:
        return None
    ok = [r for r in recs if r.get("status", "ok") == "ok" and r.get("verdict") in ("A", "B", "tie")]
    models = sorted({r["model_a"] for r in recs} | {r["model_b"] for r in recs})
    idx = {m: i for i, m in enumerate(models)}
    k = len(models)

    def counts(rows) -> tuple[np.ndarray, np.ndarray]:
        w, t = np.zeros((k, k)), np.zeros((k, k))
        for r in rows:
            a, b = idx[r["model_a"]], idx[r["model_b"]]
            if r["verdict"] == "A":
                w[a, b] += 1
            elif r["verdict"] == "B":
                w[b, a] += 1
            else:
                t[a, b] += 1
                t[b, a] += 1
        return w, t

    wins, ties = counts(ok)
    games = wins + wins.T + ties
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(games > 0, (wins + 0.5 * ties) / games, np.nan)
    theta = bradley_terry(wins, ties)
    rng = np.random.default_rng(seed)
    boots = []
    if ok:
        for _ in range(min(n_boot, 1000)):  # the MM fit is cheap but not free: 1000 is plenty
            sample = [ok[i] for i in rng.integers(0, len(ok), size=len(ok))]
            boots.append(bradley_terry(*counts(sample)))
    a = (1.0 - ci) / 2.0
    ratings = {m: ELO_BASE + ELO_SCALE * theta[i] for m, i in idx.items()}
    if boots:
        b = np.array(boots)
        lo, hi = np.quantile(b, [a, 1 - a], axis=0)
        rating_ci = {m: (ELO_BASE + ELO_SCALE * lo[i], ELO_BASE + ELO_SCALE * hi[i]) for m, i in idx.items()}
    else:
        rating_ci = {m: (ratings[m], ratings[m]) for m in models}

    # Position bias: among decisive verdicts whose presentation order is recorded, the share
    # won by whichever answer was shown first (0.5 = no bias). Inconsistency: among items
    # judged in both orders, the share whose two verdicts disagree.
    first_wins = decisive = 0
    groups: dict[tuple, list[str]] = defaultdict(list)
    for r in ok:
        swapped = _order_of(r)
        if swapped is not None and r["verdict"] != "tie":
            decisive += 1
            first_wins += (r["verdict"] == "A") != swapped
        key = (r["question_id"], r.get("turn", 1), r.get("judge"), r.get("repeat", 0),
               tuple(sorted((r["model_a"], r["model_b"]))))
        # normalise the verdict to the sorted pair so the two orders compare
        v = r["verdict"]
        if v != "tie" and r["model_a"] != key[-1][0]:
            v = "B" if v == "A" else "A"
        groups[key].append(v)
    s = (summary or {}).get("pairwise") or {}
    position_bias = first_wins / decisive if decisive else s.get("position_bias")
    both = [v for v in groups.values() if len(v) >= 2]
    inconsistency = (sum(1 for v in both if len(set(v)) > 1) / len(both)) if both else s.get("inconsistency")
    return Pairwise(models=models, wins=wins, ties=ties, n_judgments=len(recs),
                    parse_errors=len(recs) - len(ok), win_rate=win_rate, ratings=ratings,
                    rating_ci=rating_ci, position_bias=position_bias, inconsistency=inconsistency)
