"""The HTML page: turn loaded data + statistics + figures into a template context and render it.

The template (``templates/report.html.j2``) is rendered with autoescaping ON: every
model answer, judge reasoning, question, model id and config value is data, never
markup, so an answer containing ``<script>`` shows as text. The only markup that
enters unescaped is the template itself; images are ``data:`` URIs in ``src``
attributes (escaped too, base64 needs no escaping).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path

import jinja2
import yaml

from ja_instruct import __version__
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.load import ReportData
from ja_instruct.report.stats import ModelScores, Pairwise, Panel, judge_errors, rank_key, turn_flags

DEMO_BACKENDS = {"hf": "a small local model scoring answers by token log-probabilities (judge backend 'hf')",
                 "fake": "the fake judge (deterministic pseudo-scores for tests; no model)"}


def fmt(x: float | None, nd: int = 2) -> str:
    """A number for a table cell ('–' for missing/NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}"


def score_color(score: float) -> str:
    """Red (1) to green (10)."""
    hue = max(0.0, min(1.0, (score - 1.0) / 9.0)) * 120
    return f"hsl({hue:.0f}, 60%, 38%)"


def references_line(f: dict) -> str:
    """How a reference NLL file's references are introduced: held out of training, or not (or unknown)."""
    src = f.get("source") or "unknown source"
    if f.get("heldout") is True:
        return f"Held-out references: {src}"
    if f.get("heldout") is False:
        return f"References: {src} (not the data stage's held-out split)"
    return f"References: {src} (whether held out of training is not recorded)"


def demo_judge_reason(data: ReportData, cfg: ReportConfig) -> str | None:
    """Why this report's judge is a demo judge (None: a real judge)."""
    if cfg.demo_judge is False:
        return None
    for r in data.runs:
        if r.backend in DEMO_BACKENDS:
            return f"{DEMO_BACKENDS[r.backend]}: {r.judge}"
    return "a judge marked as a demo judge in the report config" if cfg.demo_judge else None


def order_models(scores: dict[str, ModelScores], pairwise: Pairwise | None, data: ReportData,
                 cfg: ReportConfig) -> list[str]:
    """Models in display order: the config's list, else by mean score / rating, best first."""
    all_models = sorted(data.models)
    if cfg.models:
        return [m for m in cfg.models if m in data.models]
    if scores:
        return sorted(all_models, key=lambda m: -(scores[m].mean if m in scores and not math.isnan(scores[m].mean)
                                                 else -1))
    if pairwise:
        return sorted(all_models, key=lambda m: rank_key(pairwise)(m) if m in pairwise.ratings else math.inf)
    return all_models


def _side_by_side(data: ReportData, models: list[str], cfg: ReportConfig) -> tuple[list[dict], list[str]]:
    """One row per question, one cell per model: each turn's answer, score, flags and reasoning."""
    single: dict[tuple, list[dict]] = defaultdict(list)
    qorder: dict[str, str] = {}
    for r in data.judgments:
        qid = str(r["question_id"])
        qorder.setdefault(qid, str(r.get("category") or "uncategorised"))
        if r.get("mode") == "single" and r.get("model"):
            single[(r["model"], qid, int(r.get("turn") or 1))].append(r)
    # question-file order first (the set's own order), then anything judged but not in it
    qids = [q for q in data.questions if q in qorder] + [q for q in qorder if q not in data.questions]
    rows = []
    cut = cfg.side_by_side_max_chars
    for qid in qids:
        q = data.questions.get(qid, {})
        category = q.get("category") or qorder[qid]
        cells = []
        for m in models:
            ans = data.answers.get(m, {}).get(qid)
            choices = (ans or {}).get("choices") or [{}]
            turns = [str(t) for t in (choices[0].get("turns") or [])]
            health = (ans or {}).get("health") or []
            n_turns = max(len(turns), max((t for (mm, qq, t) in single if mm == m and qq == qid), default=0))
            cell = []
            for t in range(1, n_turns + 1):
                text = turns[t - 1] if t <= len(turns) else ""
                if cut and len(text) > cut:
                    text = text[:cut] + f" … [{len(text) - cut} more characters]"
                js = single.get((m, qid, t), [])
                ok = [j for j in js if j.get("status", "ok") == "ok" and j.get("score") is not None]
                score = sum(float(j["score"]) for j in ok) / len(ok) if ok else None
                h = health[t - 1] if t <= len(health) and isinstance(health[t - 1], dict) else {}
                cell.append({
                    "text": text if ans else "(no answer file)",
                    "score": (f"{score:g}" if score == int(score) else f"{score:.1f}") if score is not None else None,
                    "color": score_color(score) if score is not None else None,
                    "status": js[0].get("status") if js and score is None else None,
                    "reasoning": js[0].get("text") if js else None,
                    "judge": js[0].get("judge") if js else None,
                    "flags": [f.replace("_", "-") for f in turn_flags(h, cfg.min_ja_ratio, cfg.max_repeat_ratio)],
                })
            cells.append(cell)
        rows.append({"qid": qid, "category": category, "turns": q.get("turns") or ["(question text not found)"],
                     "cells": cells})
    categories = sorted({r["category"] for r in rows})
    return rows, categories


