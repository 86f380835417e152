"""summary.json from judgment records (the report reads it; schema in docs/judge.md).

Every statistic comes from `ja_instruct.stats` (the report calls `single_models` and
`pairwise_block` below on the same records, so both show the same numbers).

Records have ``status`` ok | parse_error | error (a refused or failed judge call, with an
``error`` message). Only ``ok`` records are ever averaged; the others are counted per model
(``parse_errors``, ``errors``) and in total.

Single mode: per model the mean 1-10 score over the judgments that count (``n``), its std,
its cluster-bootstrap interval (``ci95``: questions resampled), per-category and per-turn
means, and ``repeat_std``: with repeats, the mean over items of the std across repeats
(the judge's own noise).

Pairwise modes: per model the same statistics of the WIN RATE over combined outcomes (both
orders merged, `ja_instruct.stats.combine_orders`; win 1, tie 0.5, loss 0), plus the
win/tie/loss matrix (row model vs column model), Bradley-Terry ratings with ``ci68`` /
``ci95`` (fit on the ordered judgments, with the position term), ``home_advantage``,
``position_bias`` and ``inconsistency`` (definitions in `ja_instruct.stats`).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ja_instruct import stats


def _category(r: dict) -> str:
    return str(r.get("category") or "uncategorised")


def _turn(r: dict) -> int:
    return int(r.get("turn") or 1)


def _means(groups: dict) -> dict:
    return {str(k): float(np.mean(v)) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0])) if v}


def _block(values: list[tuple[float, str, int, int]], weights: np.ndarray, levels: tuple[float, ...]) -> dict:
    """n, mean, std, intervals, per-category and per-turn means of (value, category, turn, cluster) rows."""
    v = np.array([x[0] for x in values], dtype=float)
    n = len(v)
    block = {"n": n, "mean": float(v.mean()) if n else None,
             "std": (float(v.std(ddof=1)) if n > 1 else 0.0) if n else None}
    block.update(stats.mean_ci(v, np.array([x[3] for x in values], dtype=int), weights, levels))
    by_cat, by_turn = defaultdict(list), defaultdict(list)
    for val, cat, turn, _ in values:
        by_cat[cat].append(val)
        by_turn[turn].append(val)
    block.update(per_category=_means(by_cat), per_turn=_means(by_turn))
    return block


def _questions(records: list[dict]) -> dict[str, int]:
    """Question id -> cluster index (sorted ids), the unit the bootstrap resamples."""
    return {q: i for i, q in enumerate(sorted({str(r["question_id"]) for r in records}))}


def single_models(records: list[dict], models: list[str], bootstrap: int = 200, seed: int = 0,
                  levels: tuple[float, ...] = (0.95,)) -> dict:
    """Per-model blocks of the single-mode records (see the module doc)."""
    records = [r for r in records if r.get("mode") == "single"]
    qidx = _questions(records)
    weights = stats.cluster_weights(len(qidx), bootstrap, seed)
    out = {}
    for m in models:
        mine = [r for r in records if r.get("model") == m]
        ok = [r for r in mine if stats.is_ok(r) and r.get("score") is not None]
        block = _block([(float(r["score"]), _category(r), _turn(r), qidx[str(r["question_id"])]) for r in ok],
                       weights, levels)
        block.update(parse_errors=sum(r.get("status") == "parse_error" for r in mine),
                     errors=sum(r.get("status") == "error" for r in mine))
        # a repeat index seen twice (a duplicated row) is not a second opinion: first one wins
        reps: dict[tuple, dict] = defaultdict(dict)
        for r in ok:
            reps[(r.get("judge"), str(r["question_id"]), _turn(r))].setdefault(r.get("repeat", 0), float(r["score"]))
        spreads = [float(np.std(list(v.values()), ddof=1)) for v in reps.values() if len(v) > 1]
        block["repeat_std"] = float(np.mean(spreads)) if spreads else None
        out[m] = block
    return out


def pairwise_block(records: list[dict], models: list[str], bootstrap: int = 200, seed: int = 0,
                   levels: tuple[float, ...] = (0.95,)) -> tuple[dict, dict]:
    """(per-model win-rate blocks, the summary's ``pairwise`` section).

    Bradley-Terry intervals are given at 68% and 95% plus ``levels``; win-rate intervals at ``levels``.
    """
    records = [r for r in records if r.get("mode") == "pairwise"]
    qidx = _questions(records)
    weights = stats.cluster_weights(len(qidx), bootstrap, seed)
    idx = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins, ties, losses = np.zeros((n, n), int), np.zeros((n, n), int), np.zeros((n, n), int)
    per_model = defaultdict(list)
    combined = stats.combine_orders(records)
    both = [c for c in combined if c["verdict"] is not None]
    for c in both:
        a, b = idx[c["model_a"]], idx[c["model_b"]]
        wa = stats.VERDICT_VALUE[c["verdict"]]
        if c["verdict"] == "tie":
            ties[a, b] += 1
            ties[b, a] += 1
        else:
            w_, l_ = (a, b) if c["verdict"] == "A" else (b, a)
            wins[w_, l_] += 1
            losses[l_, w_] += 1
        q = qidx[str(c["question_id"])]
        per_model[c["model_a"]].append((wa, _category(c), _turn(c), q))
        per_model[c["model_b"]].append((1.0 - wa, _category(c), _turn(c), q))
    bad = {"parse_error": Counter(), "error": Counter()}
    for r in records:
        if r.get("status") in bad:
            bad[r["status"]].update((r["model_a"], r["model_b"]))
    games = stats.ordered_games(records, sorted(qidx))
    bt = stats.bt_ratings(games, weights=weights, levels=tuple(sorted(set(stats.LEVELS) | set(levels))))
    empty = {"rating": None, "strength": None, **{stats.ci_key(lv): None for lv in stats.LEVELS + tuple(levels)}}
    section = {
        "models": models, "wins": wins.tolist(), "ties": ties.tolist(), "losses": losses.tolist(),
        "bt": {m: bt["ratings"].get(m, empty) for m in models},
        "home_advantage": bt["home_advantage"], "home_advantage_rating": bt["home_advantage_rating"],
        "position_bias": stats.position_bias(records), "inconsistency": stats.inconsistency(combined),
        "pairs_judged": len(both), "pairs_incomplete": len(combined) - len(both), "games": bt["games"],
    }
    blocks = {m: dict(_block(per_model[m], weights, levels), parse_errors=bad["parse_error"][m],
                      errors=bad["error"][m], metric="win_rate") for m in models}
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
        "errors": sum(r.get("status") == "error" for r in records),
        # what the report needs to recompute exactly these numbers from judgments.jsonl
        "stats": {"bootstrap": bootstrap, "seed": seed, "resampled": "questions",
                  "position_bias": "(first-shown wins - second-shown wins) / decisive verdicts"},
    }
    if mode == "single":
        summary["models"] = single_models(records, models, bootstrap, seed)
        summary["pairwise"] = None
    else:
        summary["models"], summary["pairwise"] = pairwise_block(records, models, bootstrap, seed)
    summary.update(extra or {})
    return summary
