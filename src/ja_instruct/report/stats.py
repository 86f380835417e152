"""The numbers of a report: mean scores, Bradley-Terry ratings, bias measures, judge errors, health.

Every statistic is computed by the judge summary's own functions
(`ja_instruct.judge.summary.single_models` / `pairwise_block`, `ja_instruct.judge.panel.panel_summary`,
built on `ja_instruct.stats`) from the judgment records, so several judge folders can be merged,
a FastChat import works, and one judge folder reported with its summary's bootstrap size and
seed (`bootstrap_params`) shows exactly the numbers of its summary.json. This module only
reshapes them for the page (plus what only the page shows: medians, score lists, health).

Scores on different scales (ELYZA-tasks-100's 1-5, MT-Bench's 1-10) are never averaged
together: `single_scores_by_scale` gives one table per scale. Records written before issue 11
lack the scale (they are 1-10), the language guard, samples and answer lengths: what is absent
is shown as absent ("–"), and answer lengths then come from the answer files (`answer_lengths`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ja_instruct.judge.summary import pairwise_block, scale_label, single_models
from ja_instruct.stats import ci_key, is_ok


def bootstrap_params(runs, bootstrap: int, seed: int) -> tuple[int, int]:
    """(bootstrap, seed) of a report: one judge folder whose summary.json records its own
    (``stats.bootstrap`` > 0, ``stats.seed``) is reported with those, so its figures are
    exactly the summary's; merged folders (or a summary that does not say) use the report's."""
    if len(runs) == 1 and isinstance((runs[0].summary or {}).get("stats"), dict):
        st = runs[0].summary["stats"]
        if isinstance(st.get("bootstrap"), int) and st["bootstrap"] > 0 and isinstance(st.get("seed"), int):
            return st["bootstrap"], st["seed"]
    return bootstrap, seed


def _pair(ci) -> tuple[float, float]:
    return (float(ci[0]), float(ci[1])) if ci else (math.nan, math.nan)


@dataclass
class ModelScores:
    """Single-answer grading results of one model (``errors``: refused judge calls, never averaged)."""

    model: str
    scores: list[float]
    n: int
    mean: float
    std: float
    median: float
    ci: tuple[float, float]
    parse_errors: int
    errors: int = 0
    per_category: dict[str, float] = field(default_factory=dict)
    per_category_n: dict[str, int] = field(default_factory=dict)
    per_turn: dict[int, float] = field(default_factory=dict)
    health: dict[str, float] = field(default_factory=dict)
    scale: str = "1-10"
    unguarded_mean: float | None = None  # before the language guard capped not-Japanese answers
    unguarded_ci: tuple[float, float] | None = None
    guarded: int = 0                     # answers the guard capped
    language: dict[str, int] = field(default_factory=dict)   # ok / mixed / not-japanese answers
    reasoning: dict[str, int] = field(default_factory=dict)  # stripped / unclosed answers
    length_chars: float | None = None    # mean characters of the judged answers
    length_tokens: float | None = None   # mean generated tokens (None: not recorded)
    samples: int = 1
    spread: float | None = None          # sd of the per-sample means (samples > 1)
    by_category_turn: dict[str, dict[str, dict]] = field(default_factory=dict)  # {cat: {turn: {mean, spread, n}}}


def _get(d, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def single_scores(judgments: list[dict], n_boot: int, ci: float, seed: int) -> dict[str, ModelScores]:
    """Mean with its cluster-bootstrap CI, per-category and per-turn means of every single-graded
    model, plus the language guard, samples and answer-length facts of its judgments. The
    judgments must be on ONE scale (`single_scores_by_scale` splits them)."""
    recs = [r for r in judgments if r.get("mode") == "single" and r.get("model")]
    models = sorted({r["model"] for r in recs})
    blocks = single_models(recs, models, n_boot, seed, levels=(ci,))
    ok: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        if is_ok(r) and r.get("score") is not None:
            ok[r["model"]].append(r)
    out = {}
    for m in models:
        b, s = blocks[m], [float(r["score"]) for r in ok[m]]
        cat_n: dict[str, int] = defaultdict(int)
        for r in ok[m]:
            cat_n[str(r.get("category") or "uncategorised")] += 1
        out[m] = ModelScores(
            model=m, scores=s, n=b["n"], mean=b["mean"] if b["mean"] is not None else math.nan,
            std=b["std"] if b["std"] is not None else math.nan, median=float(np.median(s)) if s else math.nan,
            ci=_pair(b[ci_key(ci)]), parse_errors=b["parse_errors"], errors=b["errors"],
            per_category=b["per_category"], per_category_n=dict(sorted(cat_n.items())),
            per_turn={int(t): v for t, v in b["per_turn"].items()}, scale=str(b.get("scale") or "1-10"),
            unguarded_mean=_get(b, "unguarded", "mean"),
            unguarded_ci=tuple(_get(b, "unguarded", "ci")) if _get(b, "unguarded", "ci") else None,
            guarded=int(b.get("guarded") or 0), language=dict(b.get("language") or {}),
            reasoning=dict(b.get("reasoning") or {}), length_chars=_get(b, "length", "chars"),
            length_tokens=_get(b, "length", "tokens"), samples=int(b.get("samples") or 1),
            spread=b.get("spread"), by_category_turn=dict(b.get("by_category_turn") or {}))
    return out


def single_scores_by_scale(judgments: list[dict], n_boot: int, ci: float,
                           seed: int) -> dict[str, dict[str, ModelScores]]:
    """`single_scores` per grading scale (``{"1-10": {...}, "1-5": {...}}``, the scale with the
    most judgments first): scores on different scales are never averaged together."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in judgments:
        if r.get("mode") == "single" and r.get("model"):
            groups[scale_label(r)].append(r)
    order = sorted(groups, key=lambda k: (-len(groups[k]), k))
    return {k: single_scores(groups[k], n_boot, ci, seed) for k in order}