def _configs(data: ReportData) -> list[dict]:
    """The resolved configs found next to the inputs (judge, generate, train, data, pairs)."""
    seen, out = set(), []
    paths = [r.dir / "config.yaml" for r in data.runs]
    paths += [r.answers_dir / "config.yaml" for r in data.runs if r.answers_dir]
    for info in data.models.values():
        if info.path and Path(info.path).is_dir():
            paths.append(Path(info.path).parent / "config.yaml")
    for r in data.runs:
        if r.answers_dir:
            paths.append(r.answers_dir.parent / "data" / "config.yaml")
    for info in data.models.values():  # the pairs a DPO model was trained on (a folder of `ja-instruct pairs`)
        pairs = ((info.preference or {}).get("pairs") or {}).get("path")
        if pairs and Path(str(pairs)).is_dir():
            paths.append(Path(str(pairs)) / "config.yaml")
    for p in paths:
        rp = p.resolve()
        if p.is_file() and rp not in seen:
            seen.add(rp)
            out.append({"name": str(p), "text": p.read_text(encoding="utf-8", errors="replace")})
    return out


LANGUAGES = ("ok", "mixed", "not-japanese")


def _length(chars: float | None, tokens: float | None) -> tuple[str, str]:
    return fmt(chars, 0), fmt(tokens, 0)


def score_rows(models: list[str], scores: dict[str, ModelScores], health: dict[str, dict | None]) -> list[dict]:
    """The score table's rows (one grading scale): mean and CI, the mean without the language
    guard, answers per language label, mean answer length, errors, health."""
    rows = []
    for m in models:
        if m not in scores:
            continue
        s = scores[m]
        h = health.get(m)
        chars, tokens = _length(s.length_chars, s.length_tokens)
        rows.append({
            "model": m, "n": s.n, "mean": fmt(s.mean), "ci": f"[{fmt(s.ci[0])}, {fmt(s.ci[1])}]",
            "std": fmt(s.std), "median": fmt(s.median, 1), "parse_errors": s.parse_errors, "errors": s.errors,
            "unguarded": fmt(s.unguarded_mean), "guarded": s.guarded,
            "language": " / ".join(str(s.language.get(k, 0)) for k in LANGUAGES) if any(s.language.values()) else "–",
            "chars": chars, "tokens": tokens, "samples": s.samples,
            "spread": fmt(s.spread) if s.samples > 1 else "–",
            "reasoning": (f"{s.reasoning.get('stripped', 0)} stripped, {s.reasoning.get('unclosed', 0)} unclosed"
                          if any(s.reasoning.values()) else ""),
            "health": [(k.replace("_", "-"), f"{100 * h[k]:.0f}%") for k in ("non_japanese", "looping", "truncated",
                                                                             "empty", "any")] if h else None,
        })
    return rows


