"""``ja-instruct pairs RECIPE [--out DIR] [--set KEY=VALUE ...] [--restart]``."""

from __future__ import annotations

import argparse

from ja_instruct.cli import add_recipe_arguments, load_recipe_from_args
from ja_instruct.pairs.config import PairsConfig


def register(subparsers) -> None:
    """Add the ``pairs`` subcommand."""
    p = subparsers.add_parser(
        "pairs",
        help="preference pairs for DPO: sample k answers per prompt, judge them, keep (best, worst)",
        description="Build the recipe's preference pairs (its 'pairs' section): sample k answers per prompt "
                    "from pairs.model (the generate stage's backends), judge them (the judge stage's backends "
                    "and cache; single grades, or pairwise in both orders) and keep each prompt's (best, worst) "
                    "pair whose margin is at least pairs.margin; or read pairs.input (JSONL, UltraFeedback, "
                    "HH-RLHF, an HF dataset) as it is. Writes <out>/pairs.jsonl, stats.json, stats.md, "
                    "config.yaml and manifest.json. A re-run resumes a stopped one; an up-to-date folder is "
                    "left untouched; a changed margin re-selects without generating or judging again.",
    )
    add_recipe_arguments(p, "pairs", PairsConfig)
    p.add_argument("--restart", action="store_true",
                   help="sample and judge everything again (deletes the folder's answers and judge cache)")
    p.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    recipe = load_recipe_from_args(args)
    from ja_instruct.pairs.run import run_pairs  # heavy imports only when running

    print(run_pairs(recipe, args.out, restart=args.restart))
    return 0
