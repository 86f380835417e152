"""The train stage: SFT on PyTorch FSDP2 (packing, exact resume, HF export, LoRA).

Entry points:

* `run_training(recipe, out_dir=None, *, restart=False) -> Path`: the recipe's train
  section, as ``ja-instruct train`` and ``ja-instruct run`` call it (the exported HF folder);
* `train(cfg, *, dataset_dir, out, seed, ...) -> Manifest`: the stage as a function of its
  own config section and explicit inputs (`ja_instruct.train.stage.train`);
* `hashed_config(cfg, seed) -> dict`: the train keys that change the result (the manifest's config);
* `find_trained_model(recipe) -> (final dir, fingerprint)`: what ``path: trained`` means,
  checked against the recipe without loading anything.

Importing this package is cheap (no torch): torch comes with the entry points that train.
"""

from __future__ import annotations

from pathlib import Path

from ja_instruct.train.identity import find_trained_model, hashed_config


def run_training(recipe, out_dir: str | Path | None = None, *, restart: bool = False) -> Path:
    """Train the recipe's ``train`` section; see `ja_instruct.train.stage.run_training`."""
    from ja_instruct.train.stage import run_training as _run

    return _run(recipe, out_dir, restart=restart)


def train(cfg, **kwargs):
    """Train one config section on explicit inputs; see `ja_instruct.train.stage.train`."""
    from ja_instruct.train.stage import train as _train

    return _train(cfg, **kwargs)


__all__ = ["find_trained_model", "hashed_config", "run_training", "train"]
