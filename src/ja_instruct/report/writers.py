"""The report's plain-text outputs: ``summary.md`` (readable anywhere) and ``scores.csv`` (one row per model).

summary.md opens with the verdict sentences of summary.json (`ja_instruct.report.signals`),
printed as they are, then the judge-free signals table (with a demo judge; after the judge's
tables with a real one), then the judge's numbers.
"""

from __future__ import annotations

import csv
import io
import math

from ja_instruct.report.html import fmt
from ja_instruct.report.preference import preference_md
from ja_instruct.report.stats import HEALTH_FLAGS, ModelScores, Pairwise


def scores_csv(models: list[str], scores: dict[str, dict[str, ModelScores]] | dict[str, ModelScores],
               health: dict[str, dict | None], pairwise: Pairwise | None) -> str:
    """One row per model and grading scale: scale, n, mean, CI, std, median, the mean without the
    language guard, capped answers, answers per language label, mean answer length (chars, tokens),
    samples and their spread, parse errors, judge errors, health shares, per-category/turn means,
    BT rating and CI, win rate and length-controlled win rate against the pairwise baseline.

    ``scores``: ``{scale: {model: ModelScores}}`` (`single_scores_by_scale`), or one scale's
    ``{model: ModelScores}``. A model only judged pairwise gets one row with an empty scale."""
    if scores and all(isinstance(v, ModelScores) for v in scores.values()):
        scores = {next(iter(scores.values())).scale: scores}
    groups = scores or {}
    every = [s for g in groups.values() for s in g.values()]
    cats = sorted({c for s in every for c in s.per_category})
    turns = sorted({t for s in every for t in s.per_turn})
    header = (["model", "scale", "n", "mean", "ci_low", "ci_high", "std", "median", "mean_unguarded", "guarded",
               "language_ok", "language_mixed", "language_not_japanese", "length_chars", "length_tokens", "samples",
               "sample_spread", "parse_errors", "errors"]
              + [f"health_{f}" for f in HEALTH_FLAGS + ("any",)]
              + [f"category:{c}" for c in cats] + [f"turn:{t}" for t in turns]
              + ["bt_rating", "bt_ci_low", "bt_ci_high", "win_rate_vs_baseline", "lc_win_rate_vs_baseline",
                 "pairwise_baseline"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def num(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    for m in models:
        mine = [(label, g[m]) for label, g in groups.items() if m in g] or [("", None)]
        for label, s in mine:
            h = health.get(m) or {}
            row = [m, label]
            if s:
                lang = [s.language.get(k) if s.language else None for k in ("ok", "mixed", "not-japanese")]
                row += [s.n, num(s.mean), num(s.ci[0]), num(s.ci[1]), num(s.std), num(s.median),
                        num(s.unguarded_mean), s.guarded, *["" if v is None else v for v in lang],
                        num(s.length_chars), num(s.length_tokens), s.samples, num(s.spread), s.parse_errors, s.errors]
            else:
                ln = (pairwise.lengths.get(m) or {}) if pairwise else {}
                row += [""] * 11 + [num(ln.get("chars")), num(ln.get("tokens"))] + [""] * 4
            row += [num(h.get(f)) for f in HEALTH_FLAGS + ("any",)]
            row += [num(s.per_category.get(c)) if s else "" for c in cats]
            row += [num(s.per_turn.get(t)) if s else "" for t in turns]
            if pairwise and m in pairwise.ratings:
                row += [num(pairwise.ratings[m]), num(pairwise.rating_ci[m][0]), num(pairwise.rating_ci[m][1]),
                        num(pairwise.raw_win_rate.get(m)), num(pairwise.lc_win_rate.get(m)),
                        pairwise.lc_baseline or ""]
            else:
                row += [""] * 6
            w.writerow(row)
    return buf.getvalue()


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    esc = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return out


def _signals_md(ctx: dict) -> list[str]:
    """The judge-free signals table, each signal's meaning, and where the references came from."""
    sig = ctx["signals"]
    header = ["signal"] + [m["id"] + (f" ({m['role']})" if m["role"] else "") for m in sig["models"]]

    def cell(c: dict) -> str:
        return c["value"] + (f" ({c['detail']})" if c["detail"] else "") + "".join(f"; {v['vs']}"
                                                                                 for v in c["comparisons"])

    rows = [[r["label"]] + [cell(c) for c in r["cells"]] for r in sig["rows"]]
    out = ["## Judge-free signals", ""] + _md_table(header, rows) + [""]
    out += [f"- {r['label']}: {r['meaning']}" for r in sig["rows"]]
    for f in ctx["nll_files"]:
        n = f" ({f['conversations']} conversations)" if f.get("conversations") is not None else ""
        out += ["", f"{f['line']}{n}, from {f['file']}."]
    return out + [""]


def _scores_md(rows: list[dict], scale: str, ci_pct: int, language_shown: bool) -> list[str]:
    """One grading scale's score table (the scale is in the heading: never one mean across scales)."""
    head = ["model", "n", "mean", f"{ci_pct}% CI", "std"]
    head += ["mean without language guard", "language ok / mixed / not-Japanese"] if language_shown else []
    head += ["mean length (chars / tokens)", "parse errors", "judge errors", "health (flagged turns)"]
    body = []
    for r in rows:
        line = [r["model"], r["n"], r["mean"], r["ci"], r["std"]]
        if language_shown:
            line += [r["unguarded"] + (f" ({r['guarded']} capped)" if r["guarded"] else ""), r["language"]]
        line += [f"{r['chars']} / {r['tokens']}", r["parse_errors"], r["errors"],
                 ", ".join(f"{k} {v}" for k, v in r["health"]) if r["health"] else "n/a"]
        body.append(line)
    return [f"## Scores ({scale})", ""] + _md_table(head, body)


def _cat_turn_md(ct: dict) -> list[str]:
    note = (f"Mean over {ct['samples']} samples ± the spread between samples (sd of the per-sample means)."
            if ct["samples"] > 1 else "One answer per question.")
    return _md_table(["category", "turn"] + ct["models"],
                     [[r["category"], r["turn"]] + r["vals"] for r in ct["rows"]]) + ["", note]


def summary_md(
ctx: dict, scores: dict[str, ModelScores], pairwise: Pairwise | None) -> str:
    """The verdicts, the judge-free signals and the judge's numbers as Markdown (scores, per category,
    pairwise ranking, judge errors, licences); the judge's tables lead only with a real judge."""
    out = [f"# {ctx['title']}", ""]
    for g in ctx["verdict_groups"]:  # a lineage (base -> SFT -> DPO): one block per step
        out += [f"**{g['step']}** ({g['baseline']} -> {g['model']}):", ""] + [f"- {v}" for v in g["sentences"]] + [""]
    out += [] if ctx["verdict_groups"] else [f"- {v}" for v in ctx["verdicts"]]
    out += [f"- Note: {n}" for n in ctx["notes"]]
    out += [""] if (ctx["verdicts"] and not ctx["verdict_groups"]) or ctx["notes"] else []
    if ctx["demo_judge"]:
        out += _signals_md(ctx)
    out += preference_md(ctx["preference"])
    if ctx["demo_judge"]:
        out += [f"> **DEMO JUDGE: not a real evaluation.** Scores come from {ctx['demo_reason']}.", ""]
    out += [f"Judge: {', '.join(ctx['judges'])} · prompt: {', '.join(ctx['prompts'])} · "
            f"{ctx['n_questions']} questions · generated {ctx['generated']}", ""]
    if ctx["scores"]:
        out += _scores_md(ctx["scores"], ctx["scale"], ctx["ci_pct"], ctx["language_shown"])
        out += ["", f"## Per category ({ctx['scale']})", ""]
        out += _md_table(["category", "n"] + ctx["models"],
                         [[r["category"], r["n"]] + r["vals"] for r in ctx["category_rows"]])
        if len(ctx["turns"]) > 1:
            out += ["", f"## Per turn ({ctx['scale']})", ""]
            out += _md_table(["turn"] + ctx["models"], [[r["turn"]] + r["vals"] for r in ctx["turn_rows"]])
        if ctx["cat_turn"]:
            out += ["", f"## Category x turn ({ctx['scale']})", ""] + _cat_turn_md(ctx["cat_turn"])
    for o in ctx["other_scales"]:
        out += [""] + _scores_md(o["rows"], o["scale"], ctx["ci_pct"], ctx["language_shown"])
        out += ["", f"(never averaged with the {ctx['scale']} scores)"]
        if o["cat_turn"]:
            out += ["", f"## Category x turn ({o['scale']})", ""] + _cat_turn_md(o["cat_turn"])
    if ctx["panel"]:
        pn = ctx["panel"]
        out += ["", "## Judge panel", ""]
        out += _md_table(["model"] + pn["judges"] + ["panel mean"],
                         [[r["model"]] + r["vals"] + [r["panel"]] for r in pn["rows"]])
        out += ["", "Agreement between judges (items both judged):", ""]
        out += _md_table(["judges", "items", "Spearman", "Kendall", "QWK", "mean abs. difference"],
                         [[a["pair"], a["n"], a["spearman"], a["kendall"], a["qwk"], a["mad"]]
                          for a in pn["agreement"]])
    if pairwise is not None:
        pw = ctx["pairwise"]
        out += ["", "## Pairwise (Bradley-Terry)", "",
                f"Position bias {pw['position_bias']} ((first-shown wins - second-shown wins) / decisive; 0 = none) · "
                f"inconsistency {pw['inconsistency']} · flip rate {pw['flip_rate']} (pairs whose verdict changes "
                f"when the order swaps) · first-position win rate {pw['first_position_win_rate']} (0.5 = none) · "
                f"{pw['n']} judgments, {pw['parse_errors']} parse errors, "
                f"{pw['errors']} judge errors · wins/ties/losses count pairs (both orders combined) · win rates "
                f"against {pw['lc_baseline']}; LC = length-controlled (AlpacaEval 2's GLM at equal lengths)", ""]
        out += _md_table(["rank", "model", "rating", f"{ctx['ci_pct']}% CI", "wins", "ties", "losses",
                          f"win rate vs {pw['lc_baseline']}", f"LC win rate vs {pw['lc_baseline']}",
                          "mean length (chars / tokens)"],
                         [[i, r["model"], r["rating"], r["ci"], r["wins"], r["ties"], r["losses"], r["win_rate"],
                           r["lc_win_rate"], f"{r['chars']} / {r['tokens']}"]
                          for i, r in enumerate(pw["rows"], 1)])
    if not ctx["demo_judge"]:
        out += [""] + _signals_md(ctx)
    if ctx["judge_errors"]:
        out += ["", "## Judge errors", "",
                f"{len(ctx['judge_errors'])} judgment(s) could not be made (the judge call was refused or failed); "
                "they are in no mean, rating or count above.", ""]
        out += _md_table(["model(s)", "question", "turn", "order", "judge", "error"],
                         [[e["models"], e["question_id"], e["turn"], e["order"], e["judge"], e["message"]]
                          for e in ctx["judge_errors"]])
    lic = [(m["id"], m["licences"].replace("\n", "; ")) for m in ctx["model_meta"] if m["licences"]]
    if lic:
        out += ["", "## Training-data licences", ""] + _md_table(["model", "licences"], lic)
    out += ["", "Full report with plots and every answer: index.html", ""]
    return "\n".join(out)


__all__ = ["scores_csv", "summary_md", "fmt"]
