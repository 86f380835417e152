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
from ja_instruct.models import load_tokenizer
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import Dist
from ja_instruct.train.packing import Example, build_rows, make_sampler, pack_best_fit

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The checked inputs of a training run."""

    cfg: TrainConfig
    seed: int
    grad_accum: int | None
    """Micro-batches per rank per step; None when it varies (``batch_unit`` examples or tokens)."""
    model_path: str
    tokenizer: object
    pad_id: int
    dataset_dir: Path
    examples: list[Example]
    token_stats: dict
    dataset_stats: dict = field(default_factory=dict)
    token_summary: str = ""
    """`ja_instruct.data.tokenize.describe_token_stats` of ``token_stats`` (kept / truncated / dropped, why)."""
    rows: list[list[int]] = field(default_factory=list)
    """The training rows (`ja_instruct.train.packing.build_rows`): example indices of each row
    (with DPO: pair indices, see `ja_instruct.train.dpo.expand_rows`)."""
    pairs: object = None
    """DPO: the tokenised pairs (`ja_instruct.train.dpo_data.PairData`); ``examples`` is then
    ``pairs.examples`` (chosen, rejected, chosen, ...). None for SFT."""

    @property
    def packs_units(self) -> bool:
        """Whether several units go into one row: with packing, except DPO with shared prompts,
        which puts one pair per row (its mask layout computes a row's whole L x L scores, so
        pairs side by side would only add masked-out work)."""
        return self.cfg.packing and (self.pairs is None or self.pairs.shared is None)

    @property
    def unit_lengths(self) -> list[int]:
        """Tokens of each unit the sampler orders: an example (SFT) or a pair (DPO)."""
        if self.pairs is not None:
            return self.pairs.unit_lengths
        return [len(e.input_ids) for e in self.examples]


def resolve_grad_accum(cfg: TrainConfig, world_size: int) -> int | None:
    """Micro-batches per step per rank such that micro x accum x world = global batch (checked);
    None with ``batch_unit`` examples or tokens, where it varies with the rows of each step
    (`ja_instruct.train.packing.rank_micro_batches`)."""
    if cfg.batch_unit != "rows":
        return None
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


def prepare(cfg: TrainConfig, model_path: str, dataset_dir: Path, seed: int, d: Dist) -> Prepared:
    """Check the config against the model and data, tokenise, and return what the loop needs.

    ``model_path`` is the resolved base model (`ja_instruct.models.resolve_model`); the
    dataset folder must exist (the stage builds it first when the recipe says how)."""
    from transformers import AutoConfig

    from ja_instruct.data import load_dataset_dir
    from ja_instruct.data.templates import get_template
    from ja_instruct.data.tokenize import describe_token_stats, tokenize_dataset
    from ja_instruct.train.export import read_dataset_stats

    grad_accum = resolve_grad_accum(cfg, d.world_size)
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if cfg.method == "dpo":
        return _prepare_dpo(cfg, seed, grad_accum, model_path, tokenizer, template, pad_id, dataset_dir, d,
                            share=cfg.packing and cfg.dpo.share_prompt and can_share_prompt(cfg, mconf))

    ds = load_dataset_dir(dataset_dir)
    if len(ds) == 0:
        raise UserError(f"the dataset in {dataset_dir} is empty", field="train.dataset_dir",
                        hint="Check the data sources and filters (see stats.md beside the dataset).")
    tok_ds, token_stats = tokenize_dataset(ds, tokenizer, template, cfg.max_length, cfg.overlong)
    summary = describe_token_stats(token_stats, cfg.max_length, cfg.overlong)
    if d.is_main:  # every run says what it trains on, truncations and drops included
        log.info("%s", summary)
    if len(tok_ds) == 0:
        raise UserError(f"no example of {dataset_dir} is left after tokenisation ({summary})",
                        field="train.max_length",
                        hint="Raise train.max_length, or set train.overlong: truncate to train on cut answers "
                             "(they end without EOS).")
    examples = [Example(list(i), list(lab)) for i, lab in zip(tok_ds["input_ids"], tok_ds["labels"])]
    rows = build_rows(examples, cfg.max_length, cfg.packing)
    check_batch(cfg, rows, [len(e.input_ids) for e in examples], d.world_size)
    return Prepared(cfg=cfg, seed=seed, grad_accum=grad_accum, model_path=model_path, tokenizer=tokenizer,
                    pad_id=pad_id, dataset_dir=dataset_dir, examples=examples, token_stats=token_stats,
                    dataset_stats=read_dataset_stats(dataset_dir), token_summary=summary, rows=rows)


def can_share_prompt(cfg: TrainConfig, model_config) -> bool:
    """Whether DPO can put a pair's prompt in its row once: it needs a mask over full attention
    (`ja_instruct.train.isolation`), not flash-attention's varlen kernels or sliding windows
    (whose width counts row positions)."""
    impl = str(cfg.attn_implementation or getattr(model_config, "_attn_implementation", None) or "")
    types = set(getattr(model_config, "layer_types", None) or ())
    window = getattr(model_config, "sliding_window", None) and (not types or "sliding_attention" in types)
    return "flash" not in impl and not window


def _prepare_dpo(cfg: TrainConfig, seed: int, grad_accum, model_path: str, tokenizer, template, pad_id: int,
                 pairs_path: Path, d: Dist, share: bool) -> Prepared:
    """`prepare` for ``method: dpo``: the pairs instead of the data stage's conversations."""
    from ja_instruct.train.dpo_data import describe_pair_stats, prepare_pairs

    data = prepare_pairs(pairs_path, tokenizer, template, cfg.max_length, cfg.packing, share)
    summary = describe_pair_stats(data.stats, data.stats["heldout"], cfg.max_length, cfg.packing)
    if d.is_main:
        log.info("%s", summary)
    lengths = data.unit_lengths
    several = cfg.packing and data.shared is None  # `Prepared.packs_units`
    rows = pack_best_fit(lengths, cfg.max_length) if several else [[i] for i in range(len(lengths))]
    check_batch(cfg, rows, lengths, d.world_size, packing=several)
    token_stats = {"total": data.stats["total"], "kept": data.stats["kept"], "tokens": data.stats["tokens"],
                   "supervised_tokens": sum(sum(t != -100 for t in e.labels) for e in data.examples)}
    return Prepared(cfg=cfg, seed=seed, grad_accum=grad_accum, model_path=model_path, tokenizer=tokenizer,
                    pad_id=pad_id, dataset_dir=pairs_path, examples=data.examples, token_stats=token_stats,
                    dataset_stats={},  # the pairs' own stats are not the data stage's (the card has a DPO section)
                    token_summary=summary, rows=rows, pairs=data)


def check_batch(cfg: TrainConfig, rows: list[list[int]], lengths: list[int], world_size: int,
                packing: bool | None = None) -> None:
    """Refuse a global batch the data cannot make (in ``tokens``: less than an average example,
    since a step takes whole examples), before any model is loaded."""
    try:
        make_sampler(rows, lengths, cfg.batch_unit, cfg.global_batch_size, cfg.micro_batch_size, world_size, 0, 0,
                     max_length=cfg.max_length, packing=cfg.packing if packing is None else packing)
    except ValueError as e:
        raise UserError(f"global_batch_size {cfg.global_batch_size} {cfg.batch_unit}: {e}",
                        field="train.global_batch_size",
                        hint="Raise global_batch_size: a step holds whole examples.") from None
