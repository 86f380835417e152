"""Plan a training run before renting GPUs: ``ja-instruct train RECIPE --plan``.

Nothing is trained and no weight is loaded. The plan reads:

* the **data**: the recipe's built dataset, tokenised exactly as training does (template,
  ``max_length``, ``overlong``) and packed into rows by the real `packing.pack_best_fit`.
  When it is not built, or its tokenizer does not load here, the lengths are an
  *assumption*, printed as such: ``--examples`` examples (default: the built dataset's
  count, else `DEFAULT_EXAMPLES`) whose token counts are the quantiles of a log-normal of
  mean ``--mean-tokens`` and log-space sigma `ASSUMED_SIGMA`, dropped or truncated at
  ``max_length`` and packed the same way;
* the **model config** only (``AutoConfig``, or ``--model-config`` for a model whose config
  cannot be loaded here): the model is built on the meta device (no memory, no weights) to
  count the parameters of the embedding, each decoder layer and the head, tied or not, with
  the LoRA adapters when ``lora.enabled``.

Steps, and the rows, examples and tokens of every step, are the training loop's own
(`packing.StepSampler` with the run's seed, in the recipe's ``batch_unit``); memory, FLOPs
and time are `ja_instruct.train.budget`'s arithmetic, whose docstring states every formula.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from ja_instruct.config import StrictModel
from ja_instruct.errors import UserError
from ja_instruct.train.budget import (GIB, STATES, TIGHT_MARGIN, ParamCount, Shape, flops_per_token, memory_per_gpu,
                                      min_gpus, total_bytes, wall_seconds)
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.packing import StepCounts

#: Spread (log-space sigma) of the assumed example lengths: instruction data has a long tail.
ASSUMED_SIGMA = 0.8
DEFAULT_EXAMPLES, DEFAULT_MEAN_TOKENS = 10_000, 300.0


class PlanOptions(StrictModel):
    """What ``train --plan`` assumes about the GPUs and, when it cannot read them, the data."""

    gpus: int = Field(8, ge=1)
    """Number of GPUs (FSDP ranks) the run would use."""
    gpu_mem: float = Field(80.0, gt=0)
    """Memory of one GPU in GiB, as nvidia-smi reports it (80 for an A100-80GB, 40 for an A100-40GB)."""
    mfu: float = Field(0.4, gt=0, le=1)
    """Model FLOPs utilisation: the share of the peak spent on the model's math."""
    gpu_peak_tflops: float = Field(312.0, gt=0)
    """Dense bf16 peak of one GPU in TFLOP/s (A100: 312; H100 SXM: 989)."""
    architecture: str | None = None
    """The architecture instead of the recipe model's own config: a config.json file, a folder
    holding one, or inline JSON; its ``model_type`` must be one transformers knows."""
    examples: int | None = Field(None, ge=1)
    """Assume this many examples instead of reading the dataset."""
    mean_tokens: float | None = Field(None, gt=0)
    """Assume this mean number of tokens per example instead of reading the dataset."""


@dataclass
class Data:
    """Token counts of the examples kept after tokenisation, and of the rows they pack into."""

    lengths: list[int]
    row_tokens: list[int]
    source: str
    dropped: int = 0
    truncated: int = 0
    rows: list[list[int]] = field(default_factory=list)
    """Example indices of each row, packed as training packs them."""


@dataclass
class Plan:
    """Everything ``--plan`` prints (bytes, tokens, seconds)."""

    recipe: str
    model_source: str
    params: ParamCount
    data: Data
    opts: PlanOptions
    grad_accum: int | None
    """Micro-batches per rank per step; None when it varies (``batch_unit`` examples or tokens)."""
    steps_per_epoch: int
    steps: int
    tokens: float
    memory: dict[str, tuple[str, float]]
    seconds: float
    flops_note: str
    advice: list[str] = field(default_factory=list)
    per_step: StepCounts | None = None
    """What each step of the run holds (`packing.count_steps`)."""
    epoch_rows: int = 0
    """Rows of one epoch (packed once, or, in examples or tokens, per step)."""


# --------------------------------------------------------------------------- the model

