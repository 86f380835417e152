"""The pairs stage: judge-labelled (chosen, rejected) answer pairs for DPO (``ja-instruct pairs``).

* `run_pairs(recipe, out_dir=None, *, restart=False) -> Path`: the recipe's ``pairs`` section, as
  ``ja-instruct pairs`` and ``ja-instruct run`` call it (`ja_instruct.pairs.run`);
* `load_pairs(path) -> PairSet`: the only way training reads pairs (`ja_instruct.pairs.records`).

Importing this package is cheap (no torch, no datasets): they come with the entry points.
"""

from __future__ import annotations

from pathlib import Path

from ja_instruct.pairs.records import PairRecord, PairSet, load_pairs


def run_pairs(recipe, out_dir: str | Path | None = None, *, restart: bool = False) -> Path:
    """Build or bring up to date the recipe's pairs; see `ja_instruct.pairs.run.run_pairs`."""
    from ja_instruct.pairs.run import run_pairs as _run

    return _run(recipe, out_dir, restart=restart)


__all__ = ["PairRecord", "PairSet", "load_pairs", "run_pairs"]
