"""What a training run IS: its config, its inputs, and where its finished model lives.

Cheap on purpose (no torch, no model, no tokenizer): the train stage decides "already
done" from these before loading anything, and the generate stage calls
`find_trained_model` to check that ``path: trained`` means what the recipe says now.

* `hashed_config`: the train keys that change the result (not the logging, checkpoint
  cadence or memory knobs), with the resolved seed. It is the train manifest's config.
* inputs: ``{"data": <the dataset's fingerprint>, "base_model": <the base model's>}``.
* the *run id* (`run_id`) names the checkpoint folder ``<out>/checkpoints/<run id>/``: the
  hash of the keys that change the WEIGHTS plus the inputs. Export-only keys
  (``generation``, ``save_dtype``, ``lora.export``) are left out of it, so changing them
  re-exports from the finished run's last checkpoint instead of training again.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.io import stable_hash
from ja_instruct.manifest import (config_hash, describe_changes, file_fingerprint, model_dir_fingerprint,
                                  read_manifest)
from ja_instruct.train.config import TrainConfig

FINAL = "final"
COMPLETE = ".complete"

# Keys that cannot change the trained weights: logging, checkpoint cadence, and memory/speed
# knobs that compute the same thing another way (activation recomputation, when FSDP frees
# gathered layers, how a global batch is split into micro-batches: the rows of each global
# batch and the loss normalisation over it do not depend on the split, see
# `packing.StepSampler`). Changing them keeps the finished model and resumes the checkpoints,
# e.g. a smaller micro batch or activation checkpointing after an out-of-memory crash at step
# 500 of a 13B run. `dataset_dir` is a location: the data's identity is its fingerprint (an
# input), not where it lies.
NOT_HASHED = ("save_every", "keep_last", "log_every", "tensorboard", "activation_checkpointing",
              "reshard_after_forward", "micro_batch_size", "grad_accum", "dataset_dir")
# Keys that change only the exported folder, not the weights being trained.
_EXPORT_ONLY = ("generation", "save_dtype")


def hashed_config(cfg: TrainConfig, seed: int) -> dict:
    """The JSON of every train key that changes the result, with the resolved ``seed``
    (``train.seed``, else the recipe's): the config of the train manifest."""
    out = cfg.model_dump(mode="json", exclude=set(NOT_HASHED))
    out["seed"] = seed
    # DPO: the pairs' location (their identity is the `pairs` input), when held-out pairs are
    # measured, and whether prompts are shared in rows (the same answers' log-probabilities,
    # computed another way) cannot change the weights: changing them resumes the run.
    for key in ("pairs", "eval_every", "share_prompt"):
        (out.get("dpo") or {}).pop(key, None)
    return out


def weights_config(hashed: dict) -> dict:
    """`hashed_config` without the keys that only change the export (what the run trains)."""
    out = {k: v for k, v in copy.deepcopy(hashed).items() if k not in _EXPORT_ONLY}
    out.get("lora", {}).pop("export", None)
    return out


def run_id(hashed: dict, inputs: dict[str, str]) -> str:
    """Name of the checkpoint folder of a run: same weights config + same inputs = same run."""
    return stable_hash({"config": weights_config(hashed), "inputs": dict(sorted(inputs.items()))})


def resolved_seed(cfg: TrainConfig, recipe_seed: int) -> int:
    """``train.seed`` when set, else the recipe's seed."""
    return cfg.seed if cfg.seed is not None else recipe_seed


# --------------------------------------------------------------------------- inputs

def is_dataset_dir(path: Path) -> bool:
    """Whether ``path`` holds a dataset written by ``ja-instruct data build`` (or its ``dataset/``)."""
    return (path / "dataset" / "state.json").is_file() or (path / "state.json").is_file()


def data_fingerprint(dataset_dir: str | Path) -> str:
    """Identity of a dataset folder: the data stage's manifest fingerprint; for a folder without
    one (hand-made with ``save_to_disk``, or built by an older version) the ``fingerprint`` of
    its stats.json, else a content hash of the saved dataset."""
    path = Path(dataset_dir)
    m = read_manifest(path, "data")
    if m is not None:
        return m.fingerprint
    stats = path / "stats.json"
    if stats.is_file():
        try:
            fp = json.loads(stats.read_text(encoding="utf-8-sig")).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            fp = None
        if fp:
            return str(fp)
    if not is_dataset_dir(path):
        raise UserError(f"dataset directory {path} does not exist", field="train.dataset_dir",
                        hint="Run `ja-instruct data build RECIPE` first, or add a data section to the recipe.")
    return file_fingerprint(path / "dataset" if (path / "dataset").is_dir() else path)


def _hub_commit(repo_id: str) -> str | None:
    """The commit of ``repo_id`` in the local HF cache (what an offline load would read), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id, no cache: nothing to pin
        return None
    return Path(hit).parent.name if isinstance(hit, str) else None


def base_model_fingerprint(model: str, resolved: str) -> str:
    """Identity of the base model ``model`` (a recipe's ``train.model``) resolved to ``resolved``
    (`ja_instruct.models.resolve_model`): a local folder (embedded models convert to one) by
    `model_dir_fingerprint`; a hub id by its id and the cached commit it loads.

    A hub snapshot's files are fetched lazily (config first, weights when the model is
    loaded), so hashing the snapshot folder would change half-way through the first run; the
    commit sha pins every file of it instead."""
    p = Path(resolved)
    if p.is_dir():
        return model_dir_fingerprint(p)
    return stable_hash({"hub": model, "commit": _hub_commit(model)})


def train_inputs(dataset_dir: Path, model: str, resolved: str, method: str = "sft") -> dict[str, str]:
    """The inputs of the train manifest: ``{"data": ..., "base_model": ...}``; with DPO
    ``{"pairs": ..., "base_model": ...}`` (``dataset_dir`` is then the pairs' path)."""
    if method == "dpo":
        from ja_instruct.pairs.records import load_pairs

        return {"pairs": load_pairs(dataset_dir).fingerprint, "base_model": base_model_fingerprint(model, resolved)}
    return {"data": data_fingerprint(dataset_dir), "base_model": base_model_fingerprint(model, resolved)}


# --------------------------------------------------------------------------- the finished model

def final_is_complete(final_dir: Path, fingerprint: str) -> bool:
    """True when ``final_dir`` was fully written by the run whose manifest has ``fingerprint``."""
    marker = Path(final_dir) / COMPLETE
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def recipe_dataset_dir(recipe) -> Path:
    """The dataset the recipe trains on: ``train.dataset_dir``, else the data stage's folder."""
    cfg = recipe.train
    if cfg is not None and cfg.dataset_dir:
        return Path(cfg.dataset_dir)
    return recipe.layout.data


def find_trained_model(recipe) -> tuple[Path, str]:
    """The recipe's trained model: ``(final dir, train manifest fingerprint)``.

    Reads the train stage's folder from the run layout (so ``ja-instruct train --out X``
    is honoured) and checks, without loading any model, that the model there is what the
    recipe describes now.

    Raises:
        UserError (field ``generate.models``): no complete train output (never trained, or a
            retrain was stopped midway); the recipe's train section differs from the one
            the model was trained with; or the dataset / base model changed since.
    """
    out = recipe.layout.train
    hint = "Run `ja-instruct train RECIPE` (or `ja-instruct run RECIPE`) first."
    m = read_manifest(out, "train")
    final = out / (m.outputs.get("final", FINAL) if m is not None else FINAL)
    if m is None or not final_is_complete(final, m.fingerprint):
        raise UserError(f"'path: trained' but {out} holds no complete trained model (never trained, or the "
                        "last training was stopped before it finished)", field="generate.models", hint=hint)
    cfg = recipe.train
    if cfg is None:  # trained elsewhere and registered: nothing in this recipe to compare with
        return final, m.fingerprint
    stale = "Retrain it with `ja-instruct train RECIPE` (or `ja-instruct run RECIPE`)."
    hashed = hashed_config(cfg, resolved_seed(cfg, recipe.seed))
    if config_hash(hashed) != m.config_hash:
        raise UserError(f"the trained model in {final} was made with another train section "
                        f"({describe_changes(m.config, hashed)})", field="generate.models", hint=stale)
    if cfg.method == "dpo":
        from ja_instruct.pairs.records import PAIRS_FILE, is_pairs_dir, load_pairs

        pairs = Path(cfg.dpo.pairs) if cfg.dpo.pairs else recipe.stage_dir("pairs")
        # Pairs deleted after training change nothing about the model: check only what exists.
        # A pairs folder without its manifest is being remade, so the pairs are changing.
        exists = pairs.is_file() or (pairs / PAIRS_FILE).is_file()
        now = load_pairs(pairs).fingerprint if pairs.is_file() or is_pairs_dir(pairs) else None
        if exists and now != m.inputs.get("pairs"):
            raise UserError(f"the preference pairs {pairs} changed since the model in {final} was trained",
                            field="generate.models", hint=stale)
    else:
        dataset_dir = recipe_dataset_dir(recipe)
        # A dataset deleted after training changes nothing about the model: check only what exists.
        if (read_manifest(dataset_dir, "data") is not None or is_dataset_dir(dataset_dir)) \
                and data_fingerprint(dataset_dir) != m.inputs.get("data"):
            raise UserError(f"the dataset {dataset_dir} changed since the model in {final} was trained",
                            field="generate.models", hint=stale)
    base = _base_model_now(cfg.model)
    if base is not None and base != m.inputs.get("base_model"):
        raise UserError(f"the base model '{cfg.model}' changed since the model in {final} was trained",
                        field="generate.models", hint=stale)
    return final, m.fingerprint


def _base_model_now(model: str) -> str | None:
    """The base model's fingerprint when it can be had cheaply (no conversion, no download)."""
    from ja_instruct.models import resolve_model

    if model.startswith("embedded:"):
        return None  # resolving may convert a GGUF; the train stage checks it when it runs
    try:
        return base_model_fingerprint(model, resolve_model(model))
    except UserError:  # base model deleted after training: the trained model is still whole
        return None
