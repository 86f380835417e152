"""``ja-instruct train RECIPE [--out DIR] [--set train.KEY=VALUE]``.

The same command runs in one process or on N ranks::

    torchrun --nproc_per_node 8 -m ja_instruct.cli train recipes/plamo-13b-instruct.yaml

(see docs/training.md for multi-node rendezvous and Slurm).
"""

from __future__ import annotations

import argparse

from ja_instruct.cli import add_recipe_arguments, load_recipe_from_args
from ja_instruct.train.config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command."""
    p = subparsers.add_parser(
        "train", help="supervised fine-tuning with PyTorch FSDP2 (one process or under torchrun)",
        description="Train the recipe's 'train' section on the dataset built by `ja-instruct data build` "
                    "(built first when missing). Writes <out>/checkpoints, metrics.jsonl, tensorboard/ and "
                    "the exported HF model <out>/final. Re-running resumes from the latest checkpoint; a "
                    "complete final model for the same config is not trained again.")
    add_recipe_arguments(p, "train", TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``train``: heavy imports happen here, not at ``--help`` time."""
    from ja_instruct.train.loop import run_training

    recipe = load_recipe_from_args(args)
    recipe.require("train")
    final = run_training(recipe, args.out)
    print(final)
    return 0
