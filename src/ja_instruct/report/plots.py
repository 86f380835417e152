"""The report's figures, rendered with matplotlib (Agg) and returned as ``data:`` URIs.

Inlining the images (base64 PNG or SVG) keeps index.html a single file that opens
offline from disk. Japanese labels (categories, model names) need a CJK font: a system
one if matplotlib knows one, else the IPAex Gothic font shipped inside the PyPI package
``japanize-matplotlib`` (located, not imported: its module needs distutils).

The seed's figures: mean score with CI, a box plot of the score distributions and a
score histogram per model (base vs tuned), then per-category and per-turn bars and,
for pairwise runs, a win-rate heat map and a Bradley-Terry ranking with CIs.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: always render to memory

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

log = logging.getLogger(__name__)

CJK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "IPAGothic", "IPAPGothic", "TakaoGothic",
                "VL Gothic", "Hiragino Sans", "Yu Gothic", "MS Gothic", "Source Han Sans JP")
COLORS = plt.get_cmap("tab10").colors


@functools.lru_cache(maxsize=1)
def japanese_font() -> str | None:
    """Name of a font family that has Japanese glyphs, registering the bundled one if needed."""
    known = {f.name for f in font_manager.fontManager.ttflist}
    for fam in CJK_FAMILIES:
        if fam in known:
            return fam
    spec = importlib.util.find_spec("japanize_matplotlib")
    if spec is not None and spec.submodule_search_locations:
        ttf = Path(list(spec.submodule_search_locations)[0]) / "fonts" / "ipaexg.ttf"
        if ttf.is_file():
            font_manager.fontManager.addfont(str(ttf))
            return font_manager.FontProperties(fname=str(ttf)).get_name()
    log.warning("no Japanese font found: Japanese labels in plots show as boxes "
                "(pip install japanize-matplotlib, or install fonts-ipafont-gothic)")
    return None


@contextlib.contextmanager
def _style():
    fam = japanese_font()
    rc = {"font.family": [fam, "DejaVu Sans"] if fam else ["DejaVu Sans"], "axes.spines.top": False,
          "axes.spines.right": False, "svg.fonttype": "path"}
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        yield


def to_data_uri(fig, fmt: str = "png", dpi: int = 110) -> str:
    """Render a figure into a base64 ``data:`` URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"Software": None} if fmt == "png" else None)
    plt.close(fig)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _fig(w: float, h: float):
    return plt.subplots(figsize=(w, h))


def _bounds(scale: str) -> tuple[int, int]:
    """``"1-5"`` -> (1, 5): the grades of a scale label (1-10 when it is not one)."""
    try:
        lo, hi = (int(float(x)) for x in scale.split("-"))
        return (lo, hi) if lo < hi else (1, 10)
    except (ValueError, AttributeError):
        return 1, 10


def mean_ci(models: list[str], means: list[float], cis: list[tuple[float, float]], fmt="png", dpi=110,
            ci_pct: int = 95, scale: str = "1-10") -> str:
    """Mean score per model with its bootstrap CI (horizontal, best at the top; no bar where NaN)."""
    lo_g, hi_g = _bounds(scale)
    with _style():
        fig, ax = _fig(7, 0.5 * len(models) + 1.2)
        y = np.arange(len(models))[::-1]
        m = np.array(means)
        lo = m - np.array([c[0] for c in cis])
        hi = np.array([c[1] for c in cis]) - m
        ax.barh(y, m, color=[COLORS[i % 10] for i in range(len(models))], alpha=0.75)
        ax.errorbar(m, y, xerr=[np.nan_to_num(lo), np.nan_to_num(hi)], fmt="none", ecolor="black", capsize=4)
        ax.set_yticks(y, models)
        ax.set_xlim(0, hi_g)
        ax.set_xlabel(f"mean score ({scale}) with {ci_pct}% question-bootstrap CI")
        return to_data_uri(fig, fmt, dpi)


