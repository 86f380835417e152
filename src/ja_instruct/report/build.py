"""Build a report: load judge folders, compute statistics, draw figures, write the files.

``build_report`` writes, into ``out_dir``:

* ``index.html``: one self-contained page (plots inlined as data URIs, no network);
* ``summary.md``: the verdicts ("did tuning help?", one sentence per signal) and the headline
  tables in Markdown;
* ``summary.json``: the same numbers as data: roles, judge-free signals, judge means, verdicts
  (`ja_instruct.report.signals`), the grading ``scales``, ``pairwise_bias`` (flip rate,
  first-position win rate, win rate and length-controlled win rate against the baseline, answer
  lengths) and ``panel`` (per-judge means, panel mean, agreement) when there are such judgments;
* ``scores.csv``: one row per model;
* ``config.yaml``: the resolved report config;
* ``manifest.json``, last: the config hash and the fingerprints of what the report read
  (`ja_instruct.manifest`).

``update_report`` (``ja-instruct report``) and ``run_report`` (the pipeline's report stage)
first compare that manifest with what the report would be made from now: when it matches
nothing is loaded or written ("report: up to date"); otherwise the report is rebuilt and
the log says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ja_instruct.config import save_config
from ja_instruct.io import write_json, write_text
from ja_instruct.manifest import input_changes, make_manifest, read_manifest, remove_manifest, write_manifest
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.load import input_fingerprints

log = logging.getLogger(__name__)

OUTPUTS = {"html": "index.html", "markdown": "summary.md", "json": "summary.json", "csv": "scores.csv",
           "config": "config.yaml"}


def _resolved(cfg: ReportConfig | None, judge_dirs: list[str | Path], title: str | None) -> ReportConfig:
    """The config the report is made with (and hashed into its manifest)."""
    cfg = cfg or ReportConfig()
    return cfg.model_copy(update={"judge_dirs": [str(d) for d in judge_dirs],
                                  "title": title or cfg.title or "ja-instruct report"})


def build_report(judge_dirs: list[str | Path], out_dir: str | Path, cfg: ReportConfig | None = None,
                 title: str | None = None) -> Path:
    """Write index.html, summary.md, summary.json, scores.csv, config.yaml and manifest.json for the given
    judge folders.

    Args:
        judge_dirs: folders holding ``judgments.jsonl`` (merged when several).
        out_dir: where the report goes (created).
        cfg: report settings (bootstrap size, plot format, health thresholds...).
        title: page title (default: the config's, else a generic one).

    Returns:
        The path of ``index.html``.
    """
    cfg = _resolved(cfg, judge_dirs, title)
    return _build(judge_dirs, Path(out_dir), cfg, input_fingerprints(judge_dirs))


def _build(judge_dirs: list[str | Path], out: Path, cfg: ReportConfig, inputs: dict[str, str]) -> Path:
    from ja_instruct.report import plots
    from ja_instruct.report.html import build_context, demo_judge_reason, order_models, render_html
    from ja_instruct.report.load import load_report_data
    from ja_instruct.report.signals import build_summary
    from ja_instruct.report.stats import (answer_health, answer_lengths, bootstrap_params, lc_baseline,
                                          pairwise_stats, panel_stats, rank_key, single_scores_by_scale)
    from ja_instruct.report.writers import scores_csv, summary_md

    data = load_report_data(judge_dirs)  # validates inputs before any plotting
    n_boot, seed = bootstrap_params(data.runs, cfg.bootstrap, cfg.seed)
    by_scale = single_scores_by_scale(data.judgments, n_boot, cfg.ci, seed)
    scale = next(iter(by_scale), "1-10")  # the main table's scale: the one with the most judgments
    scores = by_scale.get(scale, {})
    pw_models = sorted({r[k] for r in data.judgments if r.get("mode") == "pairwise" for k in ("model_a", "model_b")
                        if r.get(k)})
    pairwise = pairwise_stats(data.judgments, n_boot, cfg.ci, seed,
                              baseline=lc_baseline(data.runs, pw_models, cfg.baseline))
    health = {m: answer_health(data.answers.get(m, {}), cfg.min_ja_ratio, cfg.max_repeat_ratio) for m in data.models}
    file_lengths = {m: answer_lengths(data.answers.get(m, {})) for m in data.models}
    for group in by_scale.values():
        for m, s in group.items():
            s.health = health.get(m) or {}
            if s.length_chars is None:  # judgments from before answer lengths were recorded
                s.length_chars, s.length_tokens = file_lengths[m]["chars"], file_lengths[m]["tokens"]
    if pairwise is not None:
        for m in pairwise.models:
            if (pairwise.lengths.get(m) or {}).get("chars") is None:
                pairwise.lengths[m] = file_lengths.get(m) or {"chars": None, "tokens": None}
    models = order_models(scores, pairwise, data, cfg)
    scored = [m for m in models if m in scores]
    panel = panel_stats(data.judgments, scored, n_boot, seed)
    other_scales = {k: v for k, v in by_scale.items() if k != scale}

    fmt, dpi, pct = cfg.plot_format, cfg.dpi, round(cfg.ci * 100)
    figures: dict[str, str] = {}
    if scored:
        figures["mean"] = plots.mean_ci(scored, [scores[m].mean for m in scored], [scores[m].ci for m in scored],
                                        fmt, dpi, pct, scale=scale)
        figures["box"] = plots.box_plot(scored, [scores[m].scores for m in scored], fmt, dpi, scale=scale)
        figures["hist"] = plots.histograms(scored, [scores[m].scores for m in scored], fmt, dpi, scale=scale)
        cats = sorted({c for m in scored for c in scores[m].per_category})
        figures["categories"] = plots.grouped_bars(cats, scored, {m: scores[m].per_category for m in scored},
                                                   "category", fmt, dpi, scale=scale)
        turns = sorted({t for m in scored for t in scores[m].per_turn})
        if len(turns) > 1:
            figures["turns"] = plots.grouped_bars([str(t) for t in turns], scored,
                                                  {m: {str(t): v for t, v in scores[m].per_turn.items()}
                                                   for m in scored}, "turn", fmt, dpi, scale=scale)
    if pairwise is not None:
        # the heat map in ranking order (best model in the first row)
        order = sorted(pairwise.models, key=rank_key(pairwise))
        ix = [pairwise.models.index(m) for m in order]
        figures["heatmap"] = plots.win_rate_heatmap(order, pairwise.win_rate[ix][:, ix], fmt, dpi)
        figures["bt"] = plots.bt_ranking(pairwise.models, pairwise.ratings, pairwise.rating_ci, fmt, dpi, pct)

    summary = build_summary(data, models, scores, cfg, cfg.title, demo_judge_reason(data, cfg) is not None,
                            (n_boot, seed))
    summary["scales"] = list(by_scale)  # one table per grading scale, never a mean across them
    for m in summary.get("preference", {}):  # a DPO model's rewards by step
        from ja_instruct.report.preference import curves

        c = curves(data.models[m].preference_steps or [])
        if c["step"] or c["eval_step"]:
            figures[f"dpo:{m}"] = plots.dpo_curves(c, fmt, dpi)
    if pairwise is not None:
        summary["pairwise_bias"] = {
            "flip_rate": pairwise.flip_rate, "first_position_win_rate": pairwise.first_position_win_rate,
            "position_bias": pairwise.position_bias, "baseline": pairwise.lc_baseline,
            "win_rate": pairwise.raw_win_rate, "lc_win_rate": pairwise.lc_win_rate, "length": pairwise.lengths}
    if panel is not None:
        summary["panel"] = {"judges": panel.per_judge, "panel": panel.panel, "agreement": panel.agreement}
    ctx = build_context(data, scores, pairwise, health, figures, cfg, cfg.title, summary,
                        other_scales=other_scales, panel=panel)
    out.mkdir(parents=True, exist_ok=True)
    remove_manifest(out)  # incomplete until the new manifest is written
    write_text(out / OUTPUTS["html"], render_html(ctx))
    write_text(out / OUTPUTS["markdown"], summary_md(ctx, scores, pairwise))
    write_json(out / OUTPUTS["json"], summary)
    write_text(out / OUTPUTS["csv"], scores_csv(models, by_scale, health, pairwise))
    save_config(cfg, out)
    write_manifest(out, make_manifest("report", cfg, inputs, outputs=OUTPUTS,
                                      details={"bootstrap": n_boot, "seed": seed, "models": models,
                                               "baseline": summary["baseline"], "judgments": len(data.judgments)}))
    return out / OUTPUTS["html"]


def update_report(judge_dirs: list[str | Path], out_dir: str | Path, cfg: ReportConfig | None = None,
                  title: str | None = None) -> Path:
    """`build_report` unless ``out_dir`` already holds the report these inputs and settings make.

    Up to date = its manifest's config hash and input fingerprints equal the current ones and
    its files exist: then nothing is loaded or written and the log says so. Otherwise the log
    says what changed and the report is rebuilt. Returns the path of ``index.html``.
    """
    out = Path(out_dir)
    cfg = _resolved(cfg, judge_dirs, title)
    inputs = input_fingerprints(judge_dirs)
    old = read_manifest(out, "report")
    reasons = input_changes(old, inputs, cfg)
    if old is not None:
        reasons += [f"output {name} missing" for name in OUTPUTS.values() if not (out / name).is_file()]
    if not reasons:
        log.info("report: up to date (%s)", out)
        return out / OUTPUTS["html"]
    log.info("report: building %s (%s)", out, "; ".join(reasons))
    return _build(judge_dirs, out, cfg, inputs)


def run_report(recipe, out_dir: str | Path | None = None) -> Path:
    """The pipeline's report stage: the recipe's judge folder(s) -> its report folder.

    ``out_dir`` (``--out``) is registered in the run layout, so later runs find it."""
    cfg: ReportConfig = recipe.report or ReportConfig()
    layout = recipe.layout
    judge_dirs = cfg.judge_dirs or [str(layout.judge)]
    out = layout.stage_dir("report", out_dir)
    path = update_report(judge_dirs, out, cfg, title=cfg.title or f"ja-instruct report: {recipe.name}")
    if out_dir is not None:
        layout.register("report", out)
    return path
