"""The data stage: sources -> cleaned, licence-aware instruction mixture (``ja-instruct data build``).

Light on purpose (the recipe imports ``ja_instruct.data.config`` for ``--help``):
the entry points below import `datasets` only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_dataset(cfg: Any, out_dir: str | Path, *, seed: int = 0, on_error: str | None = None,
                  force: bool = False, echo: Any = None, timer: Any = None, dry_run: bool = False) -> dict:
    """Build a dataset directory from a `DataConfig`; see `ja_instruct.data.build.build_dataset`."""
    from ja_instruct.data.build import build_dataset as _build

    return _build(cfg, out_dir, seed=seed, on_error=on_error, force=force, echo=echo, timer=timer, dry_run=dry_run)


def load_dataset_dir(path: str | Path):
    """The `datasets.Dataset` of a directory written by ``ja-instruct data build``."""
    from ja_instruct.data.build import load_dataset_dir as _load

    return _load(path)


def load_heldout(data_dir: str | Path):
    """The held-out split (`datasets.Dataset`) of a directory written by ``ja-instruct data build``,
    or None when it has none; see `ja_instruct.data.build.load_heldout`."""
    from ja_instruct.data.build import load_heldout as _load

    return _load(data_dir)


__all__ = ["build_dataset", "load_dataset_dir", "load_heldout"]
