"""The train stage: SFT on PyTorch FSDP2 (packing, exact resume, HF export, LoRA).

Entry point: `run_training(recipe, out_dir=None) -> Path` (the exported HF folder).
"""

from __future__ import annotations

from pathlib import Path


def run_training(recipe, out_dir: str | Path | None = None) -> Path:
    """Train the recipe's ``train`` section; see `ja_instruct.train.loop.run_training`."""
    from ja_instruct.train.loop import run_training as _run

    return _run(recipe, out_dir)


__all__ = ["run_training"]
