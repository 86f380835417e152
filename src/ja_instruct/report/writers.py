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
from ja_instruct.report.stats import HEALTH_FLAGS, ModelScores, Pairwise


def scores_csv(models: list[str], scores: dict[str, ModelScores], health: dict[str, dict | None],
               pairwise: Pairwise | None) -> str:
    """One row per model: n, mean, CI, std, median, parse errors, judge errors, health shares,
    per-category/turn means, BT rating and CI."""
    cats = sorted({c for s in scores.values() for c in s.per_category})
    turns = sorted({t for s in scores.values() for t in s.per_turn})
    header = (["model", "n", "mean", "ci_low", "ci_high", "std", "median", "parse_errors", "errors"]
              + [f"health_{f}" for f in HEALTH_FLAGS + ("any",)]
              + [f"category:{c}" for c in cats] + [f"turn:{t}" for t in turns]
              + ["bt_rating", "bt_ci_low", "bt_ci_high"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def num(x):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    for m in models:
        s = scores.get(m)
        h = health.get(m) or {}
        row = [m]
        row += [s.n, num(s.mean), num(s.ci[0]), num(s.ci[1]), num(s.std), num(s.median), s.parse_errors, s.errors] \
            if s else [""] * 8
        row += [num(h.get(f)) for f in HEALTH_FLAGS + ("any",)]
        row += [num(s.per_category.get(c)) if s else "" for c in cats]
        row += [num(s.per_turn.get(t)) if s else "" for t in turns]
        if pairwise and m in pairwise.ratings:
            row += [num(pairwise.ratings[m]), num(pairwise.rating_ci[m][0]), num(pairwise.rating_ci[m][1])]
        else:
            row += ["", "", ""]
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
        return c["value"] + (f" ({c['detail']})" if c["detail"] else "") + (f"; {c['vs']}" if c["vs"] else "")

    rows = [[r["label"]] + [cell(c) for c in r["cells"]] for r in sig["rows"]]
    out = ["## Judge-free signals", ""] + _md_table(header, rows) + [""]
    out += [f"- {r['label']}: {r['meaning']}" for r in sig["rows"]]
    for f in ctx["nll_files"]:
        n = f" ({f['conversations']} conversations)" if f.get("conversations") is not None else ""
        out += ["", f"{f['line']}{n}, from {f['file']}."]
    return out + [""]


def summary_md(ctx: dict, scores: dict[str, ModelScores], pairwise: Pairwise | None) -> str:
    """The verdicts, the judge-free signals and the judge's numbers as Markdown (scores, per category,
    pairwise ranking, judge errors, licences); the judge's tables lead only with a real judge."""
    out = [f"# {ctx['title']}", ""]
    out += [f"- {v}" for v in ctx["verdicts"]] + [f"- Note: {n}" for n in ctx["notes"]]
    out += [""] if ctx["verdicts"] or ctx["notes"] else []
    if ctx["demo_judge"]:
        out += _signals_md(ctx)
    if ctx["demo_judge"]:
        out += [f"> **DEMO JUDGE: not a real evaluation.** Scores come from {ctx['demo_reason']}.", ""]
    out += [f"Judge: {', '.join(ctx['judges'])} · prompt: {', '.join(ctx['prompts'])} · "
            f"{ctx['n_questions']} questions · generated {ctx['generated']}", ""]
    if ctx["scores"]:
        out += ["## Scores (1-10)", ""]
        out += _md_table(["model", "n", "mean", f"{ctx['ci_pct']}% CI", "std", "parse errors", "judge errors",
                          "health (flagged turns)"],
                         [[r["model"], r["n"], r["mean"], r["ci"], r["std"], r["parse_errors"], r["errors"],
                           ", ".join(f"{k} {v}" for k, v in r["health"]) if r["health"] else "n/a"]
                          for r in ctx["scores"]])
        out += ["", "## Per category", ""]
        out += _md_table(["category", "n"] + ctx["models"],
                         [[r["category"], r["n"]] + r["vals"] for r in ctx["category_rows"]])
        if len(ctx["turns"]) > 1:
            out += ["", "## Per turn", ""]
            out += _md_table(["turn"] + ctx["models"], [[r["turn"]] + r["vals"] for r in ctx["turn_rows"]])
    if pairwise is not None:
        pw = ctx["pairwise"]
        out += ["", "## Pairwise (Bradley-Terry)", "",
                f"Position bias {pw['position_bias']} ((first-shown wins - second-shown wins) / decisive; 0 = none) · "
                f"inconsistency {pw['inconsistency']} · {pw['n']} judgments, {pw['parse_errors']} parse errors, "
                f"{pw['errors']} judge errors · wins/ties/losses count pairs (both orders combined)", ""]
        out += _md_table(["rank", "model", "rating", f"{ctx['ci_pct']}% CI", "wins", "ties", "losses"],
                         [[i, r["model"], r["rating"], r["ci"], r["wins"], r["ties"], r["losses"]]
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
