"""Build a report: load judge folders, compute statistics, draw figures, write the files.

``build_report`` is the entry point of both ``ja-instruct report`` and the pipeline's
report stage (via ``run_report``). It writes, into ``out_dir``:

* ``index.html``: one self-contained page (plots inlined as data URIs, no network);
* ``summary.md``: the headline tables in Markdown;
* ``scores.csv``: one row per model;
* ``config.yaml``: the resolved report config.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ja_instruct.config import save_config
from ja_instruct.io import write_text
from ja_instruct.report import plots
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.html import build_context, order_models, render_html
from ja_instruct.report.load import load_report_data
from ja_instruct.report.stats import answer_health, pairwise_stats, single_scores
from ja_instruct.report.writers import scores_csv, summary_md

log = logging.getLogger(__name__)


def build_report(judge_dirs: list[str | Path], out_dir: str | Path, cfg: ReportConfig | None = None,
                 title: str | None = None) -> Path:
    """Write index.html, summary.md, scores.csv (and config.yaml) for the given judge folders.

    Args:
        judge_dirs: folders holding ``judgments.jsonl`` (merged when several).
        out_dir: where the report goes (created).
        cfg: report settings (bootstrap size, plot format, health thresholds...).
        title: page title (default: the config's, else a generic one).

    Returns:
        The path of ``index.html``.
    """
    cfg = cfg or ReportConfig()
    out = Path(out_dir)
    data = load_report_data(judge_dirs)  # validates inputs before any plotting
    summary = next((r.summary for r in data.runs if r.summary), None)
    scores = single_scores(data.judgments, cfg.bootstrap, cfg.ci, cfg.seed)
    pairwise = pairwise_stats(data.judgments, cfg.bootstrap, cfg.ci, cfg.seed, summary)
    health = {m: answer_health(data.answers.get(m, {}), cfg.min_ja_ratio, cfg.max_repeat_ratio) for m in data.models}
    for m, s in scores.items():
        s.health = health.get(m) or {}
    models = order_models(scores, pairwise, data, cfg)
    scored = [m for m in models if m in scores]

    fmt, dpi = cfg.plot_format, cfg.dpi
    figures: dict[str, str] = {}
    if scored:
        figures["mean"] = plots.mean_ci(scored, [scores[m].mean for m in scored], [scores[m].ci for m in scored],
                                        fmt, dpi)
        figures["box"] = plots.box_plot(scored, [scores[m].scores for m in scored], fmt, dpi)
        figures["hist"] = plots.histograms(scored, [scores[m].scores for m in scored], fmt, dpi)
        cats = sorted({c for m in scored for c in scores[m].per_category})
        figures["categories"] = plots.grouped_bars(cats, scored, {m: scores[m].per_category for m in scored},
                                                   "category", fmt, dpi)
        turns = sorted({t for m in scored for t in scores[m].per_turn})
        if len(turns) > 1:
            figures["turns"] = plots.grouped_bars([str(t) for t in turns], scored,
                                                  {m: {str(t): v for t, v in scores[m].per_turn.items()}
                                                   for m in scored}, "turn", fmt, dpi)
    if pairwise is not None:
        # the heat map in ranking order (best model in the first row)
        order = sorted(pairwise.models, key=lambda m: -pairwise.ratings[m])
        ix = [pairwise.models.index(m) for m in order]
        figures["heatmap"] = plots.win_rate_heatmap(order, pairwise.win_rate[ix][:, ix], fmt, dpi)
        figures["bt"] = plots.bt_ranking(pairwise.models, pairwise.ratings, pairwise.rating_ci, fmt, dpi)

    title = title or cfg.title or "ja-instruct report"
    ctx = build_context(data, scores, pairwise, health, figures, cfg, title)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "index.html", render_html(ctx))
    write_text(out / "summary.md", summary_md(ctx, scores, pairwise))
    write_text(out / "scores.csv", scores_csv(models, scores, health, pairwise))
    save_config(cfg.model_copy(update={"judge_dirs": [str(d) for d in judge_dirs], "title": title}), out)
    return out / "index.html"


def run_report(recipe, out_dir: str | Path | None = None) -> Path:
    """The pipeline's report stage: the recipe's judge folder(s) -> ``<root>/report``."""
    cfg: ReportConfig = recipe.report or ReportConfig()
    judge_dirs = cfg.judge_dirs or [str(recipe.stage_dir("judge"))]
    out = Path(out_dir) if out_dir is not None else recipe.stage_dir("report")
    return build_report(judge_dirs, out, cfg, title=cfg.title or f"ja-instruct report: {recipe.name}")