def category_turn_table(models: list[str], scores: dict[str, ModelScores]) -> dict | None:
    """JA MT-Bench's category x turn table: per cell the mean over samples and, with several
    samples, their spread (sd of the per-sample means). None when there is one turn and one
    sample (the per-category table says it all) or the judgments do not record the cells."""
    scored = [m for m in models if m in scores and scores[m].by_category_turn]
    if not scored:
        return None
    samples = max(scores[m].samples for m in scored)
    turns = sorted({t for m in scored for c in scores[m].by_category_turn.values() for t in c}, key=int)
    if len(turns) < 2 and samples < 2:
        return None
    cats = sorted({c for m in scored for c in scores[m].by_category_turn})

    def cell(m: str, c: str, t: str) -> str:
        v = scores[m].by_category_turn.get(c, {}).get(t)
        if not v:
            return "–"
        return fmt(v["mean"]) + (f" ± {fmt(v['spread'])}" if v.get("spread") is not None else "")

    rows = [{"category": c, "turn": t, "vals": [cell(m, c, t) for m in scored]} for c in cats for t in turns
            if any(scores[m].by_category_turn.get(c, {}).get(t) for m in scored)]
    for t in turns:  # the leaderboard's per-turn lines: the mean over categories of each model
        vals = []
        for m in scored:
            cells = [v[t]["mean"] for v in scores[m].by_category_turn.values() if t in v]
            vals.append(fmt(sum(cells) / len(cells)) if cells else "–")
        # labelled as what it is: categories weigh alike here, unlike the pooled per-turn table
        rows.append({"category": "(mean of the category means)", "turn": t, "vals": vals})
    return {"models": scored, "samples": samples, "rows": rows}


def panel_context(panel: Panel | None) -> dict | None:
    """Per-judge means, the panel mean and the agreement between judges, as table strings."""
    if panel is None:
        return None
    models = sorted({m for blocks in panel.per_judge.values() for m in blocks})

    def mean(b: dict | None) -> str:
        if not b:
            return "–"
        if b.get("scale") == "mixed":
            return "; ".join(f"{k}: {fmt(v.get('mean'))}" for k, v in (b.get("by_scale") or {}).items())
        return fmt(b.get("mean")) + (f" (n={b['n']})" if b.get("n") is not None else "")

    rows = [{"model": m, "vals": [mean(panel.per_judge[j].get(m)) for j in panel.judges],
             "panel": "mixed scales" if (panel.panel.get(m) or {}).get("scale") == "mixed"
             else fmt((panel.panel.get(m) or {}).get("mean"))} for m in models]
    agreement = []
    for pair, a in panel.agreement.items():
        for label, v in ((a.get("by_scale") or {}).items() if a.get("scale") == "mixed" else [("", a)]):
            agreement.append({"pair": pair + (f" ({label})" if label else ""), "n": v.get("n"),
                              **{k: fmt(v.get(k), 3) for k in ("spearman", "kendall", "qwk", "mad")}})
    return {"judges": panel.judges, "rows": rows, "agreement": agreement}