def load_model_config(cfg: TrainConfig, architecture: str | None):
    """``(transformers config, where it came from)``: ``architecture`` (``--model-config``) when
    given, else the recipe model's own config (a clear error suggesting ``--model-config`` when
    it cannot be loaded, e.g. a hub model offline)."""
    from transformers import AutoConfig

    from ja_instruct.train.model import config_overrides

    if architecture is None:
        from ja_instruct.models import resolve_model

        try:
            conf = AutoConfig.from_pretrained(resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code,
                                              **config_overrides(cfg))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the config of model '{cfg.model}' (offline, a hub model must be in the "
                            f"local HF cache): {str(e).splitlines()[0]}", field="train.model",
                            hint="Give the architecture instead: --plan --model-config CONFIG.json (or inline "
                                 "JSON); docs/training.md has one for PLaMo-13B.") from None
        return conf, f"{cfg.model} (its config only)"
    try:
        if architecture.strip().startswith("{"):
            raw, where = json.loads(architecture), "--model-config (inline JSON)"
        else:
            p = Path(architecture).expanduser()
            raw = json.loads((p / "config.json" if p.is_dir() else p).read_text(encoding="utf-8"))
            where = f"--model-config {architecture}"
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read --model-config: {e}", hint="Give a config.json file, a folder holding one, "
                        "or inline JSON such as '{\"model_type\": \"llama\", ...}'.") from None
    kind = raw.pop("model_type", None) if isinstance(raw, dict) else None
    try:
        conf = AutoConfig.for_model(kind, **{**raw, **config_overrides(cfg)})
    except (KeyError, ValueError, TypeError):
        raise UserError(f"--model-config: model_type {kind!r} is not one transformers knows without the model's "
                        "own code", hint="Describe the architecture with a known model_type, e.g. llama "
                        "(docs/training.md shows PLaMo-13B as a Llama-shaped config).") from None
    return conf, f"{cfg.model} as described by {where}"


