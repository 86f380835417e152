"""The train stage: `train(cfg, dataset_dir=..., out=...)` -> ``<out>/final`` + ``<out>/manifest.json``.

The output is a function of its inputs (``ja_instruct.manifest``):

* **up to date**: the manifest's fingerprint equals the one this config and these inputs
  (dataset fingerprint, base model fingerprint) give, and ``final/`` is complete: return
  at once, before any tokenizer or model is loaded;
* otherwise the manifest is removed FIRST (a retrain killed midway never leaves a folder
  that looks complete, even though the previous ``final/`` is still there), the run for
  this config is trained (resumed when its checkpoints exist, fresh when the config or
  inputs changed: checkpoints live in ``checkpoints/<run id>/``), ``final/`` is swapped in,
  the checkpoints of other configs are pruned, and the manifest is written LAST.

Every decision is logged with its reason (what changed, which run, resumed or fresh).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from ja_instruct.config import save_config
from ja_instruct.errors import UserError
from ja_instruct.manifest import (Manifest, input_changes, make_manifest, read_manifest, remove_manifest,
                                  write_manifest)
from ja_instruct.train import checkpoint as ckpt
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import Dist, setup_distributed, teardown_distributed
from ja_instruct.train.identity import (FINAL, base_model_fingerprint, final_is_complete, hashed_config,
                                        is_dataset_dir, recipe_dataset_dir, resolved_seed, run_id,
                                        train_inputs, weights_config)
from ja_instruct.train.prepare import resolve_grad_accum

log = logging.getLogger(__name__)

STAGE = "train"


def run_training(recipe, out_dir: str | Path | None = None, *, restart: bool = False) -> Path:
    """Train the recipe's ``train`` section; returns the exported HF model folder ``<out>/final``.

    ``out_dir`` defaults to the run layout's train folder; an explicit one is registered
    (``recipe.layout.register``) so later stages find it. The dataset is ``train.dataset_dir``,
    else the data stage's folder, built or brought up to date first from the recipe's
    ``data`` section. ``restart`` discards this config's checkpoints and trains from step 0.
    Every rank of a torchrun job calls this.
    """
    cfg: TrainConfig = recipe.require("train")
    out = Path(out_dir) if out_dir is not None else recipe.layout.train
    d = setup_distributed()
    try:
        dataset_dir = _ensure_pairs(recipe, cfg, d) if cfg.method == "dpo" else _ensure_dataset(recipe, cfg, d)
        if out_dir is not None and d.is_main:
            # Registered before training: a retrain into X that is killed must make `path: trained`
            # fail on X, not fall back to an older model in the default folder.
            recipe.layout.register(STAGE, out)
        m = train(cfg, dataset_dir=dataset_dir, out=out, seed=resolved_seed(cfg, recipe.seed),
                  run_name=recipe.name, restart=restart, dist=d)
        return out / m.outputs.get("final", FINAL)
    finally:
        teardown_distributed(d)


def _ensure_pairs(recipe, cfg: TrainConfig, d: Dist) -> Path:
    """DPO: the pairs to train on. ``train.dpo.pairs`` is the user's and only read; else the
    recipe's pairs stage folder, brought up to date first from its ``pairs`` section (the
    stage does nothing when it is current)."""
    from ja_instruct.pairs.records import is_pairs_dir

    if cfg.dpo.pairs:
        path = Path(cfg.dpo.pairs)
        if not path.exists():
            raise UserError(f"preference pairs {path} do not exist", field="train.dpo.pairs",
                            hint="Run `ja-instruct pairs RECIPE`, or point train.dpo.pairs at a pairs JSONL file.")
        return path
    path = recipe.stage_dir("pairs")
    if recipe.pairs is None:
        if not is_pairs_dir(path):
            raise UserError("train.method is dpo but the recipe has no pairs section and train.dpo.pairs is not set",
                            field="train.dpo.pairs",
                            hint="Add a pairs section (`ja-instruct pairs --help`) or set train.dpo.pairs.")
        return path
    if d.is_main:  # one process brings them up to date; under torchrun only when nothing is to do
        from ja_instruct.pairs.run import run_pairs

        run_pairs(recipe, check_only=d.world_size > 1)
    d.barrier()
    return path


def _ensure_dataset(recipe, cfg: TrainConfig, d: Dist) -> Path:
    """The dataset folder to train on. The recipe's own data folder is brought up to date from
    its ``data`` section (the data stage skips an up-to-date build itself); an explicit
    ``train.dataset_dir`` is the user's folder and is only built when it does not exist."""
    path = recipe_dataset_dir(recipe)
    own = not cfg.dataset_dir
    if recipe.data is None or (not own and is_dataset_dir(path)):
        if not is_dataset_dir(path):
            raise UserError(f"dataset directory {path} does not exist", field="train.dataset_dir",
                            hint="Run `ja-instruct data build RECIPE` first, or add a data section to the recipe.")
        return path
    if d.is_main:  # one rank builds, the others wait for it
        from ja_instruct.data.build import build_dataset, fingerprint, is_complete

        # `ja-instruct run` has just brought the data up to date: check quietly before calling the
        # data stage, whose own "up to date" line would be said twice
        if not is_complete(path, fingerprint(recipe.data, recipe.seed)):
            build_dataset(recipe.data, path, seed=recipe.seed, echo=log.info)
    d.barrier()
    return path


