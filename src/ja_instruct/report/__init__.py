"""The report stage: a self-contained HTML page, summary.md and scores.csv from judge folders.

``build_report(judge_dirs, out_dir, cfg)`` and ``run_report(recipe, out_dir)`` live in
`ja_instruct.report.build` (imported lazily: matplotlib is slow to import).
"""

from __future__ import annotations


def build_report(*args, **kwargs):
    """See `ja_instruct.report.build.build_report`."""
    from ja_instruct.report.build import build_report as _build

    return _build(*args, **kwargs)


def run_report(*args, **kwargs):
    """See `ja_instruct.report.build.run_report`."""
    from ja_instruct.report.build import run_report as _run

    return _run(*args, **kwargs)