def count_parameters(config, cfg: TrainConfig) -> ParamCount:
    """The parameters of ``config``'s causal LM, built on the meta device (no memory, no weights),
    by FSDP unit (`ja_instruct.train.model.decoder_layer_classes`); with ``lora.enabled`` the
    adapters are added as training adds them (`ja_instruct.train.model.apply_lora`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ja_instruct.train.model import apply_lora, decoder_layer_classes

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except (ValueError, KeyError, RuntimeError, NotImplementedError) as e:  # e.g. remote code that needs real tensors
        raise UserError(f"cannot build {type(config).__name__} to count its parameters: {str(e).splitlines()[0]}",
                        field="train.model", hint="Give a causal-LM architecture with --model-config.") from None
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    arch = type(model).__name__
    if cfg.lora.enabled:
        with warnings.catch_warnings():  # peft reads a deprecated transformers property: not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            model = apply_lora(model, cfg)
    layers = [m for m in model.modules() if isinstance(m, decoder_layer_classes(model))]

    def numel(module, trainable=False) -> int:
        return sum(q.numel() for q in module.parameters() if q.requires_grad or not trainable)

    return ParamCount(arch=arch, total=numel(model), embedding=emb.numel(), lm_head=0 if head is emb else head.numel(),
                      tied=head is emb, layers=[numel(m) for m in layers], trainable=numel(model, True),
                      trainable_layers=[numel(m, True) for m in layers])


def model_shape(config) -> Shape:
    """The widths of a decoder-only config (transformers maps GPT-2 style names onto these)."""
    def need(key: str) -> int:
        v = getattr(config, key, None)
        if not isinstance(v, int):
            raise UserError(f"the model config has no integer '{key}'", hint="Give it with --model-config.")
        return v

    h, heads = need("hidden_size"), need("num_attention_heads")
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    return Shape(hidden=h, q_width=heads * head_dim, kv_width=kv_heads * head_dim, intermediate=inter,
                 heads=heads, vocab=need("vocab_size"), layers=need("num_hidden_layers"))


# --------------------------------------------------------------------------- the data

def assumed_lengths(n: int, mean: float, max_length: int, overlong: str,
                    sigma: float = ASSUMED_SIGMA) -> tuple[list[int], int, int]:
    """``n`` example lengths of mean ``mean``: the quantiles of a log-normal (deterministic, not a
    sample), after the overlong policy. Returns ``(lengths kept, dropped, truncated)``."""
    from scipy.stats import lognorm

    dist = lognorm(s=sigma, scale=mean * math.exp(-sigma ** 2 / 2))  # E[X] = scale * exp(sigma^2 / 2)
    raw = [max(1, round(float(x))) for x in dist.ppf([(j + 0.5) / n for j in range(n)])]
    over = sum(x > max_length for x in raw)
    if overlong == "drop":
        return [x for x in raw if x <= max_length], over, 0
    return [min(x, max_length) for x in raw], 0, over


def read_data(recipe, cfg: TrainConfig, opts: PlanOptions) -> Data:
    """Example lengths from the built dataset (tokenised as training does), else the assumption;
    then the rows they pack into (`packing.pack_best_fit`, as training packs them)."""
    from ja_instruct.train.identity import is_dataset_dir, recipe_dataset_dir

    if cfg.method == "dpo":
        data = _pack(_pairs(recipe, cfg, opts), cfg)
        if cfg.packing and cfg.dpo.share_prompt and _can_share(cfg):
            data.rows = [[i] for i in range(len(data.lengths))]  # shared prompts: one pair per row
            data.row_tokens = list(data.lengths)
        return data
    path = recipe_dataset_dir(recipe)
    built = is_dataset_dir(path)
    if built and opts.examples is None and opts.mean_tokens is None:
        try:
            return _pack(_tokenised(cfg, path), cfg)
        except UserError as e:  # e.g. a hub tokenizer offline: fall back to the assumption, and say why
            why = f"{path} cannot be tokenised here: {e.message}"
    else:
        why = "--examples/--mean-tokens given" if built else f"the dataset {path} is not built"
    n = opts.examples
    if n is None and built:
        from ja_instruct.data import load_dataset_dir

        n = len(load_dataset_dir(path))
    n, mean = n or DEFAULT_EXAMPLES, opts.mean_tokens or DEFAULT_MEAN_TOKENS
    lengths, dropped, cut = assumed_lengths(n, mean, cfg.max_length, cfg.overlong)
    src = (f"ASSUMED ({why}): {n:,} examples of {mean:g} tokens on average (log-normal, sigma {ASSUMED_SIGMA}); "
           "give --examples/--mean-tokens, or build the data and plan where its tokenizer loads")
    return _pack(Data(lengths, [], src, dropped, cut), cfg)


def _tokenised(cfg: TrainConfig, path: Path) -> Data:
    from ja_instruct.data import load_dataset_dir
    from ja_instruct.data.templates import get_template
    from ja_instruct.data.tokenize import describe_token_stats, tokenize_dataset
    from ja_instruct.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code)
    ds, stats = tokenize_dataset(load_dataset_dir(path), tok, get_template(cfg.template, tok), cfg.max_length,
                                 cfg.overlong)
    dropped = sum(v for k, v in stats.items() if k.startswith("dropped_"))
    return Data([len(x) for x in ds["input_ids"]], [], f"read from {path}: "
                f"{describe_token_stats(stats, cfg.max_length, cfg.overlong)}", dropped, stats.get("truncated", 0))


def _pairs(recipe, cfg: TrainConfig, opts: PlanOptions) -> Data:
    """DPO: pair lengths (both answers, as training packs them) from the pairs when they exist,
    else the assumption of ``--examples`` pairs of two examples of ``--mean-tokens`` each."""
    path = Path(cfg.dpo.pairs) if cfg.dpo.pairs else recipe.stage_dir("pairs")
    if path.exists() and opts.examples is None and opts.mean_tokens is None:
        try:
            from ja_instruct.data.templates import get_template
            from ja_instruct.models import load_tokenizer, resolve_model
            from ja_instruct.train.dpo_data import describe_pair_stats, prepare_pairs

            tok = load_tokenizer(resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code)
            share = cfg.dpo.share_prompt and _can_share(cfg)
            pd = prepare_pairs(path, tok, get_template(cfg.template, tok), cfg.max_length, cfg.packing, share)
            return Data(pd.unit_lengths, [], f"read from {path}: " + describe_pair_stats(
                pd.stats, pd.stats["heldout"], cfg.max_length, cfg.packing), pd.stats["dropped_overlong"], 0)
        except UserError as e:
            why = f"{path} cannot be read here: {e.message}"
    else:
        why = "--examples/--mean-tokens given" if path.exists() else f"the pairs {path} do not exist yet"
    n, mean = opts.examples or DEFAULT_EXAMPLES, opts.mean_tokens or DEFAULT_MEAN_TOKENS
    lengths, dropped, _ = assumed_lengths(n, 2 * mean, cfg.max_length, "drop")
    src = (f"ASSUMED ({why}): {n:,} pairs of two answers of {mean:g} tokens on average each (log-normal, sigma "
           f"{ASSUMED_SIGMA}); give --examples (pairs)/--mean-tokens, or make the pairs first")
    return Data(lengths, [], src, dropped, 0)


def _can_share(cfg: TrainConfig) -> bool:
    """`prepare.can_share_prompt` on the model's config (no weights)."""
    from transformers import AutoConfig

    from ja_instruct.models import resolve_model
    from ja_instruct.train.prepare import can_share_prompt

    try:
        mconf = AutoConfig.from_pretrained(resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError, UserError):
        return "flash" not in str(cfg.attn_implementation or "")
    return can_share_prompt(cfg, mconf)