def answer_lengths(answers: dict[str, dict]) -> dict[str, float | None]:
    """``{"chars", "tokens"}``: mean characters and generated tokens (``health[].n_tokens``) of a
    model's answer turns in its answer file (choice 0), for judgments that do not record them
    (written before issue 11, imports). None where unknown."""
    chars, tokens = [], []
    for a in answers.values():
        choices = a.get("choices") or [{}]
        c0 = choices[0] if isinstance(choices[0], dict) else {}
        turns = c0.get("turns") or []
        chars += [len(str(t)) for t in turns]
        health = c0.get("health", a.get("health")) or []
        tokens += [h["n_tokens"] for h in health if isinstance(h, dict) and isinstance(h.get("n_tokens"), (int, float))
                   and not isinstance(h.get("n_tokens"), bool)]
    return {"chars": float(np.mean(chars)) if chars else None, "tokens": float(np.mean(tokens)) if tokens else None}


@dataclass
class Panel:
    """Several judges grading the same items (`ja_instruct.judge.panel.panel_summary`)."""

    judges: list[str]
    per_judge: dict[str, dict[str, dict]]  # judge -> model -> {mean, ci, n, scale}
    panel: dict[str, dict]                 # model -> {mean}
    agreement: dict[str, dict]             # "<A> vs <B>" -> {spearman, kendall, qwk, mad, n} (or by_scale)


def panel_stats(judgments: list[dict], models: list[str], n_boot: int, seed: int) -> Panel | None:
    """Per-judge scores, panel mean and agreement when the single-mode judgments come from more
    than one judge (a panel, or merged folders of different judges); None otherwise."""
    from ja_instruct.judge.panel import panel_summary

    single = [r for r in judgments if r.get("mode") == "single" and r.get("model")]
    judges = list(dict.fromkeys(str(r.get("judge")) for r in single))
    if len(judges) < 2:
        return None
    recs = [{**r, "judge": str(r.get("judge"))} for r in single]  # judges matched by name (None -> "None")
    out = panel_summary(recs, models, judges, n_boot, seed)
    return Panel(judges, out["judges"], out["panel"], out["agreement"])


def judge_errors(judgments: list[dict]) -> list[dict]:
    """The judgments whose judge call was refused or failed (``status: error``), with their message."""
    out = []
    for r in judgments:
        if r.get("status") == "error":
            models = r.get("model") or f"{r.get('model_a')} vs {r.get('model_b')}"
            out.append({"models": models, "question_id": str(r.get("question_id")), "turn": r.get("turn", 1),
                        "order": r.get("order") or "", "judge": r.get("judge") or "",
                        "message": str(r.get("error") or "(no message)")})
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


_HEALTH_COUNTS = ("turns", "eos", "truncated", "loop", "empty", "japanese")


def question_health(answers: dict[str, dict], min_ja_ratio: float, max_repeat_ratio: float) -> dict[str, dict]:
    """Per question id, counts over its answer turns (``health`` records): ``turns``, ``eos``
    (non-empty and not truncated), ``truncated``, ``loop``, ``empty``, ``japanese`` (non-empty with
    ``ja_ratio >= min_ja_ratio``). Questions without health records are left out."""
    out: dict[str, dict] = {}
    for qid, a in answers.items():
        c = dict.fromkeys(_HEALTH_COUNTS, 0)
        for h in a.get("health") or []:
            if not isinstance(h, dict):
                continue
            flags = turn_flags(h, min_ja_ratio, max_repeat_ratio)
            empty = "empty" in flags
            c["turns"] += 1
            c["truncated"] += "truncated" in flags
            c["empty"] += empty
            # An empty answer did not "end by itself" in any useful sense, nor is it Japanese: a
            # model that says nothing must not score as healthy.
            c["eos"] += not empty and "truncated" not in flags
            c["loop"] += "looping" in flags
            c["japanese"] += not empty and h.get("ja_ratio") is not None and float(h["ja_ratio"]) >= min_ja_ratio
        if c["turns"]:
            out[str(qid)] = c
    return out


