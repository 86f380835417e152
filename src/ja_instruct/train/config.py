"""Config of the train stage: SFT with FSDP2 (``ja-instruct train``).

This module is imported for ``--help`` and by `ja_instruct.recipe`, so it may
import only the stdlib, pydantic and `ja_instruct.config`.

The defaults of the PLaMo-13B-Instruct run (the seed's Table 2) live in
``recipes/plamo-13b-instruct.yaml``; the defaults here suit a small CPU run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_serializer, model_validator

from ja_instruct.config import StrictModel


class LoraConfig(StrictModel):
    """LoRA adapters through peft instead of full fine-tuning."""

    enabled: bool = False
    """Train LoRA adapters (the base weights stay frozen) instead of every weight."""
    r: int = Field(16, ge=1)
    """Rank of the LoRA update matrices."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator: the update is scaled by ``alpha / r``."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input during training."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names (suffixes) that get adapters, e.g. ``[q_proj, v_proj]``; ``all-linear``
    means every linear layer except the output head (peft's shortcut)."""
    export: Literal["merged", "adapter"] = "merged"
    """``merged``: fold the adapters into the base weights and export a plain HF model;
    ``adapter``: export only the adapter (peft format; loading needs the base model)."""


class GenerationDefaults(StrictModel):
    """Sampling defaults written to the exported ``generation_config.json``."""

    do_sample: bool = True
    """Sample (True) or decode greedily (False) by default."""
    temperature: float = Field(1.0, gt=0)
    """Softmax temperature (the PLaMo-13B-Instruct card uses 1.0)."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling mass (PLaMo card: 0.95)."""
    top_k: int = Field(50, ge=0)
    """Top-k sampling cut-off (PLaMo card: 50)."""
    repetition_penalty: float = Field(1.0, gt=0)
    """Repetition penalty (1.0 = off)."""


class DpoConfig(StrictModel):
    """Direct Preference Optimisation after SFT (``train.method: dpo``), in the same FSDP2 loop.

    Each (chosen, rejected) pair is two packed examples of one row (or two padded rows);
    the loss uses their summed answer log-probabilities under the policy and under the
    reference model (the model the run starts from: the SFT model, or with LoRA the
    adapter-free model), which are computed once before step 1 and cached beside the pairs.
    """

    pairs: str | None = None
    """Preference pairs: a folder written by ``ja-instruct pairs``, a JSONL file (``prompt``,
    ``chosen``, ``rejected``; or the UltraFeedback / HH-RLHF layouts) or an HF dataset folder;
    default: the recipe's pairs stage folder, built or brought up to date first from its
    ``pairs`` section. A path given here is not rebuilt; the reference log-probabilities are
    cached beside it (``<pairs>/reference/``, ``<file>.reference/``; the train folder when that
    cannot be written)."""
    beta: float = Field(0.1, gt=0)
    """DPO's beta: the strength of the KL penalty towards the reference (TRL's default 0.1;
    llm-jp's 13B DPO used 0.5). For ``loss: ipo`` it is IPO's tau."""
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    """``sigmoid``: DPO, -log sigmoid(beta x margin); ``ipo``: IPO, (margin / tokens - 1/(2 beta))^2
    on answer log-ratios averaged per token (TRL's ``ipo``)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Conservative DPO: the share of pairs assumed mislabelled; the sigmoid loss becomes
    -(1-e) log sigmoid(beta x) - e log sigmoid(-beta x). 0: plain DPO."""
    sft_weight: float = Field(0.0, ge=0)
    """Weight of an SFT term, the mean NLL per token of the chosen answers, added to the loss
    (RPO; TRL's ``loss_type: [sigmoid, sft]`` with ``loss_weights: [1, w]``). 0: none."""
    share_prompt: bool = True
    """With packing, put each pair's prompt in its row once: ``prompt | chosen | rejected``, the
    rejected answer masked from the chosen one, both answers' positions following the prompt.
    Each answer sees exactly what it sees in its own sequence (checked on the model at start-up),
    and the prompt is computed once instead of twice. A row then holds one pair: a mask layout
    computes a row's whole L x L attention scores, so pairs side by side would only add masked-out
    work. Needs a mask layout (sdpa, eager, flex; not flash-attention's varlen kernels, nor
    sliding-window layers), else it is off: false packs the two examples whole, side by side,
    several pairs per row."""
    eval_every: int = Field(0, ge=0)
    """Measure the held-out pairs (preference accuracy, reward margin) every N steps; 0: before
    step 1 and after the last step only. Needs held-out pairs (``pairs.heldout_fraction``)."""


class TrainConfig(StrictModel):
    """The 'train' section of a recipe: supervised fine-tuning (or DPO after it) with PyTorch FSDP2."""

    method: Literal["sft", "dpo"] = "sft"
    """``sft``: supervised fine-tuning on the data stage's conversations; ``dpo``: preference
    tuning on (chosen, rejected) pairs (the ``dpo`` section) of the model in ``model``, usually
    an SFT model. The batch, schedule, packing, LoRA, checkpoint and export settings mean the
    same; with ``batch_unit: examples`` a global batch counts pairs."""
    dpo: DpoConfig | None = None
    """DPO settings (``method: dpo``; default values when left out)."""

    model: str
    """Base model: a HF model directory, a hub id (``pfnet/plamo-13b``) or
    ``embedded:smollm2-135m-instruct`` (see `ja_instruct.models.resolve_model`)."""
    trust_remote_code: bool = False
    """Allow the model's own Python code from the hub (PLaMo-13B needs it). Off unless the recipe says so."""
    template: str = "plamo"
    """Prompt format used to render the conversations (``plamo``, ``llmjp-alpaca`` or ``tokenizer``);
    it is installed as the exported tokenizer's chat template."""
    dataset_dir: str | None = None
    """Dataset directory written by ``ja-instruct data build``; default: the recipe's data stage
    folder (``<out_dir>/data`` or its ``--out``), built or brought up to date first from the
    recipe's ``data`` section. A folder given here is only built when it does not exist."""
    max_length: int = Field(2048, ge=8)
    """Tokens per training row (the context length); must not exceed the model's
    ``max_position_embeddings``."""
    max_position_embeddings: int | None = Field(None, ge=1)
    """Override the model config's ``max_position_embeddings`` (RoPE models accept longer
    positions; PLaMo-13B-Instruct was trained at 8192). Also written to the exported config."""
    overlong: Literal["truncate", "drop"] = "drop"
    """What to do with an example longer than ``max_length``. ``drop`` (default) leaves it out:
    a cut answer has no EOS, so training on it teaches the model not to stop. ``truncate`` keeps
    its first ``max_length`` tokens instead (more data, at that cost). Either way the run logs
    and the model card state how many were kept whole, truncated and dropped."""
    packing: bool = True
    """Pack several examples into one row. Their boundaries are passed to attention explicitly
    (a block-causal mask, or flash-attention sequence lengths) and checked on the model at start-up:
    a model that ignores them (e.g. remote code that builds its own causal mask) is refused with a
    clear error. False pads each example to the longest one in its micro-batch."""
    micro_batch_size: int = Field(1, ge=1)
    """Rows per forward/backward pass on one rank."""
    grad_accum: int | None = Field(None, ge=1)
    """Micro-batches accumulated per optimiser step on one rank; default: derived from
    ``global_batch_size / (micro_batch_size * world size)``. Only with ``batch_unit: rows``: in
    the other units the number of rows, so of micro-batches, varies from step to step."""
    batch_unit: Literal["rows", "examples", "tokens"] = "rows"
    """What ``global_batch_size`` counts. ``examples``: conversations per optimiser step, what
    Alpaca, PLaMo and HF-Trainer-style recipes mean by batch size (per-device batch x
    accumulation x GPUs); ``tokens``: tokens per step (padding not counted); ``rows`` (default,
    the meaning of earlier versions): training rows. With ``packing`` a row of ``max_length``
    tokens holds many examples (dozens at 8192), so 128 rows is far more than 128 examples.
    With ``examples`` or ``tokens`` each epoch's shuffled examples are cut into
    round(epoch total / global_batch_size) steps of equal size, give or take one example,
    and each step is packed on its own into rows (rows packed over the whole dataset hold
    anything from one long example to hundreds of short ones, so whole rows could not make
    even steps). Every example is trained once per epoch; the steps do not depend on the
    number of GPUs. A step's rows are shared over the ranks (a row is cut between examples
    when there are fewer rows than ranks x micro-batches), so the micro-batches per rank vary
    from step to step. The run log and ``train --plan`` print the steps and the rows,
    examples and tokens per step."""
    global_batch_size: int = Field(8, ge=1)
    """Size of one optimiser step over all ranks, in ``batch_unit`` (rows by default). With
    ``rows`` it must equal micro_batch_size x grad_accum x world size; with ``tokens`` it must
    be at least an average example (a step holds whole examples)."""
    epochs: int = Field(1, ge=1)
    """Passes over the dataset."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps (a cap for demos and smoke tests); the schedule is
    computed over the capped length."""
    lr: float = Field(1e-5, gt=0)
    """Peak learning rate (AdamW)."""
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    """Share of the steps spent on a linear warm-up from 0 to ``lr``; cosine decay follows."""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """The cosine decays to ``lr * min_lr_ratio`` at the last step."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay (not applied to biases and norm weights)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value; null disables clipping."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision. ``bf16``: bf16 weights in the forward/backward with fp32 master weights,
    fp32 gradient reduction and fp32 optimiser state; ``fp32``: everything fp32; ``auto``: bf16 on a
    GPU that supports it, fp32 on CPU."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory, ~30% more compute)."""
    attn_implementation: str | None = None
    """Attention kernel passed to ``from_pretrained`` (``sdpa``, ``flash_attention_2``, ``eager``);
    default: transformers' choice. With ``flash_attention_2`` (GPU) a packed row costs the sum of its
    examples' squared lengths instead of the row length squared."""
    reshard_after_forward: bool = True
    """FSDP2: free the gathered parameters of a layer after its forward (ZeRO-3); False keeps them
    until the backward (ZeRO-2-like: more memory, less communication)."""
    save_every: int = Field(500, ge=0)
    """Save a sharded checkpoint every N optimiser steps (0: only at the end)."""
    keep_last: int = Field(2, ge=1)
    """Keep this many most recent checkpoints; older ones are deleted."""
    seed: int | None = None
    """Seed of the data order, initialisation of adapters and dropout; default: the recipe's ``seed``."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapters (peft) instead of full fine-tuning."""
    log_every: int = Field(1, ge=1)
    """Write a metrics line (JSONL, TensorBoard) every N steps."""
    tensorboard: bool = True
    """Also write TensorBoard event files to ``<out>/tensorboard`` when tensorboard is installed."""
    save_dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Weight dtype of the exported model; ``auto``: the base model's own dtype (its config's
    ``dtype``), fp32 when it does not say."""
    generation: GenerationDefaults = GenerationDefaults()
    """Sampling defaults of the exported ``generation_config.json`` (PLaMo card values)."""

    @model_validator(mode="after")
    def _check_batch(self) -> "TrainConfig":
        if self.batch_unit != "rows":
            if self.grad_accum is not None:
                raise ValueError(f"grad_accum is set, but with batch_unit {self.batch_unit} the micro-batches "
                                 "per step vary with the rows of the step: leave grad_accum out")
            return self
        # The world size is only known at run time; check what can be checked now.
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"micro_batch_size {self.micro_batch_size}")
        if self.grad_accum is not None and self.global_batch_size % (self.micro_batch_size * self.grad_accum):
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of "
                             f"micro_batch_size x grad_accum = {self.micro_batch_size * self.grad_accum}")
        return self

    @model_validator(mode="after")
    def _dpo_section(self) -> "TrainConfig":
        if self.method == "sft" and self.dpo is not None:
            raise ValueError("the dpo section is set but method is sft: set method: dpo, or remove the dpo section")
        if self.method == "dpo" and self.dpo is None:
            self.dpo = DpoConfig()
        if self.dpo is not None and self.dpo.loss == "ipo" and self.dpo.label_smoothing:
            raise ValueError("dpo.label_smoothing applies to the sigmoid loss only: leave it out with loss: ipo")
        if self.method == "dpo" and self.overlong == "truncate":
            raise ValueError("overlong: truncate does not apply to DPO, which compares whole answers (a pair that "
                             "does not fit is dropped and counted): leave overlong out")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_unit(self, handler):
        # The default unit is what global_batch_size meant before batch_unit existed: leaving it
        # out of the dump keeps the hashed config, so the identity (run id, manifest) of every
        # existing run, unchanged. Loading a dump without it gives "rows" back.
        data = handler(self)
        if isinstance(data, dict) and self.batch_unit == "rows":
            data.pop("batch_unit", None)
        if isinstance(data, dict) and self.method == "sft":  # likewise for SFT runs made before DPO existed
            data.pop("method", None)
            data.pop("dpo", None)
        return data
