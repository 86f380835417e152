"""Everything training needs before the first forward pass, and every check of the inputs.

A mistake in the recipe (missing model, global batch that does not divide, sequence
length over the model's limit, empty dataset) must fail here, in seconds, with a clear
`UserError`, not after the model has been loaded or a node allocation has been spent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.models import load_tokenizer, resolve_model
from ja_instruct.train.checkpoint import config_hash
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.model import Dist
from ja_instruct.train.packing import Example

log = logging.getLogger(__name__)

# Keys that do not change the trained weights: changing them keeps checkpoints / final valid.
_NOT_HASHED = ("save_every", "keep_last", "log_every", "tensorboard")


@dataclass
class Prepared:
    """The checked inputs of a training run."""

    cfg: TrainConfig
    seed: int
    grad_accum: int
    model_path: str
    tokenizer: object
    pad_id: int
    dataset_dir: Path
    examples: list[Example]
    token_stats: dict
    dataset_stats: dict = field(default_factory=dict)
    config_hash: str = ""


def resolve_grad_accum(cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches per step per rank such that micro x accum x world = global batch (checked)."""
    per_step = cfg.micro_batch_size * world_size
    if cfg.global_batch_size % per_step:
        raise UserError(f"global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size "
                        f"{cfg.micro_batch_size} x world size {world_size}", field="train.global_batch_size",
                        hint=f"Use a multiple of {per_step}, or change micro_batch_size / the number of ranks.")
    accum = cfg.global_batch_size // per_step
    if cfg.grad_accum is not None and cfg.grad_accum != accum:
        raise UserError(f"global_batch_size {cfg.global_batch_size} != micro_batch_size {cfg.micro_batch_size} "
                        f"x grad_accum {cfg.grad_accum} x world size {world_size}", field="train.grad_accum",
                        hint=f"Set grad_accum to {accum} or leave it out (it is derived).")
    return accum


def model_max_length(config) -> int | None:
    """The longest sequence the model's position embeddings support, if the config says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _dataset_dir(recipe, cfg: TrainConfig, d: Dist) -> Path:
    """The dataset folder; built first from the recipe's data section when it is missing."""
    path = Path(cfg.dataset_dir) if cfg.dataset_dir else recipe.stage_dir("data")
    if (path / "dataset").is_dir() or (path / "state.json").is_file():
        return path
    if recipe.data is None:
        raise UserError(f"dataset directory {path} does not exist", field="train.dataset_dir",
                        hint="Run `ja-instruct data build RECIPE` first, or add a data section to the recipe.")
    if d.is_main:  # one rank builds, the others wait for it
        from ja_instruct.data import build_dataset

        log.info("train: building the dataset first (%s)", path)
        build_dataset(recipe.data, path, seed=recipe.seed)
    d.barrier()
    return path


def prepare(recipe, out: Path, d: Dist) -> Prepared:
    """Check the recipe against the model and data, tokenise, and return what the loop needs."""
    from transformers import AutoConfig

    from ja_instruct.data import load_dataset_dir
    from ja_instruct.data.templates import get_template
    from ja_instruct.data.tokenize import tokenize_dataset
    from ja_instruct.train.export import read_dataset_stats

    cfg: TrainConfig = recipe.require("train")
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    grad_accum = resolve_grad_accum(cfg, d.world_size)

    # The model: path exists (rank 0 converts the embedded model once, the others wait).
    if d.is_main:
        model_path = resolve_model(cfg.model)
    d.barrier()
    if not d.is_main:
        model_path = resolve_model(cfg.model)
    try:
        mconf = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the config of model '{cfg.model}': {str(e).splitlines()[0]}",
                        field="train.model", hint="Check the path / hub id (offline: it must be cached).") from None
    limit = cfg.max_position_embeddings or model_max_length(mconf)
    if limit is not None and cfg.max_length > limit:
        raise UserError(f"max_length {cfg.max_length} is over the model's limit of {limit} positions",
                        field="train.max_length", hint=f"Use max_length <= {limit} (or raise train.max_position_embeddings for a RoPE model).")
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    template = get_template(cfg.template, tokenizer)  # unknown names fail here

    # The data.
    dataset_dir = _dataset_dir(recipe, cfg, d)
    ds = load_dataset_dir(dataset_dir)
    if len(ds) == 0:
        raise UserError(f"the dataset in {dataset_dir} is empty", field="train.dataset_dir",
                        hint="Check the data sources and filters (see stats.md beside the dataset).")
    tok_ds, token_stats = tokenize_dataset(ds, tokenizer, template, cfg.max_length, cfg.overlong)
    if len(tok_ds) == 0:
        raise UserError(f"no example of {dataset_dir} is left after tokenisation ({token_stats})",
                        field="train.max_length", hint="Raise max_length or use overlong: truncate.")
    examples = [Example(list(i), list(lab)) for i, lab in zip(tok_ds["input_ids"], tok_ds["labels"])]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # Same config + same data (the data stage's fingerprint, our token counts) = same result.
    stats = read_dataset_stats(dataset_dir)
    hashed = cfg.model_dump(mode="json", exclude=set(_NOT_HASHED))
    chash = config_hash({"train": hashed, "seed": seed, "dataset": str(dataset_dir.resolve()),
                         "fingerprint": stats.get("fingerprint"), "tokens": token_stats})
    return Prepared(cfg=cfg, seed=seed, grad_accum=grad_accum, model_path=model_path, tokenizer=tokenizer,
                    pad_id=pad_id, dataset_dir=dataset_dir, examples=examples, token_stats=token_stats,
                    dataset_stats=stats, config_hash=chash)
