"""``ja-instruct run RECIPE``: data -> train -> generate -> judge -> report, in one command.

Each stage is the same Python entry point its own subcommand calls, and each one
skips or resumes what it already did (dataset fingerprint, training checkpoints and
``final/.complete``, append-only answer and judgment stores). The pipeline adds two
things on top:

* a one-line status per stage on stdout (ran / complete / no section);
* ``<root>/pipeline.json``: for each finished stage, a fingerprint of its recipe
  section chained with the fingerprints of the stages before it. A stage whose
  fingerprint matches, whose output still exists and none of whose upstream stages
  ran again in this invocation is not even called, so a second run of a finished
  recipe does no work (not even loading a model to find that out).

A killed run (Ctrl-C, SIGKILL, preemption) is resumed by running the same command:
the killed stage has no entry in ``pipeline.json`` and resumes from its own state.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ja_instruct.io import read_json, stable_hash, write_json

STATE_FILE = "pipeline.json"


def _data(recipe) -> Path:
    from ja_instruct.data.build import build_dataset

    out = recipe.stage_dir("data")
    build_dataset(recipe.data, out, seed=recipe.seed, echo=lambda s: print(s, file=sys.stderr, flush=True))
    return out


def _train(recipe) -> Path:
    from ja_instruct.train import run_training

    return run_training(recipe)


def _entry(package: str, module: str, name: str) -> Callable:
    """A stage's entry point: exported by its package, or defined in its module."""
    import importlib

    pkg = importlib.import_module(package)
    return getattr(pkg, name, None) or getattr(importlib.import_module(module), name)


def _generate(recipe) -> Path:
    return _entry("ja_instruct.generate", "ja_instruct.generate.run", "run_generation")(recipe)


def _judge(recipe) -> Path:
    return _entry("ja_instruct.judge", "ja_instruct.judge.run", "run_judging")(recipe)


def _report(recipe) -> Path:
    from ja_instruct.report import run_report

    return run_report(recipe)


# The registry: stage name (= recipe section) -> entry point returning its output path.
STAGE_RUNNERS: dict[str, Callable] = {
    "data": _data,
    "train": _train,
    "generate": _generate,
    "judge": _judge,
    "report": _report,
}


def stage_fingerprint(recipe, stage: str, upstream: str) -> str:
    """Hash of a stage's resolved section + the run's identity + the upstream fingerprint."""
    section = getattr(recipe, stage)
    payload = {"stage": stage, "section": section.model_dump(mode="json") if section is not None else None,
               "name": recipe.name, "seed": recipe.seed, "root": str(recipe.root), "upstream": upstream}
    return stable_hash(payload)


def _load_state(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        state = read_json(path)
    except Exception:  # a damaged state file only costs re-checking the stages
        return {}
    return state if isinstance(state, dict) else {}


def run_pipeline(recipe, *, force: bool = False, echo: Callable[[str], None] | None = None,
                 runners: dict[str, Callable] | None = None) -> Path | None:
    """Run every stage the recipe has a section for, in order; returns the report's index.html.

    Args:
        recipe: a `ja_instruct.recipe.Recipe`.
        force: call every stage even if ``pipeline.json`` says it is complete (the stages
            still skip/resume by their own rules).
        echo: where the one-line statuses go (default: print to stdout).
        runners: stage -> callable(recipe) -> Path, replacing `STAGE_RUNNERS` entries (tests).

    Returns:
        The path of the report's index.html, or None when the recipe has no report section.
    """
    echo = echo or (lambda s: print(s, flush=True))
    runners = {**STAGE_RUNNERS, **(runners or {})}
    root = recipe.root
    state_path = root / STATE_FILE
    state = _load_state(state_path)
    upstream, upstream_ran = "", False
    report = None
    n = len(runners)
    for i, (stage, runner) in enumerate(runners.items(), 1):
        tag = f"[{i}/{n}] {stage:<8}"
        if getattr(recipe, stage) is None:
            echo(f"{tag} skipped: the recipe has no '{stage}' section")
            continue
        fp = stage_fingerprint(recipe, stage, upstream)
        prev = state.get(stage) or {}
        if (not force and not upstream_ran and prev.get("fingerprint") == fp and prev.get("output")
                and Path(prev["output"]).exists()):
            echo(f"{tag} complete (skipped; finished {prev.get('finished', '?')}) -> {prev['output']}")
            out = Path(prev["output"])
        else:
            echo(f"{tag} running ...")
            t0 = time.monotonic()
            out = Path(runner(recipe))
            secs = time.monotonic() - t0
            state[stage] = {"fingerprint": fp, "output": str(out), "seconds": round(secs, 1),
                            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
            write_json(state_path, state)  # a finished stage survives a later kill
            upstream_ran = True
            echo(f"{tag} done in {_duration(secs)} -> {out}")
        upstream = fp
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
                    "report. Finished stages are skipped; a killed run resumes when re-run. The last line "
                    "says where the report is.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: ja-instruct run recipes/demo.yaml --set train.max_steps=20\n"
               "Every recipe key is listed in `ja-instruct <stage> --help` and the README's recipe reference.")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.max_steps=20 (repeatable)")
    p.add_argument("--out", default=None, help="output root (default: the recipe's out_dir, else runs/<name>)")
    p.add_argument("--force", action="store_true",
                   help="call every stage even when pipeline.json says it is complete")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from ja_instruct.cli import load_recipe_from_args

    recipe = load_recipe_from_args(args)
    if args.out:
        recipe = recipe.model_copy(update={"out_dir": Path(args.out)})
    run_pipeline(recipe, force=args.force)
    return 0
