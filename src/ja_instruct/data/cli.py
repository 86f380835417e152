"""``ja-instruct data build RECIPE [--out DIR] [--set KEY=VALUE] [--on-error skip] [--force] [--dry-run]``."""

from __future__ import annotations

import argparse

from ja_instruct.cli import add_recipe_arguments, load_recipe_from_args
from ja_instruct.data.config import DataConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its ``build`` subcommand."""
    data = subparsers.add_parser("data", help="build a cleaned, licence-aware instruction dataset",
                                 description="Data stage: turn instruction datasets into a training mixture.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser(
        "build", help="build the dataset directory of a recipe's data section",
        description="Read every source of the recipe's 'data' section, clean and de-duplicate it, check "
                    "licences, mix by weight and write <out>/dataset (Arrow), stats.json, stats.md, "
                    "config.yaml and manifest.json. An output already built from the same config, seed, "
                    "input files and hub commits is up to date and left alone; otherwise the build says "
                    "what changed. An explicit --out is registered so later stages of the recipe find it.")
    add_recipe_arguments(build, "data", DataConfig)
    build.add_argument("--on-error", choices=["raise", "skip"], default=None,
                       help="bad input rows: stop with an error (raise, default) or skip and count them")
    build.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    build.add_argument("--dry-run", action="store_true",
                       help="read, clean and check the sources, print what data.quality's judge scoring would "
                            "cost (calls not cached, tokens, money) and stop: nothing is written, no judge called")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """Handler of ``data build``: load the recipe, build, print the per-source counts."""
    from ja_instruct.data.build import build_dataset

    recipe = load_recipe_from_args(args)
    cfg = recipe.require("data")
    out = args.out if args.out is not None else recipe.stage_dir("data")
    result = build_dataset(cfg, out, seed=recipe.seed, on_error=args.on_error, force=args.force, dry_run=args.dry_run)
    if args.out is not None and not result.get("dry_run"):  # later stages (train, run) then read this folder, not the default
        recipe.layout.register("data", out)
    return 0
