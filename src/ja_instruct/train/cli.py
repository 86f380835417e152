"""``ja-instruct train RECIPE [--out DIR] [--restart] [--set train.KEY=VALUE]``, and
``ja-instruct train RECIPE --plan [--gpus N] [--gpu-mem GiB] [--mfu 0.4] [--gpu-peak-tflops 312]``.

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
        "train", help="SFT, or DPO after it, with PyTorch FSDP2 (one process or under torchrun)",
        description="Train the recipe's 'train' section on the dataset built by `ja-instruct data build` "
                    "(built or brought up to date first from the recipe's data section); with `method: dpo`, "
                    "on the preference pairs of `ja-instruct pairs` (made or brought up to date first from the "
                    "recipe's pairs section) or of train.dpo.pairs. Writes "
                    "<out>/final (the exported HF model), checkpoints/<run>/, metrics.jsonl, tensorboard/ "
                    "and manifest.json (last). Nothing is done when final/ is up to date for this config, "
                    "dataset and base model; a killed run resumes from its latest checkpoint; a changed "
                    "config trains a new run from step 0 (the log says what changed).")
    add_recipe_arguments(p, "train", TrainConfig)
    p.add_argument("--restart", action="store_true",
                   help="discard this config's checkpoints and train from step 0 (even when up to date)")
    plan = p.add_argument_group(
        "planning", "--plan prints tokens, steps, batch contents, memory per GPU by part and the wall time of "
                    "this recipe on N GPUs, from the built dataset (else an assumption it names) and the model's "
                    "config (no weights); nothing is trained (docs/training.md, 'Planning a run')")
    plan.add_argument("--plan", action="store_true", help="print the plan of the run and exit")
    from ja_instruct.train.plan import PlanOptions

    flags = {"gpus": ("--gpus", int, "N"), "gpu_mem": ("--gpu-mem", float, "GiB"), "mfu": ("--mfu", float, "F"),
             "gpu_peak_tflops": ("--gpu-peak-tflops", float, "TFLOPS"),
             "architecture": ("--model-config", str, "JSON"), "examples": ("--examples", int, "N"),
             "mean_tokens": ("--mean-tokens", float, "T")}
    for name, (flag, kind, metavar) in flags.items():
        f = PlanOptions.model_fields[name]
        default = f" (default: {f.default})" if f.default is not None else ""
        plan.add_argument(flag, dest=f"plan_{name}", type=kind, default=None, metavar=metavar,
                          help=f"{f.description}{default}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``train``: heavy imports happen here, not at ``--help`` time."""
    from ja_instruct.train.stage import run_training

    recipe = load_recipe_from_args(args)
    recipe.require("train")
    if args.plan:
        return _plan(recipe, args)
    final = run_training(recipe, args.out, restart=args.restart)
    print(final)
    return 0


def _plan(recipe, args: argparse.Namespace) -> int:
    """``train --plan``: print the plan; nothing is trained."""
    from pydantic import ValidationError

    from ja_instruct.errors import UserError
    from ja_instruct.train.plan import PlanOptions, format_plan, plan_run

    given = {k[len("plan_"):]: v for k, v in vars(args).items() if k.startswith("plan_") and v is not None}
    try:
        opts = PlanOptions(**given)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']} (got {err.get('input')!r})") from None
    print(format_plan(plan_run(recipe, opts, args.recipe), recipe.train))
    return 0
