"""summary.json from judgment records (the report reads it; schema in docs/judge.md).

Every statistic comes from `ja_instruct.stats` (the report calls `single_models` and
`pairwise_block` below on the same records, so both show the same numbers).

Records have ``status`` ok | parse_error | error (a refused or failed judge call, with an
``error`` message). Only ``ok`` records are ever averaged; the others are counted per model
(``parse_errors``, ``errors``) and in total.

Single mode: per model the mean score over the judgments that count (``n``), its std,
its cluster-bootstrap interval (``ci95``: questions resampled), per-category and per-turn
means, and ``repeat_std``: with repeats, the mean over items of the std across repeats
(the judge's own noise). Also per model:

* ``scale`` (``"1-10"`` / ``"1-5"``): scores on different scales are never averaged: a model
  graded on several gets ``{"scale": "mixed", "mean": None, "by_scale": {label: block}}``;
* ``unguarded``: ``{mean, ci}`` of the judge's own scores (``score_unguarded``), before the
  language guard capped not-Japanese answers (``mean`` is after it);
* ``samples`` (N of ``generate.samples``), ``by_category_turn``: ``{category: {turn: {mean,
  spread, n}}}`` (mean of the per-sample means, ``spread`` their sd, None when N = 1),
  ``sample_means`` and ``spread`` (the same over all items). ``mean`` pools every sample's
  judgments: the mean over samples when each has its judgments;
* ``length`` (``chars``: mean characters of the judged text, reasoning removed; ``tokens``:
  mean generated tokens from the answer files' health, None when they lack it), ``language``
  (answers ok / mixed / not-japanese), ``reasoning`` (answers whose reasoning was stripped /
  never closed) and ``guarded`` (answers capped), each answer (question, turn, sample) once.

With a panel (several judges): ``judges``, ``panel`` and ``agreement`` (`ja_instruct.judge.panel`);
the model blocks then pool every judge's judgments.

Pairwise modes: per model the same statistics of the WIN RATE over combined outcomes (both
orders merged, `ja_instruct.stats.combine_orders`; win 1, tie 0.5, loss 0), plus the
win/tie/loss matrix (row model vs column model), Bradley-Terry ratings with ``ci68`` /
``ci95`` (fit on the ordered judgments, with the position term), ``home_advantage``,
``position_bias`` and ``inconsistency`` (definitions in `ja_instruct.stats`), and ``bias``:
``flip_rate``, ``first_position_win_rate`` and ``lc_win_rate`` ({model: length-controlled
win rate against ``lc_baseline``}). Per model also ``length`` and ``reasoning`` (sample 0).
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


def scale_label(r: dict) -> str:
    """``"1-5"`` / ``"1-10"``: the scale a single-mode record was graded on (records from before
    scales were recorded, and FastChat imports, are 1-10)."""
    lo, hi = r.get("scale") or (1, 10)
    return f"{lo:g}-{hi:g}"


def by_scale(records: list[dict], models: list[str], fn) -> dict:
    """``{model: block}`` from ``fn(records, models)`` without ever averaging across scales: a
    model graded on one scale gets the block of that scale's records; a model graded on several
    gets ``{"scale": "mixed", "mean": None, "by_scale": {label: block}}``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[scale_label(r)].append(r)
    if len(groups) <= 1:
        return fn(records, models)
    per = {label: fn(recs, models) for label, recs in sorted(groups.items())}
    scales_of = {m: [lb for lb, recs in sorted(groups.items()) if any(r.get("model") == m for r in recs)]
                 for m in models}
    out = {}
    for m in models:
        labels = scales_of[m] or list(per)[:1]
        if len(labels) == 1:
            out[m] = per[labels[0]][m]
        else:
            blocks = {lb: per[lb][m] for lb in labels}
            out[m] = {"scale": "mixed", "mean": None, "by_scale": blocks,
                      **{k: sum(b.get(k) or 0 for b in blocks.values())
                         for k in ("n", "parse_errors", "errors") if any(k in b for b in blocks.values())}}
    return out


def _answers(recs: list[dict]) -> dict[tuple, dict]:
    """One record per judged answer (question, turn, sample): what the answer is, not the judge."""
    out: dict[tuple, dict] = {}
    for r in recs:
        out.setdefault((str(r["question_id"]), _turn(r), r.get("sample", 0)), r)
    return out


