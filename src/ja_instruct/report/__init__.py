"""The report stage: a self-contained HTML page, summary.md and scores.csv from judge folders.

``build_report(judge_dirs, out_dir, cfg)`` (always builds), ``update_report(...)`` (builds
unless the folder's manifest.json says it is up to date) and ``run_report(recipe, out_dir)``
(the pipeline's stage) live in `ja_instruct.report.build` (imported lazily: matplotlib is
slow to import). Every statistic comes from `ja_instruct.stats` via the judge summary's
functions, so a report shows the numbers of the judge's summary.json.
"""

from __future__ import annotations


def build_report(*args, **kwargs):
    """See `ja_instruct.report.build.build_report`."""
    from ja_instruct.report.build import build_report as _build

    return _build(*args, **kwargs)


def update_report(*args, **kwargs):
    """See `ja_instruct.report.build.update_report`."""
    from ja_instruct.report.build import update_report as _update

    return _update(*args, **kwargs)


def run_report(*args, **kwargs):
    """See `ja_instruct.report.build.run_report`."""
    from ja_instruct.report.build import run_report as _run

    return _run(*args, **kwargs)
