"""``ja-instruct judge``: grade answers with an LLM judge, or import FastChat judgments.

Forms (``run`` is the default sub-action, so the first two are the same)::

    ja-instruct judge RECIPE [--out DIR] [--set KEY=VALUE] [--judge-prompts FILE] [--repeats N] [--retry-errors]
    ja-instruct judge run RECIPE [...same options...]
    ja-instruct judge import FILE... --out DIR [--questions QUESTIONS]
"""

from __future__ import annotations

import argparse

from ja_instruct.cli import add_recipe_arguments, load_recipe_from_args
from ja_instruct.judge.config import JudgeConfig

ACTIONS = ("run", "import")


class _JudgeParser(argparse.ArgumentParser):
    """Inserts the default action ``run`` when the first argument is not an action name,
    so ``judge RECIPE`` and ``judge run RECIPE`` both work next to ``judge import``."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(args) if args is not None else []
        if args and args[0] not in ACTIONS and args[0] not in ("-h", "--help"):
            args = ["run"] + args
        return super().parse_known_args(args, namespace)


def register(subparsers) -> None:
    """Add ``judge`` with its actions ``run`` (default) and ``import``."""
    p = subparsers.add_parser(
        "judge", help="grade answers with an LLM judge (single 1-10 or pairwise), or import FastChat judgments",
        description="Grade the answers of the recipe's models with an LLM judge. `judge RECIPE` = `judge run RECIPE`; "
                    "`judge import FILE... --out DIR` converts FastChat judgment files. Cached and resumable.")
    p.__class__ = _JudgeParser
    acts = p.add_subparsers(dest="judge_action", metavar="ACTION", required=True,
                            parser_class=argparse.ArgumentParser)
    r = acts.add_parser("run", help="judge the answers of a recipe (default action)",
                        description="Judge the answers named by a recipe's 'judge' section. Every judgment is "
                                    "cached in <out>/cache.jsonl; re-run the same command to resume. "
                                    "judge.backend.backend (openai | hf | fake) is required.")
    add_recipe_arguments(r, "judge", JudgeConfig)
    r.add_argument("--judge-prompts", default=None, metavar="FILE",
                   help="a FastChat-format judge_prompts.jsonl instead of our prompts")
    r.add_argument("--repeats", type=int, default=None, metavar="N",
                   help="judge each item N times (needs judge.backend.temperature > 0)")
    r.add_argument("--retry-errors", action="store_true", default=None,
                   help="ask the judge again for items it refused before (status 'error'; judge.retry_errors)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_handle_run)
    i = acts.add_parser("import", help="import FastChat judgment files (*_single.jsonl / *_pair.jsonl)",
                        description="Re-parse FastChat judgment files with our parser, flag rows whose stored "
                                    "score differs, and write judgments.jsonl + summary.json.")
    i.add_argument("files", nargs="+", metavar="FILE", help="FastChat *_single.jsonl or *_pair.jsonl files")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--questions", default=None, help="question set (path / hub id) for per-category means")
    i.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for BT CIs (pair files)")
    i.set_defaults(func=_handle_import)


def _handle_run(args: argparse.Namespace) -> int:
    recipe = load_recipe_from_args(args)
    if args.repeats is not None and args.repeats < 1:
        from ja_instruct.errors import UserError

        raise UserError("--repeats must be >= 1")
    from ja_instruct.judge.run import run_judging

    out = run_judging(recipe, args.out, judge_prompts=args.judge_prompts, repeats=args.repeats,
                      progress=not args.no_progress, retry_errors=args.retry_errors)
    print(out)
    return 0


def _handle_import(args: argparse.Namespace) -> int:
    from ja_instruct.judge.importer import import_fastchat

    print(import_fastchat(args.files, args.out, questions=args.questions, bootstrap=args.bootstrap))
    return 0