def box_plot(models: list[str], scores: list[list[float]], fmt="png", dpi=110, scale: str = "1-10") -> str:
    """Score distributions side by side (the seed's box plot of base vs tuned)."""
    lo_g, hi_g = _bounds(scale)
    with _style():
        fig, ax = _fig(max(5, 1.1 * len(models) + 2), 4)
        data = [s if s else [np.nan] for s in scores]
        bp = ax.boxplot(data, showmeans=True, patch_artist=True)
        for i, box in enumerate(bp["boxes"]):
            box.set_facecolor(COLORS[i % 10])
            box.set_alpha(0.5)
        ax.set_xticks(range(1, len(models) + 1), models, rotation=30 if len(models) > 3 else 0, ha="right"
                      if len(models) > 3 else "center")
        ax.set_ylim(lo_g - 0.5, hi_g + 0.5)
        ax.set_ylabel(f"score ({scale})")
        ax.set_title("Score distribution per model (triangle = mean)")
        return to_data_uri(fig, fmt, dpi)


def histograms(models: list[str], scores: list[list[float]], fmt="png", dpi=110, scale: str = "1-10") -> str:
    """One score histogram per model on shared axes (the seed's per-model histograms)."""
    lo_g, hi_g = _bounds(scale)
    with _style():
        n = len(models)
        cols = min(n, 4)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False,
                                 sharex=True, sharey=True, layout="constrained")  # room for sup labels
        bins = np.arange(lo_g - 0.5, hi_g + 1.5, 1.0)
        for i, ax in enumerate(axes.flat):
            if i >= n:
                ax.set_visible(False)
                continue
            ax.hist(scores[i], bins=bins, color=COLORS[i % 10], alpha=0.8, edgecolor="white")
            ax.set_title(models[i], fontsize=9)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xticks(range(lo_g, hi_g + 1))
            if scores[i]:
                ax.axvline(float(np.mean(scores[i])), color="black", linestyle="--", linewidth=1)
        fig.supxlabel(f"score, {scale} (dashed line: mean)")
        fig.supylabel("answers")
        return to_data_uri(fig, fmt, dpi)


def grouped_bars(groups: list[str], models: list[str], values: dict[str, dict], xlabel: str,
                 fmt="png", dpi=110, scale: str = "1-10") -> str:
    """Mean score per group (category or turn) and model, as grouped bars."""
    _, hi_g = _bounds(scale)
    with _style():
        fig, ax = _fig(max(6, 0.9 * len(groups) * max(1, len(models)) * 0.35 + 3), 4)
        width = 0.8 / max(1, len(models))
        x = np.arange(len(groups))
        for i, m in enumerate(models):
            ys = [values.get(m, {}).get(g, np.nan) for g in groups]
            ax.bar(x + (i - (len(models) - 1) / 2) * width, ys, width, label=m, color=COLORS[i % 10])
        ax.set_xticks(x, groups, rotation=30 if len(groups) > 6 else 0)
        ax.set_ylim(0, hi_g)
        ax.set_ylabel(f"mean score ({scale})")
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8, ncols=min(4, len(models)), loc="upper center", bbox_to_anchor=(0.5, -0.15))
        return to_data_uri(fig, fmt, dpi)


