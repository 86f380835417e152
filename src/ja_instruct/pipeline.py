"""``ja-instruct run RECIPE``: data -> train -> generate -> judge -> report, in one command.

Each stage is the same Python entry point its own subcommand calls, and each one decides
for itself, from its manifest (`ja_instruct.manifest`), whether its output is still the
function of its inputs:

* up to date (same config section, same upstream fingerprints): the stage does no work at
  all, not even loading a model, and the pipeline prints ``up to date``;
* an input changed (a setting, the data, the model's weights, a prompt): the stage redoes
  what depends on the change and logs why (``12 answers regenerated: model changed``);
* killed midway: it resumes (training checkpoints, append-only answer and judgment stores).

Stages find their upstream outputs through the run layout (`ja_instruct.manifest.RunLayout`),
so a stage run on its own reads the same manifests the pipeline would hand it. Nothing is
skipped on the pipeline's say-so: a second run of a finished recipe is cheap because every
stage's own check is cheap.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ja_instruct.manifest import STAGE_FOLDERS, read_manifest


def _data(recipe) -> Path:
    from ja_instruct.data.build import build_dataset

    out = recipe.stage_dir("data")
    build_dataset(recipe.data, out, seed=recipe.seed, echo=lambda s: print(s, file=sys.stderr, flush=True))
    return out


def _pairs(recipe) -> Path:
    from ja_instruct.pairs.run import run_pairs

    return run_pairs(recipe)


def _train(recipe) -> Path:
    from ja_instruct.train import run_training

    return run_training(recipe)


def _generate(recipe) -> Path:
    from ja_instruct.generate.run import run_generation

    return run_generation(recipe)


def _judge(recipe) -> Path:
    from ja_instruct.judge.run import run_judging

    return run_judging(recipe)


def _report(recipe) -> Path:
    from ja_instruct.report import run_report

    return run_report(recipe)


# The registry: stage name (= recipe section) -> entry point returning its output path.
STAGE_RUNNERS: dict[str, Callable] = {
    "data": _data,
    "pairs": _pairs,
    "train": _train,
    "generate": _generate,
    "judge": _judge,
    "report": _report,
}


def _stamp(recipe, stage: str) -> tuple[str, str] | None:
    """(fingerprint, created) of a stage's manifest: changes exactly when the stage wrote its output."""
    m = read_manifest(recipe.stage_dir(stage), stage) if stage in STAGE_FOLDERS else None
    return (m.fingerprint, m.created) if m is not None else None


def run_pipeline(recipe, *, echo: Callable[[str], None] | None = None,
                 runners: dict[str, Callable] | None = None) -> Path | None:
    """Run every stage the recipe has a section for, in order; returns the report's index.html.

    Args:
        recipe: a `ja_instruct.recipe.Recipe`.
        echo: where the one-line statuses go (default: print to stdout).
        runners: stage -> callable(recipe) -> Path, replacing `STAGE_RUNNERS` entries (tests).

    Returns:
        The path of the report's index.html, or None when the recipe has no report section.
    """
    echo = echo or (lambda s: print(s, flush=True))
    runners = {**STAGE_RUNNERS, **(runners or {})}
    report = None
    n = len(runners)
    for i, (stage, runner) in enumerate(runners.items(), 1):
        tag = f"[{i}/{n}] {stage:<8}"
        if getattr(recipe, stage) is None:
            echo(f"{tag} skipped: the recipe has no '{stage}' section")
            continue
        before = _stamp(recipe, stage)
        t0 = time.monotonic()
        out = Path(runner(recipe))
        secs = time.monotonic() - t0
        after = _stamp(recipe, stage)
        if before is not None and before == after:
            echo(f"{tag} up to date -> {out}")
        else:
            echo(f"{tag} done in {_duration(secs)} -> {out}")
        if stage == "report":
            report = out
    if report is not None:
        echo(f"report: {report}")
    else:
        echo("report: none (the recipe has no 'report' section)")
    return report


def _duration(secs: float) -> str:
    return f"{secs:.1f} s" if secs < 90 else f"{int(secs // 60)} min {int(secs % 60):02d} s"


# --------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="the whole pipeline: data -> train -> generate -> judge -> report",
        description="Run every stage the recipe has a section for: data -> train -> generate -> judge -> "
                    "report. A stage whose inputs and settings are unchanged does no work; one whose inputs "
                    "changed redoes what depends on them and says why; a killed run resumes when re-run. "
                    "The last line says where the report is.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: ja-instruct run recipes/demo.yaml --set train.max_steps=20\n"
               "Every recipe key is listed in `ja-instruct <stage> --help` and the README's recipe reference.")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.max_steps=20 (repeatable)")
    p.add_argument("--out", default=None, help="output root (default: the recipe's out_dir, else runs/<name>)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from ja_instruct.cli import load_recipe_from_args

    recipe = load_recipe_from_args(args)
    if args.out:
        recipe = recipe.model_copy(update={"out_dir": Path(args.out)})
    run_pipeline(recipe)
    return 0