def _pack(data: Data, cfg: TrainConfig) -> Data:
    from ja_instruct.train.packing import pack_best_fit

    if not data.lengths:
        raise UserError("no example is left to train on", field="train.max_length",
                        hint="Raise train.max_length or set train.overlong: truncate.")
    data.rows = pack_best_fit(data.lengths, cfg.max_length) if cfg.packing else [[i] for i in range(len(data.lengths))]
    data.row_tokens = [sum(data.lengths[i] for i in r) for r in data.rows]
    return data


# --------------------------------------------------------------------------- the plan

def _spread(values: list[int], unit: str = "") -> str:
    lo, hi = min(values), max(values)
    unit = f" {unit}" if unit else ""
    return f"{lo:,}{unit}" if lo == hi else f"{lo:,}-{hi:,}{unit} (mean {sum(values) / len(values):,.1f})"


def step_summary(unit: str, global_batch_size: int, counts: StepCounts) -> str:
    """What the optimiser steps hold over all ranks, exactly (``counts``: the run's steps), the
    configured unit first: ``128 examples (each step 128-129 (mean 128.1)) = 3-6 rows (mean 4.4)
    = 23,755-41,869 tokens (mean 32,019.0)``; in rows: ``128 rows = ... examples = ... tokens``."""
    others = [_spread(counts.of(u), u) for u in ("rows", "examples", "tokens") if u != unit]
    head = f"{global_batch_size:,} {unit}"
    if unit != "rows":  # the configured size is a target: say what the steps really hold
        head += f" (each step {_spread(counts.of(unit))})"
    return " = ".join([head] + others)


def micro_batch_summary(cfg: TrainConfig, counts: StepCounts, grad_accum: int | None, ranks: int,
                        what: str = "GPU(s)") -> str:
    """How a step is shared out: ``micro batch 1 x grad accum 1-2 (mean 1.4; from the rows of
    each step) x 4 GPU(s)``, and the steps in which a rank has an empty micro-batch."""
    if grad_accum is not None:
        accum = f"grad accum {grad_accum}"
    else:
        mb = counts.micro_batches
        lo, hi = min(mb), max(mb)
        accum = (f"grad accum {lo} (" if lo == hi else f"grad accum {lo}-{hi} (mean {sum(mb) / len(mb):.1f}; ") \
            + "from the rows of each step)"
    text = f"micro batch {cfg.micro_batch_size} x {accum} x {ranks} {what}"
    idle = sum(1 for n in counts.idle if n)
    if idle:
        text += (f"; in {idle:,} of {len(counts.idle):,} steps some rank has a micro-batch without a row "
                 f"(one example per row cannot be shared out: {sum(counts.idle):,} empty micro-batches in all)")
    return text


def per_step_facts(cfg: TrainConfig, counts: StepCounts) -> dict:
    """The run's steps in a few numbers, for the model card: the unit, its configured size and
    min / mean / max rows, examples and tokens per step."""
    def stats(v: list[int]) -> dict:
        return {"min": min(v), "mean": round(sum(v) / len(v), 2), "max": max(v)}

    return {"unit": cfg.batch_unit, "global_batch_size": cfg.global_batch_size, "steps": len(counts.rows),
            **{u: stats(counts.of(u)) for u in ("rows", "examples", "tokens")}}


