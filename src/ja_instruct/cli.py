"""The ``ja-instruct`` command line.

One subcommand per stage. Each stage module exposes ``register(subparsers)``;
heavy imports (torch, transformers) happen inside the handlers so that
``--help`` stays fast. User mistakes (`UserError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pydantic import BaseModel

from ja_instruct import __version__
from ja_instruct.config import help_epilog
from ja_instruct.errors import UserError

# The registry: subcommand -> module with a ``register(subparsers)`` function.
COMMANDS: dict[str, str] = {
    "data": "ja_instruct.data.cli",
    "pairs": "ja_instruct.pairs.cli",
    "train": "ja_instruct.train.cli",
    "generate": "ja_instruct.generate.cli",
    "judge": "ja_instruct.judge.cli",
    "report": "ja_instruct.report.cli",
    "run": "ja_instruct.pipeline",
    "serve": "ja_instruct.serve",
}


def add_recipe_arguments(parser: argparse.ArgumentParser, section: str, model: type[BaseModel],
                         recipe_required: bool = True) -> None:
    """Add RECIPE, ``--set`` and ``--out``; list the section's keys in ``--help``."""
    parser.add_argument("recipe", nargs=None if recipe_required else "?", help="recipe YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a recipe key, e.g. --set {section}.KEY=VALUE (repeatable)")
    parser.add_argument("--out", default=None, help=f"output folder (default: <out_dir>/{section})")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = help_epilog(model, section)


def load_recipe_from_args(args: argparse.Namespace):
    """The validated `Recipe` named by ``args.recipe`` with ``args.overrides`` applied."""
    from ja_instruct.recipe import load_recipe

    return load_recipe(args.recipe, args.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ja-instruct",
        description="Instruction-tune Japanese LLMs and measure them with an LLM judge.",
    )
    parser.add_argument("--version", action="version", version=f"ja-instruct {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # force=True: bind the handler to the current sys.stderr on every call (tests and
    # the pipeline call main() repeatedly in one process).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr, force=True)
    # the openai SDK's HTTP client logs every request at INFO: one line per judgment floods the terminal
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"ja-instruct: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ja-instruct: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