def pairwise_context(pairwise: Pairwise, figures: dict[str, str]) -> dict:
    """The pairwise section: ranking rows with win rate and length-controlled win rate against the
    baseline and mean answer length, and the bias figures (flip rate, first-position win rate)."""
    k = {m: i for i, m in enumerate(pairwise.models)}
    rows = []
    for m in sorted(pairwise.models, key=rank_key(pairwise)):
        i = k[m]
        lo, hi = pairwise.rating_ci[m]
        ln = pairwise.lengths.get(m) or {}
        chars, tokens = _length(ln.get("chars"), ln.get("tokens"))
        base = m == pairwise.lc_baseline
        rows.append({"model": m, "rating": fmt(pairwise.ratings[m], 0), "ci": f"[{fmt(lo, 0)}, {fmt(hi, 0)}]",
                     "wins": int(pairwise.wins[i].sum()), "ties": int(pairwise.ties[i].sum()),
                     "losses": int(pairwise.wins[:, i].sum()),
                     "win_rate": "baseline" if base else fmt(pairwise.raw_win_rate.get(m), 3),
                     "lc_win_rate": "baseline" if base else fmt(pairwise.lc_win_rate.get(m), 3),
                     "chars": chars, "tokens": tokens})
    return {"n": pairwise.n_judgments, "parse_errors": pairwise.parse_errors, "errors": pairwise.errors,
            "rows": rows, "position_bias": fmt(pairwise.position_bias, 3),
            "inconsistency": fmt(pairwise.inconsistency, 3), "flip_rate": fmt(pairwise.flip_rate, 3),
            "first_position_win_rate": fmt(pairwise.first_position_win_rate, 3),
            "lc_baseline": pairwise.lc_baseline or "–",
            "figures": [{"id": kk, "uri": figures[kk], "alt": alt, "caption": cap} for kk, alt, cap in (
                ("heatmap", "pairwise win-rate heat map", "Win rate of the row model against the column model."),
                ("bt", "Bradley-Terry ranking with CIs",
                 "Bradley-Terry ratings with question-bootstrap CIs."),
            ) if kk in figures]}