def plan_run(recipe, opts: PlanOptions, name: str = "") -> Plan:
    """The plan of the recipe's ``train`` section on ``opts.gpus`` GPUs; nothing is trained."""
    from ja_instruct.train.identity import resolved_seed
    from ja_instruct.train.packing import count_steps, make_sampler
    from ja_instruct.train.prepare import check_batch, model_max_length, resolve_grad_accum

    cfg: TrainConfig = recipe.require("train")
    accum = resolve_grad_accum(cfg, opts.gpus)
    conf, source = load_model_config(cfg, opts.architecture)
    limit = cfg.max_position_embeddings or model_max_length(conf)
    if limit is not None and cfg.max_length > limit:
        raise UserError(f"max_length {cfg.max_length} is over the model's limit of {limit} positions",
                        field="train.max_length", hint=f"Use max_length <= {limit}.")
    params, shape = count_parameters(conf, cfg), model_shape(conf)
    data = read_data(recipe, cfg, opts)
    check_batch(cfg, data.rows, data.lengths, opts.gpus)
    # The sampler of the run itself (same rows, same seed): its steps are the ones training takes.
    sampler = make_sampler(data.rows, data.lengths, cfg.batch_unit, cfg.global_batch_size, cfg.micro_batch_size,
                           opts.gpus, 0, resolved_seed(cfg, recipe.seed), max_length=cfg.max_length,
                           packing=cfg.packing)
    per_epoch = sampler.steps_per_epoch
    steps = int(min(cfg.epochs * per_epoch, cfg.max_steps or math.inf))
    counts = count_steps(sampler, range(steps))
    # Mean tokens of a step over an epoch, times the steps (rows: G rows of the mean row).
    epoch_tokens = sum(data.row_tokens)
    if cfg.batch_unit == "rows":
        per_step_tokens, epoch_rows = cfg.global_batch_size * epoch_tokens / len(data.rows), len(data.rows)
        seq = max(data.row_tokens)  # the longest row sizes the peak
    else:  # packed per step: the rows are those of the steps
        per_step_tokens = epoch_tokens / per_epoch
        epoch_rows = sum((counts if steps >= per_epoch else count_steps(sampler, range(per_epoch))).rows[:per_epoch])
        seq = counts.longest_row  # after rows are cut to share a step over the GPUs
    tokens = steps * per_step_tokens
    memory = memory_per_gpu(params, shape, cfg, opts.gpus, seq)
    per_token, how = flops_per_token(params, cfg.activation_checkpointing)
    plan = Plan(recipe=name, model_source=source, params=params, data=data, opts=opts, grad_accum=accum,
                steps_per_epoch=per_epoch, steps=steps, tokens=tokens, memory=memory,
                seconds=wall_seconds(per_token * tokens, opts.gpus, opts.gpu_peak_tflops, opts.mfu), flops_note=how,
                per_step=counts, epoch_rows=epoch_rows)
    if total_bytes(memory) > opts.gpu_mem * GIB * (1 - TIGHT_MARGIN):
        plan.advice = _advice(params, shape, cfg, opts, seq)
    return plan