def win_rate_heatmap(models: list[str], win_rate: np.ndarray, fmt="png", dpi=110) -> str:
    """Row model's win rate against the column model (ties count half)."""
    with _style():
        k = len(models)
        fig, ax = _fig(1.0 * k + 3, 0.8 * k + 2)
        im = ax.imshow(win_rate, cmap="RdBu", vmin=0, vmax=1)
        ax.set_xticks(range(k), models, rotation=40, ha="right")
        ax.set_yticks(range(k), models)
        for i in range(k):
            for j in range(k):
                if not np.isnan(win_rate[i, j]):
                    ax.text(j, i, f"{win_rate[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if abs(win_rate[i, j] - 0.5) > 0.3 else "black")
        ax.set_xlabel("opponent")
        ax.set_ylabel("model")
        fig.colorbar(im, ax=ax, fraction=0.046, label="win rate (ties = 1/2)")
        return to_data_uri(fig, fmt, dpi)


def bt_ranking(models: list[str], ratings: dict[str, float], ci: dict[str, tuple[float, float]],
               fmt="png", dpi=110, ci_pct: int = 95) -> str:
    """Bradley-Terry ratings (Elo-like scale) with bootstrap CIs, best at the top (unrated models left out)."""
    with _style():
        order = sorted((m for m in models if np.isfinite(ratings[m])), key=lambda m: ratings[m])
        fig, ax = _fig(7, 0.45 * len(models) + 1.3)
        y = np.arange(len(order))
        r = np.array([ratings[m] for m in order])
        lo = r - np.array([ci[m][0] for m in order])
        hi = np.array([ci[m][1] for m in order]) - r
        ax.errorbar(r, y, xerr=[np.nan_to_num(lo), np.nan_to_num(hi)], fmt="o", color=COLORS[0], ecolor="gray",
                    capsize=4)
        ax.set_yticks(y, order)
        ax.set_xlabel(f"Bradley-Terry rating (Elo scale, 1000 = average) with {ci_pct}% question-bootstrap CI")
        return to_data_uri(fig, fmt, dpi)


def agreement_figure(result: dict):
    """Two raters of the same items (a `ja_instruct.judge.agree.compare` result): the heat map of
    their grades (how many items A graded i and B graded j) and each model's mean by A vs by B.
    Returns the figure (the caller saves or inlines it)."""
    with _style():
        grades, conf = result["grades"], np.array(result["confusion"], dtype=float)
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
        im = ax.imshow(conf, cmap="Blues", origin="lower")
        k = len(grades)
        ax.set_xticks(range(k), grades)
        ax.set_yticks(range(k), grades)
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if conf[i, j] > conf.max() / 2 else "black")
        ov = result["overall"]
        rho, kappa = (f"{v:.2f}" if v is not None else "-" for v in (ov["spearman"], ov["qwk"]))
        ax.set_title(f"items (n={ov['n']}; Spearman {rho}, QWK {kappa})", fontsize=10)
        ax.set_xlabel(f"B grade: {Path(result['b']['path']).name}")
        ax.set_ylabel(f"A grade: {Path(result['a']['path']).name}")
        fig.colorbar(im, ax=ax, fraction=0.046, label="items")
        lo, hi = grades[0], grades[-1]
        bx.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1)
        for i, (m, v) in enumerate(result["means"].items()):
            bx.scatter(v["b"], v["a"], color=COLORS[i % 10], label=m, zorder=3)
        bx.set_xlim(lo - 0.2, hi + 0.2)
        bx.set_ylim(lo - 0.2, hi + 0.2)
        bx.set_xlabel("mean by B")
        bx.set_ylabel("mean by A")
        bx.set_title("per model (dashed: equal)", fontsize=10)
        if result["means"]:
            bx.legend(fontsize=7, loc="upper left")
        return fig


def dpo_curves(c: dict, fmt="png", dpi=110) -> str:
    """A DPO run by step (`ja_instruct.report.preference.curves`): the reward margin and the
    preference accuracy, of the training batches (lines) and of the held-out pairs (points)."""
    with _style():
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        for axis, key, label in ((ax, "margin", "reward margin (chosen - rejected)"),
                                 (bx, "accuracy", "preference accuracy")):
            if c["step"]:
                axis.plot(c["step"], [np.nan if v is None else v for v in c[key]], color=COLORS[0], alpha=0.6,
                          linewidth=1, label="training batch")
            if c["eval_step"]:
                axis.plot(c["eval_step"], [np.nan if v is None else v for v in c[f"eval_{key}"]], "o-",
                          color=COLORS[3], label="held-out pairs")
            axis.set_xlabel("optimiser step")
            axis.set_ylabel(label)
            axis.legend(fontsize=8)
        ax.axhline(0, color="gray", linestyle="--", linewidth=0.8)
        bx.set_ylim(-0.05, 1.05)
        return to_data_uri(fig, fmt, dpi)
