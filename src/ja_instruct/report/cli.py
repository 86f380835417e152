"""``ja-instruct report``: judge folders (or a recipe) -> index.html, summary.md, scores.csv."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ja_instruct.config import help_epilog
from ja_instruct.report.config import ReportConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="HTML/Markdown/CSV report of judged answers",
        description="Write a self-contained index.html (plots inlined, opens offline), summary.md and "
                    "scores.csv from one or more judge folders (each with judgments.jsonl), or from a "
                    "recipe's judge folder. Does nothing when the output folder already holds the report "
                    "of these inputs and settings (its manifest.json matches).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="JUDGMENTS_DIR_OR_RECIPE",
                   help="judge folders to report on (merged), or one recipe YAML")
    p.add_argument("--out", default=None,
                   help="output folder (default: the recipe's <root>/report, or <first judge dir>/../report)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a report key, e.g. --set report.bootstrap=5000 (repeatable)")
    p.epilog = help_epilog(ReportConfig, "report")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from ja_instruct.config import load_config
    from ja_instruct.errors import UserError

    first = Path(args.inputs[0])
    if first.suffix in (".yaml", ".yml") and first.is_file():
        if len(args.inputs) > 1:
            raise UserError("give either one recipe or judge folders, not both",
                            hint="ja-instruct report RECIPE.yaml  |  ja-instruct report DIR [DIR...]")
        from ja_instruct.recipe import load_recipe

        recipe = load_recipe(first, args.overrides)
        if args.title:
            recipe.report = (recipe.report or ReportConfig()).model_copy(update={"title": args.title})
        from ja_instruct.report import run_report

        path = run_report(recipe, args.out)
    else:
        for d in args.inputs:
            if not Path(d).is_dir():
                raise UserError(f"'{d}' is not a folder", hint="Pass judge folders (with judgments.jsonl) or a recipe.")
        # --set report.KEY=VALUE applies to the report section only
        overrides = [o[len("report."):] if o.startswith("report.") else o for o in args.overrides]
        cfg = load_config(ReportConfig, None, overrides)
        out = Path(args.out) if args.out else Path(args.inputs[0]).parent / "report"
        from ja_instruct.report.build import update_report

        path = update_report(args.inputs, out, cfg, title=args.title)
    print(f"report: {path}", file=sys.stdout)
    return 0