def _advice(p: ParamCount, shape: Shape, cfg: TrainConfig, opts: PlanOptions, seq: int) -> list[str]:
    """What would make the run fit, each with the memory per GPU it would take."""
    tips, limit = [], opts.gpu_mem * GIB * (1 - TIGHT_MARGIN)
    if not cfg.activation_checkpointing:
        t = total_bytes(memory_per_gpu(p, shape, cfg, opts.gpus, seq, checkpointing=True))
        tips.append(f"turn on activation_checkpointing ({_gib(t)} per GPU)")
    if cfg.micro_batch_size > 1:
        tips.append(f"lower micro_batch_size to 1 "
                    f"({_gib(total_bytes(memory_per_gpu(p, shape, cfg, opts.gpus, seq, micro=1)))} per GPU)")
    if total_bytes(memory_per_gpu(p, shape, cfg, opts.gpus, seq, checkpointing=True, micro=1)) <= limit:
        return tips  # the knobs above are enough
    if seq >= 2048:
        t = total_bytes(memory_per_gpu(p, shape, cfg, opts.gpus, seq // 2, checkpointing=True, micro=1))
        tips.append(f"lower max_length to {seq // 2} ({_gib(t)} per GPU with checkpointing and micro batch 1)")
    n = min_gpus(p, shape, cfg, seq, opts.gpu_mem * GIB)
    if n is None:
        tips.append("use lora.enabled or a shorter max_length: the unsharded parts alone do not fit")
    elif n > opts.gpus:
        even = f"global_batch_size {cfg.global_batch_size} splits evenly over them; " \
            if cfg.batch_unit == "rows" else ""
        tips.append(f"use {n} GPUs ({even}with checkpointing and micro batch 1)")
    return tips


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return str(int(n))


def format_plan(plan: Plan, cfg: TrainConfig) -> str:
    """The plan as ``train --plan`` prints it."""
    p, d, o = plan.params, plan.data, plan.opts
    per_layer = _count(p.layers[0]) if len(set(p.layers)) == 1 else f"up to {_count(max(p.layers))}"
    other = p.root - p.embedding - p.lm_head
    rows, tok_epoch, full_steps = plan.epoch_rows, sum(d.row_tokens), cfg.epochs * plan.steps_per_epoch
    how = "packed" if cfg.batch_unit == "rows" else "packed per step, epoch 1"
    lines = [f"ja-instruct train --plan {plan.recipe} (nothing is trained)", "",
             f"model       {plan.model_source}",
             f"            {p.arch}: {_count(p.total)} parameters = embedding {_count(p.embedding)} + "
             f"{len(p.layers)} layers x {per_layer}" + (f" + head {_count(p.lm_head)} (untied)" if not p.tied else "")
             + (f" + {_count(other)} other" if other else "") + ("; head tied to the embedding" if p.tied else ""),
             f"            trainable: {_count(p.trainable)} "
             + ("(full fine-tuning)" if p.trainable == p.total else f"(LoRA r={cfg.lora.r} adapters)"),
             f"data        {d.source}",
             f"            {len(d.lengths):,} examples kept ({d.dropped:,} dropped, {d.truncated:,} truncated to "
             f"{cfg.max_length}), {tok_epoch:,} tokens per epoch",
             f"            {rows:,} rows of <= {cfg.max_length} tokens "
             + (f"({how}, {100 * tok_epoch / (rows * cfg.max_length):.2f}% full)" if cfg.packing else
                "(one example per row, padded to the longest of its micro-batch)"),
             f"steps       {plan.steps_per_epoch:,} per epoch x {cfg.epochs} epochs = {full_steps:,} optimiser steps"
             + (f"; max_steps stops at {plan.steps} ({plan.steps / plan.steps_per_epoch:.3f} epoch)"
                if plan.steps < full_steps else ""),
             f"per step    {step_summary(cfg.batch_unit, cfg.global_batch_size, plan.per_step)}",
             f"            = {micro_batch_summary(cfg, plan.per_step, plan.grad_accum, o.gpus)}"
             + ("; global_batch_size counts packed rows, not examples (batch_unit: rows)"
                if cfg.packing and cfg.batch_unit == "rows" else ""),
             "", f"memory per GPU ({o.gpus} x {o.gpu_mem:g} GiB, "
                 + ("FSDP2 full shard)" if o.gpus > 1 else "one process, nothing sharded)")]
    lines += [f"  {part:<16} {_gib(v):>10}  {how}" for part, (how, v) in plan.memory.items()]
    total, limit = total_bytes(plan.memory), o.gpu_mem * GIB
    if total <= limit:
        verdict = f"fits in {o.gpu_mem:g} GiB ({_gib(limit - total)} free)"
        if plan.advice:
            verdict += "; tight: allocator fragmentation may take that. To make room: " + "; or ".join(plan.advice)
    else:
        states = sum(plan.memory[k][1] for k in STATES)
        acts = plan.memory["activations"][1] + plan.memory["logits and loss"][1]
        verdict = (f"does not fit in {o.gpu_mem:g} GiB: {_gib(total - limit)} over (sharded states {_gib(states)}, "
                   f"activations and logits {_gib(acts)}); " + ("; or ".join(plan.advice) or "nothing helps"))
    hours = plan.seconds / 3600
    lines += [f"  {'total':<16} {_gib(total):>10}  {verdict}", "",
              f"time        {hours:.1f} h" if hours >= 1 else f"time        {plan.seconds / 60:.1f} min",
              f"            = {plan.flops_note}",
              f"            = {_count(p.total)} params x {plan.tokens / 1e6:,.2f} M tokens ({plan.steps} steps) / "
              f"({o.gpus} GPU(s) x {o.gpu_peak_tflops:g} TFLOP/s x MFU {o.mfu:g})"]
    return "\n".join(lines)
