"""Config of the report stage (the ``report:`` section of a recipe).

Imported for ``--help``: stdlib + pydantic + ``ja_instruct.config`` only.

```yaml
report:
  title: "SmolLM2-135M: base vs SFT"
  judge_dirs: [runs/demo/judge]     # default: the recipe's judge folder
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ja_instruct.config import StrictModel


class ReportConfig(StrictModel):
    """The 'report' section of a recipe: one self-contained HTML page plus Markdown and CSV."""

    title: str | None = None
    """Page title; default `ja-instruct report: <recipe name>`."""
    judge_dirs: list[str] | None = None
    """Judge output folders (each with `judgments.jsonl`) to report on, merged; null = the recipe's
    `<root>/judge`."""
    bootstrap: int = Field(2000, ge=100)
    """Bootstrap resamples (questions resampled) for the intervals of mean scores and Bradley-Terry
    ratings when several judge folders are merged. One judge folder is reported with the bootstrap size
    and seed its summary.json records, so the report shows exactly the summary's numbers."""
    ci: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of the intervals (0.95 = the summary's `ci95`)."""
    seed: int = 0
    """Seed of the bootstrap when folders are merged (same inputs + seed = the same report)."""
    plot_format: Literal["png", "svg"] = "png"
    """Image format of the inlined plots (both become base64 `data:` URIs inside index.html)."""
    dpi: int = Field(110, ge=50, le=300)
    """Resolution of PNG plots."""
    models: list[str] | None = None
    """Model ids to show, in this order; null = every judged model (sorted by mean score)."""
    side_by_side_max_chars: int | None = Field(None, ge=100)
    """Cut each answer in the side-by-side table to this many characters (null = full text)."""
    min_ja_ratio: float = Field(0.5, ge=0, le=1)
    """Answer-health flag: a turn whose share of Japanese characters is below this is `non-Japanese`."""
    max_repeat_ratio: float = Field(0.5, ge=0, le=1)
    """Answer-health flag: a turn marked `loop` by the generate stage, or whose repeated n-gram share is
    at least this, is `looping`."""
    baseline: str | None = None
    """Model id of the BASE model that tuned models are compared with (verdicts "tuning helped / hurt /
    no clear difference" in summary.md and summary.json). null = the generate model whose `path` is the
    train config's `model`. Tuned models are those generated with `path: trained`."""
    demo_judge: bool | None = None
    """Label the judge as a DEMO JUDGE (not a real evaluation); null = automatically when the judge
    backend is `hf` (a small local logprob judge) or `fake`."""