def health_signals(answers: dict[str, dict], min_ja_ratio: float, max_repeat_ratio: float) -> dict | None:
    """Shares of all answer turns that ended by EOS with a non-empty answer, are in Japanese, loop,
    were truncated, are empty; with their counts. None when the answers carry no ``health`` records."""
    c = dict.fromkeys(_HEALTH_COUNTS, 0)
    for q in question_health(answers, min_ja_ratio, max_repeat_ratio).values():
        for k in _HEALTH_COUNTS:
            c[k] += q[k]
    if not c["turns"]:
        return None
    n = c["turns"]
    return {"turns": n, "eos_share": c["eos"] / n, "japanese_share": c["japanese"] / n, "loop_share": c["loop"] / n,
            "truncated_share": c["truncated"] / n, "empty_share": c["empty"] / n, "counts": c}


# --------------------------------------------------------------------------- pairwise

@dataclass
class Pairwise:
    """Pairwise results: pair counts, win-rate matrix, Bradley-Terry ratings, bias measures."""

    models: list[str]
    wins: np.ndarray      # wins[i, j]: pairs (both orders combined) i won against j
    ties: np.ndarray
    n_judgments: int
    parse_errors: int
    errors: int
    win_rate: np.ndarray  # (wins + ties/2) / pairs, NaN where never compared
    ratings: dict[str, float]  # NaN for a model none of whose judgments counted
    rating_ci: dict[str, tuple[float, float]]
    position_bias: float | None
    inconsistency: float | None
    home_advantage: float | None = None
    flip_rate: float | None = None                 # pairs whose verdict changes when the order swaps
    first_position_win_rate: float | None = None   # decisive verdicts won by the answer shown first
    lc_baseline: str | None = None
    lc_win_rate: dict[str, float] = field(default_factory=dict)   # vs lc_baseline, length-controlled
    raw_win_rate: dict[str, float] = field(default_factory=dict)  # win rate vs lc_baseline, both orders
    win_rate_all: dict[str, float] = field(default_factory=dict)  # mean over all the model's pairs
    lengths: dict[str, dict] = field(default_factory=dict)        # model -> {chars, tokens}


def rank_key(pairwise: Pairwise):
    """Sort key of models by rating, best first (unrated last)."""
    return lambda m: -pairwise.ratings[m] if not math.isnan(pairwise.ratings[m]) else math.inf


def lc_baseline(runs, models: list[str], preferred: str | None = None) -> str | None:
    """The model the length-controlled win rate compares against: what the judge summary used
    (one folder: its ``pairwise.bias.lc_baseline``), else the judge config's ``baseline``, else
    ``preferred`` (the report's base model), else the first model (sorted)."""
    for r in runs:
        b = _get(r.summary, "pairwise", "bias", "lc_baseline")
        if b in models:
            return b
    for r in runs:
        b = (r.config or {}).get("baseline")
        if b in models:
            return b
    if preferred in models:
        return preferred
    return models[0] if models else None


def pairwise_stats(judgments: list[dict], n_boot: int, ci: float, seed: int,
                   baseline: str | None = None) -> Pairwise | None:
    """Win/tie counts, win rates, Bradley-Terry ratings with cluster-bootstrap CIs, position bias,
    flip rate, first-position win rate and the length-controlled win rate against ``baseline``
    (default: the first model)."""
    recs = [r for r in judgments if r.get("mode") == "pairwise" and r.get("model_a") and r.get("model_b")]
    if not recs:
        return None
    models = sorted({r["model_a"] for r in recs} | {r["model_b"] for r in recs})
    base = baseline if baseline in models else models[0]
    blocks, sec = pairwise_block(recs, models, n_boot, seed, levels=(ci,), baseline=base)
    wins, ties = np.array(sec["wins"], dtype=float), np.array(sec["ties"], dtype=float)
    games = wins + wins.T + ties
    with np.errstate(invalid="ignore", divide="ignore"):
        win_rate = np.where(games > 0, (wins + 0.5 * ties) / games, np.nan)
    bt = sec["bt"]
    return Pairwise(
        models=models, wins=wins, ties=ties, n_judgments=len(recs),
        parse_errors=sum(r.get("status") == "parse_error" for r in recs),
        errors=sum(r.get("status") == "error" for r in recs), win_rate=win_rate,
        ratings={m: bt[m]["rating"] if bt[m]["rating"] is not None else math.nan for m in models},
        rating_ci={m: _pair(bt[m][ci_key(ci)]) for m in models},
        position_bias=sec["position_bias"], inconsistency=sec["inconsistency"],
        home_advantage=sec["home_advantage"],
        flip_rate=_get(sec, "bias", "flip_rate"), first_position_win_rate=_get(sec, "bias", "first_position_win_rate"),
        lc_baseline=_get(sec, "bias", "lc_baseline") or base, lc_win_rate=dict(_get(sec, "bias", "lc_win_rate") or {}),
        raw_win_rate={m: float(win_rate[models.index(m), models.index(base)]) for m in models
                      if m != base and not math.isnan(win_rate[models.index(m), models.index(base)])},
        win_rate_all={m: blocks[m]["mean"] for m in models if blocks[m].get("mean") is not None},
        lengths={m: dict(blocks[m]["length"]) for m in models if isinstance(blocks[m].get("length"), dict)})
