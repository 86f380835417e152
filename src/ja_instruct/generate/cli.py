"""``ja-instruct generate RECIPE [--out DIR] [--set KEY=VALUE ...] [--model ID ...]``."""

from __future__ import annotations

import argparse

from ja_instruct.cli import add_recipe_arguments, load_recipe_from_args
from ja_instruct.generate.config import GenerateConfig


def register(subparsers) -> None:
    """Add the ``generate`` subcommand."""
    p = subparsers.add_parser(
        "generate",
        help="answer a question set (Rakuda, Japanese MT-Bench...) with each model",
        description="Answer a question set with each model of the recipe's 'generate' section, writing "
                    "FastChat answer JSONL (<out>/<model_id>.jsonl). Re-run to continue a stopped run; answers "
                    "whose model, generation settings or question changed are regenerated (the log says why), "
                    "and an up-to-date folder is left untouched.",
    )
    add_recipe_arguments(p, "generate", GenerateConfig)
    for action in p._actions:  # the answers go to <root>/answers (the layout judge and report read)
        if action.dest == "out":
            action.help = "output folder (default: <out_dir>/answers)"
    p.add_argument("--model", dest="models", action="append", default=None, metavar="ID",
                   help="only the model with this id (repeatable; default: all models)")
    p.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    recipe = load_recipe_from_args(args)
    from ja_instruct.generate.run import run_generation  # heavy imports only when running

    out = run_generation(recipe, out_dir=args.out, models=args.models)
    print(out)
    return 0
