"""``ja-instruct judge``: grade answers with an LLM judge, or import FastChat judgments.

Forms (``run`` is the default sub-action, so the first two are the same)::

    ja-instruct judge RECIPE [--out DIR] [--set KEY=VALUE] [--judge-prompts FILE] [--repeats N] [--retry-errors]
    ja-instruct judge run RECIPE [...same options...]
    ja-instruct judge import FILE... --out DIR [--questions QUESTIONS]
    ja-instruct judge agree A B [--out DIR] [--rescale] [--judge-a NAME] [--judge-b NAME] [--guarded]
"""

from __future__ import annotations

import argparse

from ja_instruct.cli import add_recipe_arguments, load_recipe_from_args
from ja_instruct.judge.config import JudgeConfig

ACTIONS = ("run", "import", "agree")


class _JudgeParser(argparse.ArgumentParser):
    """Inserts the default action ``run`` when the first argument is not an action name,
    so ``judge RECIPE`` and ``judge run RECIPE`` both work next to ``judge import``."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(args) if args is not None else []
        if args and args[0] not in ACTIONS and args[0] not in ("-h", "--help"):
            args = ["run"] + args
        return super().parse_known_args(args, namespace)


def register(subparsers) -> None:
    """Add ``judge`` with its actions ``run`` (default), ``import`` and ``agree``."""
    p = subparsers.add_parser(
        "judge", help="grade answers with an LLM judge (single 1-10 / 1-5, or pairwise), import FastChat judgments, measure agreement",
        description="Grade the answers of the recipe's models with an LLM judge. `judge RECIPE` = `judge run RECIPE`; "
                    "`judge import FILE... --out DIR` converts FastChat judgment files; `judge agree A B` measures how "
                    "far two judges (or a judge and human raters) agree. Cached and resumable.")
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
    i.add_argument("--answers", default=None, metavar="DIR",
                   help="FastChat answer folder of the judged models (<model>.jsonl): adds the language label, "
                        "answer lengths and reasoning status to each judgment")
    i.add_argument("--language-guard", choices=["off", "flag", "floor"], default=None,
                   help="with --answers: flag (default for imports) shows not-Japanese answers, floor also caps "
                        "their scores at the lowest grade, off does neither")
    i.set_defaults(func=_handle_import)
    g = acts.add_parser("agree", help="agreement of two judges, or of a judge and human ratings",
                        description="Compare the scores of two judge output folders, or of a judge folder and a "
                                    "human-ratings file (CSV/TSV/JSONL/JSON with question_id, model, score; "
                                    "optional turn, sample, scale), item by item: Spearman, Kendall, "
                                    "quadratic-weighted kappa, mean absolute difference. Validate an open judge "
                                    "against imported GPT-4 judgments this way before switching to it.")
    g.add_argument("a", metavar="A", help="judge output folder (or its judgments.jsonl), or a ratings file")
    g.add_argument("b", metavar="B", help="judge output folder (or its judgments.jsonl), or a ratings file")
    g.add_argument("--out", default=None, metavar="DIR", help="write agree.json and agree.png here")
    g.add_argument("--rescale", action="store_true",
                   help="map B's scale linearly onto A's when they differ (else refused)")
    g.add_argument("--judge-a", default=None, metavar="NAME", help="the judge of A to use (a panel folder)")
    g.add_argument("--judge-b", default=None, metavar="NAME", help="the judge of B to use (a panel folder)")
    g.add_argument("--guarded", action="store_true",
                   help="compare the scores after the language guard (default: each judge's own scores)")
    g.set_defaults(func=_handle_agree)


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

    print(import_fastchat(args.files, args.out, questions=args.questions, bootstrap=args.bootstrap,
                          answers_dir=args.answers, language_guard=args.language_guard))
    return 0


def _handle_agree(args: argparse.Namespace) -> int:
    from ja_instruct.judge.agree import agree, format_table

    result = agree(args.a, args.b, args.out, rescale=args.rescale, judge_a=args.judge_a, judge_b=args.judge_b,
                   guarded=args.guarded)
    print(format_table(result))
    return 0