def _mean_or_none(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def answer_facts(recs: list[dict]) -> dict:
    """``length`` (mean chars of the judged text, mean generated tokens or None), ``language``
    counts and ``reasoning`` counts over the distinct answers of ``recs`` (one model's single
    records; repeats and judges of the same answer count once)."""
    answers = list(_answers(recs).values())
    language = Counter(r.get("language") for r in answers if r.get("language"))
    reasoning = Counter(r.get("reasoning") for r in answers)
    return {"length": {"chars": _mean_or_none([r.get("answer_chars") for r in answers]),
                       "tokens": _mean_or_none([r.get("answer_tokens") for r in answers])},
            "language": {k: language[k] for k in ("ok", "mixed", "not-japanese")},
            "reasoning": {k: reasoning[k] for k in ("stripped", "unclosed")},
            "guarded": sum(bool(r.get("guarded")) for r in answers)}


def _sd(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def sample_table(ok: list[dict], n_samples: int) -> tuple[dict, list[float]]:
    """(``by_category_turn``, per-sample overall means) of one model's counted records: per cell
    the mean of the per-sample means, their sd (``spread``; None with one sample) and ``n``."""
    cells: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    overall: dict[int, list[float]] = defaultdict(list)
    for r in ok:
        k = int(r.get("sample", 0))
        cells[(_category(r), _turn(r))][k].append(float(r["score"]))
        overall[k].append(float(r["score"]))
    table: dict[str, dict[str, dict]] = {}
    for (cat, turn), per in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        means = [float(np.mean(v)) for _, v in sorted(per.items())]
        table.setdefault(cat, {})[str(turn)] = {
            "mean": float(np.mean(means)), "spread": _sd(means) if n_samples > 1 else None,
            "n": sum(len(v) for v in per.values())}
    return table, [float(np.mean(v)) for _, v in sorted(overall.items())]


def _single_one_scale(records: list[dict], models: list[str], bootstrap: int, seed: int,
                      levels: tuple[float, ...]) -> dict:
    qidx = _questions(records)
    weights = stats.cluster_weights(len(qidx), bootstrap, seed)
    main = stats.ci_key(levels[-1] if 0.95 not in levels else 0.95)
    out = {}
    for m in models:
        mine = [r for r in records if r.get("model") == m]
        ok = [r for r in mine if stats.is_ok(r) and r.get("score") is not None]
        block = _block([(float(r["score"]), _category(r), _turn(r), qidx[str(r["question_id"])]) for r in ok],
                       weights, levels)
        block.update(parse_errors=sum(r.get("status") == "parse_error" for r in mine),
                     errors=sum(r.get("status") == "error" for r in mine))
        block["scale"] = scale_label(records[0]) if records else "1-10"  # by_scale: one scale here
        raw = [(float(r.get("score_unguarded", r["score"])), qidx[str(r["question_id"])]) for r in ok]
        v = np.array([x[0] for x in raw], dtype=float)
        block["unguarded"] = {"mean": float(v.mean()) if v.size else None,
                              "ci": stats.mean_ci(v, np.array([x[1] for x in raw], dtype=int), weights,
                                                  levels).get(main)}
        # a repeat index seen twice (a duplicated row) is not a second opinion: first one wins
        reps: dict[tuple, dict] = defaultdict(dict)
        for r in ok:
            reps[(r.get("judge"), str(r["question_id"]), _turn(r), r.get("sample", 0))].setdefault(
                r.get("repeat", 0), float(r["score"]))
        spreads = [float(np.std(list(v.values()), ddof=1)) for v in reps.values() if len(v) > 1]
        block["repeat_std"] = float(np.mean(spreads)) if spreads else None
        n_samples = max([int(r.get("sample", 0)) for r in mine], default=0) + 1
        table, sample_means = sample_table(ok, n_samples)
        block.update(samples=n_samples, by_category_turn=table, sample_means=sample_means,
                     spread=_sd(sample_means) if n_samples > 1 else None, **answer_facts(mine))
        out[m] = block
    return out


def single_models(records: list[dict], models: list[str], bootstrap: int = 200, seed: int = 0,
                  levels: tuple[float, ...] = (0.95,)) -> dict:
    """Per-model blocks of the single-mode records (see the module doc); never across scales."""
    records = [r for r in records if r.get("mode") == "single"]
    return by_scale(records, models, lambda recs, ms: _single_one_scale(recs, ms, bootstrap, seed, levels))


def pair_answer_facts(records: list[dict]) -> tuple[dict, dict]:
    """(``{model: {"length", "reasoning"}}``, ``{(model, question_id, turn): chars}``) from the
    pairwise records' per-model ``answer_chars`` / ``answer_tokens`` / ``reasoning`` dicts, each
    answer (model, question, turn) counted once."""
    seen: dict[tuple, dict] = {}
    for r in records:
        for m in (r.get("model_a"), r.get("model_b")):
            key = (m, str(r["question_id"]), _turn(r))
            if key in seen:
                continue

            def get(field: str, m=m):
                v = r.get(field)
                return v.get(m) if isinstance(v, dict) else None

            seen[key] = {"chars": get("answer_chars"), "tokens": get("answer_tokens"), "reasoning": get("reasoning")}
    per: dict[str, list[dict]] = defaultdict(list)
    for (m, _, _), f in seen.items():
        per[m].append(f)
    facts = {}
    for m, fs in per.items():
        reasoning = Counter(f["reasoning"] for f in fs)
        facts[m] = {"length": {"chars": _mean_or_none([f["chars"] for f in fs]),
                               "tokens": _mean_or_none([f["tokens"] for f in fs])},
                    "reasoning": {k: reasoning[k] for k in ("stripped", "unclosed")}}
    lengths = {k: f["chars"] for k, f in seen.items() if f["chars"] is not None}
    return facts, lengths


def pairwise_block(records: list[dict], models: list[str], bootstrap: int = 200, seed: int = 0,
                   levels: tuple[float, ...] = (0.95,), baseline: str | None = None) -> tuple[dict, dict]:
    """(per-model win-rate blocks, the summary's ``pairwise`` section).

    Bradley-Terry intervals are given at 68% and 95% plus ``levels``; win-rate intervals at ``levels``.
    ``bias`` holds the flip rate, the first-position win rate and the length-controlled win rate
    of every model against ``baseline`` (default: the first of ``models``).
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
    facts, lengths = pair_answer_facts(records)
    base = baseline or (models[0] if models else None)
    section["bias"] = {"flip_rate": stats.flip_rate(records),
                       "first_position_win_rate": stats.first_position_win_rate(records),
                       "lc_baseline": base, "lc_win_rate": stats.lc_win_rate(records, lengths, base)}
    none = {"length": {"chars": None, "tokens": None}, "reasoning": {"stripped": 0, "unclosed": 0}}
    blocks = {m: dict(_block(per_model[m], weights, levels), parse_errors=bad["parse_error"][m],
                      errors=bad["error"][m], metric="win_rate", **facts.get(m, none)) for m in models}
    return blocks, section


def build_summary(records: list[dict], mode: str, models: list[str], *, judge: str, question_set: str | None,
                  answers_dir: str | None, bootstrap: int = 200, seed: int = 0, extra: dict | None = None,
                  judges: list[str] | None = None, baseline: str | None = None) -> dict:
    """The whole summary.json dict (``mode`` is single | pairwise | pairwise-baseline). ``judges``:
    the judges of a panel in order (default: as first seen in ``records``); with more than one,
    single mode adds ``judges``, ``panel`` and ``agreement`` (`ja_instruct.judge.panel`).
    ``baseline``: the model the length-controlled win rate compares against (pairwise)."""
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
        from ja_instruct.judge.panel import panel_summary

        summary["models"] = single_models(records, models, bootstrap, seed)
        summary["pairwise"] = None
        if judges is None:
            judges = list(dict.fromkeys(r.get("judge") for r in records if r.get("mode") == "single"))
        if len(judges) > 1:
            summary.update(panel_summary(records, models, judges, bootstrap, seed))
    else:
        summary["models"], summary["pairwise"] = pairwise_block(records, models, bootstrap, seed,
                                                                baseline=baseline)
    summary.update(extra or {})
    return summary