def train(cfg: TrainConfig, *, dataset_dir: Path, out: Path, seed: int, run_name: str = "run",
          restart: bool = False, dist: Dist | None = None,
          on_step: Callable[[int], None] | None = None) -> Manifest:
    """Train ``cfg`` on ``dataset_dir`` into ``out`` (see the module doc); returns the manifest.

    Args:
        cfg: the train section.
        dataset_dir: a folder written by ``ja-instruct data build`` (or ``save_to_disk``).
        out: the stage's output folder (``final/``, ``checkpoints/``, ``metrics.jsonl``, ...).
        seed: the resolved seed (``train.seed``, else the recipe's).
        run_name: the name written in the model card.
        restart: discard this config's checkpoints and train from step 0, even when up to date.
        dist: the process group, when the caller set it up (else set up and torn down here).
        on_step: called on every rank after each optimiser step (see `ja_instruct.train.loop.fit`).
    """
    d = dist if dist is not None else setup_distributed()
    try:
        return _train(cfg, Path(dataset_dir), Path(out), seed, run_name, restart, d, on_step)
    finally:
        if dist is None:
            teardown_distributed(d)


def _train(cfg: TrainConfig, dataset_dir: Path, out: Path, seed: int, run_name: str, restart: bool, d: Dist,
           on_step: Callable[[int], None] | None) -> Manifest:
    from ja_instruct.models import resolve_model

    # 1. Cheap checks and the identity of the output; nothing is loaded yet.
    resolve_grad_accum(cfg, d.world_size)
    model_path = d.main_first(lambda: resolve_model(cfg.model))  # rank 0 converts an embedded model once
    hashed = hashed_config(cfg, seed)
    inputs = train_inputs(dataset_dir, cfg.model, model_path, cfg.method)
    final = out / FINAL
    old = read_manifest(out, STAGE)
    want = make_manifest(STAGE, hashed, inputs)
    if not restart and old is not None and old.fingerprint == want.fingerprint \
            and final_is_complete(final, old.fingerprint):
        if d.is_main:
            log.info("train: %s is up to date (fingerprint %s); nothing to do", final, old.fingerprint)
        return old
    d.barrier()  # every rank has read the old manifest before rank 0 removes it
    if d.is_main:
        why = "--restart" if restart else \
            "; ".join(input_changes(old, inputs, hashed)) or f"{final} is missing or incomplete"
        log.info("train: training %s (%s)", final, why)
        out.mkdir(parents=True, exist_ok=True)
        remove_manifest(out)
        save_config(cfg, out)

    # 2. Tokenise, then fix the run: a hub model's commit is known for sure once its config is fetched.
    from ja_instruct.train.prepare import prepare

    p = prepare(cfg, model_path, dataset_dir, seed, d)
    inputs = {**inputs, "base_model": base_model_fingerprint(cfg.model, model_path)}
    run = run_id(hashed, inputs)
    run_dir = out / "checkpoints" / run
    if d.is_main:
        _start_run(run_dir, run, hashed, inputs, restart)
    d.barrier()

    # 3. Train (or resume), export, prune the other runs, and write the manifest last.
    from ja_instruct.data.tokenize import example_counts
    from ja_instruct.train.export import export_final
    from ja_instruct.train.loop import fit

    fitted = fit(p, out, run_dir, run, d, on_step=on_step)
    dtype = str(fitted.dtype).replace("torch.", "")
    # `tokens.kept` counts truncated examples too: `examples` spells the split out with reasons
    counts = example_counts(p.token_stats, cfg.max_length, cfg.overlong)
    details = {"method": cfg.method, "run": run, "steps": fitted.total_steps, "world_size": d.world_size, "dtype": dtype,
               "examples": len(p.examples), "tokens": p.token_stats,
               "tokenise": {**counts, "overlong": cfg.overlong, "max_length": cfg.max_length,
                            "summary": p.token_summary},
               "base_model": cfg.model, "dataset_dir": str(dataset_dir)}
    if fitted.dpo is not None:
        details["dpo"] = fitted.dpo
    manifest = make_manifest(STAGE, hashed, inputs, outputs={"final": FINAL}, details=details)
    card = {"name": run_name, "stats": p.dataset_stats, "steps": fitted.total_steps, "grad_accum": p.grad_accum,
            "world_size": d.world_size, "dtype": dtype, "seed": seed, "examples": len(p.unit_lengths),
            "supervised_tokens": p.token_stats.get("supervised_tokens"), "tokenise": counts,
            "trained": {"steps": fitted.total_steps, "steps_per_epoch": fitted.steps_per_epoch, "rows": fitted.rows,
                        "examples": len(p.unit_lengths), "tokens": (fitted.seen or {}).get("tokens"),
                        "supervised_tokens": (fitted.seen or {}).get("supervised_tokens"),
                        "per_step": fitted.per_step},
            "model_path": p.model_path, "method": cfg.method, "dpo": fitted.dpo}
    export_final(fitted.model, cfg, p.model_path, p.tokenizer, cfg.template, out, d, card, manifest.fingerprint)
    if d.is_main:
        removed = ckpt.prune_other_runs(run_dir.parent, keep=run)
        if removed:
            log.info("train: removed the checkpoints of %d other run(s) now that %s is exported: %s",
                     len(removed), final, ", ".join(removed))
        write_manifest(out, manifest)
        log.info("train: wrote %s (run %s, fingerprint %s)", final, run, manifest.fingerprint)
    d.barrier()
    return manifest


def _start_run(run_dir: Path, run: str, hashed: dict, inputs: dict[str, str], restart: bool) -> None:
    """Say which run trains and why (rank 0): resumed, or new and what differs from the last run."""
    if restart and run_dir.exists():
        shutil.rmtree(run_dir)
        log.info("train: --restart: discarded the checkpoints of run %s", run)
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        log.info("train: resuming run %s from %s", run, latest.name)
        return
    prev = ckpt.previous_run(run_dir.parent, run)
    if prev is not None and isinstance(prev.get("config"), dict):
        before = make_manifest(STAGE, prev["config"], prev.get("inputs") or {})
        why = "; ".join(input_changes(before, inputs, weights_config(hashed))) or "same settings"
        log.info("train: new run %s starts at step 0 (previous run %s: %s); its checkpoints are kept "
                 "until this run is exported", run, prev.get("run"), why)
    else:
        log.info("train: new run %s starts at step 0", run)
    # A fresh start of this run: its TensorBoard events of an earlier attempt would mislead.
    shutil.rmtree(run_dir.parent.parent / "tensorboard" / run, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_run_info(run_dir, run, weights_config(hashed), inputs)
