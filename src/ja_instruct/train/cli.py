"""``ja-instruct train RECIPE [--out DIR] [--restart] [--set train.KEY=VALUE]``.

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
                    "(built or brought up to date first from the recipe's data section). Writes "
                    "<out>/final (the exported HF model), checkpoints/<run>/, metrics.jsonl, tensorboard/ "
                    "and manifest.json (last). Nothing is done when final/ is up to date for this config, "
                    "dataset and base model; a killed run resumes from its latest checkpoint; a changed "
                    "config trains a new run from step 0 (the log says what changed).")
    add_recipe_arguments(p, "train", TrainConfig)
    p.add_argument("--restart", action="store_true",
                   help="discard this config's checkpoints and train from step 0 (even when up to date)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``train``: heavy imports happen here, not at ``--help`` time."""
    from ja_instruct.train.stage import run_training

    recipe = load_recipe_from_args(args)
    recipe.require("train")
    final = run_training(recipe, args.out, restart=args.restart)
    print(final)
    return 0