def build_context(data: ReportData, scores: dict[str, ModelScores], pairwise: Pairwise | None,
                  health: dict[str, dict | None], figures: dict[str, str], cfg: ReportConfig,
                  title: str, summary: dict | None = None,
                  other_scales: dict[str, dict[str, ModelScores]] | None = None, panel: Panel | None = None) -> dict:
    """Everything the template shows, as plain strings/lists (formatting happens here).

    ``summary`` (`ja_instruct.report.signals.build_summary`, default: computed here) gives the
    verdict sentences and the judge-free signals table; with a demo judge they lead the page.
    ``scores`` are on one grading scale; ``other_scales`` (``{"1-5": scores}``) get tables of
    their own (never one mean across scales); ``panel`` the per-judge and agreement tables."""
    from ja_instruct.report.preference import preference_context
    from ja_instruct.report.signals import build_summary, signal_table

    models = order_models(scores, pairwise, data, cfg)
    reason = demo_judge_reason(data, cfg)
    if summary is None:
        summary = build_summary(data, models, scores, cfg, title, reason is not None, (cfg.bootstrap, cfg.seed))
    rows_scores = score_rows(models, scores, health)
    scored = [m for m in models if m in scores]
    scale = next((s.scale for s in scores.values()), "1-10")
    categories = sorted({c for s in scores.values() for c in s.per_category})
    category_rows = [{"category": c, "n": max((scores[m].per_category_n.get(c, 0) for m in scored), default=0),
                      "vals": [fmt(scores[m].per_category.get(c)) for m in scored]} for c in categories]
    turns = sorted({t for s in scores.values() for t in s.per_turn})
    turn_rows = [{"turn": t, "vals": [fmt(scores[m].per_turn.get(t)) for m in scored]} for t in turns]
    score_figures = [
        {"id": k, "uri": figures[k], "alt": alt, "caption": cap}
        for k, alt, cap in (
            ("mean", "mean score per model with CI", f"Mean score with {round(cfg.ci * 100)}% question-bootstrap CI."),
            ("box", "box plot of scores per model", "Score distribution per model (box: quartiles, triangle: mean)."),
            ("hist", "score histogram per model", "Score histogram per model (dashed: mean)."),
        ) if k in figures
    ]
    others = []
    for label, group in (other_scales or {}).items():
        ms = [m for m in models if m in group] + sorted(m for m in group if m not in models)
        others.append({"scale": label, "rows": score_rows(ms, group, health),
                       "cat_turn": category_turn_table(ms, group)})
    pw = pairwise_context(pairwise, figures) if pairwise is not None else None
    rows, sbs_categories = _side_by_side(data, models, cfg)
    model_meta = []
    for m in models:
        info = data.models[m]
        # per-question keys (category-dependent temperature aside) are not the model's settings
        gen = {kk: v for kk, v in (info.generation or info.spec).items() if kk not in ("id", "category")}
        lic = info.licences
        if isinstance(lic, dict):
            lic = "\n".join(f"{k}: {v}" for k, v in lic.items())
        elif lic is not None and not isinstance(lic, str):
            lic = json.dumps(lic, ensure_ascii=False)
        if lic and info.data_checks:  # shown under the licences they were read with
            lic += "\n" + "\n".join(info.data_checks)
        model_meta.append({
            "id": m, "path": info.path or "–",
            "generation": yaml.safe_dump(gen, allow_unicode=True, sort_keys=True).strip() if gen else "–",
            "licences": lic or None,
            "licence_source": info.licence_source,
            "licence_note": "not a model trained by this run (no dataset stats found)" if not info.licences else "",
            "card": info.card, "data_checks": info.data_checks or [],
        })
    # A benchmark score means little if the benchmark was trained on: say what the check found
    # (or that there was none) next to the verdicts, for every model whose training data is known.
    data_notes = [f"Training data of {m}: {' '.join(data.models[m].data_checks)}" for m in models
                  if data.models[m].data_checks]
    return {
        "title": title, "version": __version__, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "judges": sorted({r.judge for r in data.runs}), "prompts": sorted({r.prompt for r in data.runs}),
        "n_questions": len(rows), "models": scored or models, "sbs_models": models,
        "demo_judge": reason is not None, "demo_reason": reason, "ci_pct": round(cfg.ci * 100),
        "scores": rows_scores, "score_figures": score_figures, "category_rows": category_rows,
        "scale": scale, "other_scales": others, "cat_turn": category_turn_table(models, scores),
        # records from before the language guard carry no label: no guard columns then
        "language_shown": any(any(s.language.values()) for g in [scores, *(other_scales or {}).values()]
                              for s in g.values()),
        "panel": panel_context(panel),
        "category_figure": figures.get("categories"), "turns": turns, "turn_rows": turn_rows,
        "turn_figure": figures.get("turns"), "pairwise": pw, "rows": rows, "categories": sbs_categories,
        "judge_errors": judge_errors(data.judgments),
        "runs": [{"dir": str(r.dir), "judge": r.judge, "backend": r.backend or "–", "prompt": r.prompt,
                  "mode": r.mode, "question_set": r.question_set or "–", "demo": r.backend in DEMO_BACKENDS,
                  "n": sum(1 for j in data.judgments if j.get("judge") == r.judge)} for r in data.runs],
        "model_meta": model_meta, "configs": _configs(data),
        "verdicts": [v["sentence"] for v in summary["verdicts"]], "notes": summary["notes"] + data_notes,
        "verdict_groups": verdict_groups(summary),
        "preference": preference_context(summary.get("preference") or {}, figures),
        "signals": signal_table(summary), "baseline": summary["baseline"],
        "nll_files": [{**f, "line": references_line(f)} for f in summary["reference_nll_files"]],
    }


def verdict_groups(summary: dict) -> list[dict]:
    """The verdict sentences grouped by step (base -> SFT, SFT -> DPO, base -> DPO) when the report
    follows a lineage; [] otherwise (one flat list, as before)."""
    groups: dict[tuple, dict] = {}
    for v in summary["verdicts"]:
        if "step" not in v:
            return []
        g = groups.setdefault((v["step"], v["baseline"], v["model"]), {
            "step": v["step"], "baseline": v["baseline"], "model": v["model"], "sentences": []})
        g["sentences"].append(v["sentence"])
    return list(groups.values())


def render_html(context: dict) -> str:
    """Render the page (autoescape ON: all text is escaped)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("ja_instruct.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    return env.get_template("report.html.j2").render(**context)
