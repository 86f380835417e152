"""summary.json from judgment records (the report reads it; schema in HELPERS.md).

Single mode: per model the mean 1-10 score over the judgments that parsed
(``n`` counts them), its std, a normal-approximation 95% CI of the mean
(``mean +- 1.96 std / sqrt(n)``), the parse errors (never averaged) and per-category /
per-turn means. With repeats, ``repeat_std`` is the mean over items of the std across
repeats (the judge's own noise).

Pairwise modes: per model the same statistics of the WIN RATE over combined outcomes
(both orders merged, see `pairwise.combine`; win 1, tie 0.5, loss 0), plus the
win/tie/loss matrix (row model vs column model), Bradley-Terry ratings with CIs
(fit on the ordered judgments, with the position term), ``position_bias`` =
(decisive verdicts for the first-shown answer - for the second) / decisive verdicts,
in [-1, 1], 0 = none, and ``inconsistency`` = share of pairs whose two orders disagree.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from ja_instruct.judge.bt import bt_ratings
from ja_instruct.judge.pairwise import combine


def _stats(values: list[float]) -> dict:
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    half = 1.96 * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def _means(groups: dict) -> dict:
    return {str(k): float(np.mean(v)) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0])) if v}


def _model_block(values: list[tuple[float, str, int]], parse_errors: int) -> dict:
    block = _stats([v for v, _, _ in values])
    by_cat, by_turn = defaultdict(list), defaultdict(list)
    for v, cat, turn in values:
        by_cat[cat].append(v)
        by_turn[turn].append(v)
    block.update(parse_errors=parse_errors, per_category=_means(by_cat), per_turn=_means(by_turn))
    return block


def single_models(records: list[dict], models: list[str]) -> dict:
    out = {}
    for m in models:
        mine = [r for r in records if r.get("model") == m]
        vals = [(r["score"], r.get("category"), r.get("turn", 1)) for r in mine
                if r.get("status") == "ok" and r.get("score") is not None]
        block = _model_block(vals, sum(r.get("status") == "parse_error" for r in mine))
        reps = defaultdict(list)
        for r in mine:
            if r.get("status") == "ok" and r.get("score") is not None:
                reps[(str(r["question_id"]), r.get("turn", 1))].append(r["score"])
        spreads = [float(np.std(v, ddof=1)) for v in reps.values() if len(v) > 1]
        block["repeat_std"] = float(np.mean(spreads)) if spreads else None
        out[m] = block
    return out


def pairwise_block(records: list[dict], models: list[str], bootstrap: int, seed: int) -> tuple[dict, dict]:
    """(per-model win-rate blocks, the summary's ``pairwise`` section)."""
    idx = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins, ties, losses = np.zeros((n, n), int), np.zeros((n, n), int), np.zeros((n, n), int)
    per_model = defaultdict(list)
    combined = combine(records)
    both = [c for c in combined if c["verdict"] is not None]
    for c in both:
        a, b = idx[c["model_a"]], idx[c["model_b"]]
        v = c["verdict"]
        wa = 1.0 if v == "A" else 0.5 if v == "tie" else 0.0
        if v == "tie":
            ties[a, b] += 1
            ties[b, a] += 1
        else:
            w_, l_ = (a, b) if v == "A" else (b, a)
            wins[w_, l_] += 1
            losses[l_, w_] += 1
        per_model[c["model_a"]].append((wa, c.get("category"), c["turn"]))
        per_model[c["model_b"]].append((1.0 - wa, c.get("category"), c["turn"]))
    pe = Counter()
    games, shown = [], Counter()
    for r in records:
        if r.get("mode") != "pairwise":
            continue
        if r.get("status") != "ok":
            pe[r["model_a"]] += 1
            pe[r["model_b"]] += 1
            continue
        a, b = idx[r["model_a"]], idx[r["model_b"]]
        wa = {"A": 1.0, "tie": 0.5, "B": 0.0}[r["verdict"]]
        games.append((a, b, wa) if r.get("order", "AB") == "AB" else (b, a, 1.0 - wa))
        shown[r.get("verdict_shown") or ("A" if games[-1][2] == 1.0 else "B" if games[-1][2] == 0.0 else "tie")] += 1
    decisive = shown["A"] + shown["B"]
    bt = bt_ratings(games, models, bootstrap=bootstrap, seed=seed)
    section = {
        "models": models, "wins": wins.tolist(), "ties": ties.tolist(), "losses": losses.tolist(),
        "bt": {m: {k: v for k, v in bt["ratings"][m].items()} for m in models},
        "home_advantage": bt["home_advantage"], "home_advantage_rating": bt["home_advantage_rating"],
        "position_bias": (shown["A"] - shown["B"]) / decisive if decisive else None,
        "inconsistency": (sum(c["inconsistent"] for c in both) / len(both)) if both else None,
        "pairs_judged": len(both), "pairs_incomplete": len(combined) - len(both), "games": len(games),
    }
    blocks = {m: dict(_model_block(per_model[m], pe[m]), metric="win_rate") for m in models}
    return blocks, section


def build_summary(records: list[dict], mode: str, models: list[str], *, judge: str, question_set: str | None,
                  answers_dir: str | None, bootstrap: int = 200, seed: int = 0, extra: dict | None = None) -> dict:
    """The whole summary.json dict (``mode`` is single | pairwise | pairwise-baseline)."""
    prompts = Counter(r.get("prompt") for r in records)
    summary = {
        "mode": mode, "judge": judge,
        "prompt": prompts.most_common(1)[0][0] if prompts else None, "prompts": sorted(p for p in prompts if p),
        "question_set": question_set, "questions": question_set, "answers_dir": answers_dir,
        "n_judgments": len(records),
        "parse_errors": sum(r.get("status") == "parse_error" for r in records),
    }
    if mode == "single":
        summary["models"] = single_models(records, models)
        summary["pairwise"] = None
    else:
        summary["models"], summary["pairwise"] = pairwise_block(records, models, bootstrap, seed)
    summary.update(extra or {})
    return summary
