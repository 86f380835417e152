"""The arithmetic of a training plan (`ja_instruct.train.plan`): memory per GPU by part, FLOPs, time.

Pure functions of parameter counts, model widths and the train config: no torch, no model.
The memory model is FSDP2 full shard over N GPUs as `ja_instruct.train.model` sets it up:
fp32 master weights, sharded; with bf16 the layers compute on bf16 copies gathered layer by
layer (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``). In bytes per GPU:

* **weights** ``4P/N``; **gradients** ``4T/N``; **optimiser state** (AdamW's fp32 m and v)
  ``8T/N``, with P all parameters and T the trainable ones (T = P unless LoRA). The bf16
  compute copies are not kept between layers: they are counted in the buffers.
* **activations** of one micro-batch of ``b`` rows of ``s`` tokens, hidden width ``h``,
  query width ``q`` (heads x head dim), key/value width ``k``, MLP width ``I``, and ``a``
  bytes per element (2 for bf16): per decoder layer ``a*b*s*(4h + 2q + 2k + 4I)``, i.e. the
  two RMSNorms' inputs and outputs (4h), Q and the attention output (2q), K and V (2k), the
  SwiGLU MLP's gate, up, activation and product (4I). This is the accounting of Korthikanti
  et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. (1)
  (``sbh(34 + 5as/h)`` bytes per GPT layer with 16-bit activations), redone for a
  Llama-style layer without dropout and with an attention kernel that keeps no ``s x s``
  scores (flash or sdpa's memory-efficient kernel keep only the output and a log-sum-exp).
  ``eager`` attention also keeps the scores: ``+ b*heads*s^2*(4 + a)`` (the fp32 softmax
  and its cast copy; the paper's ``5as^2b`` term, which also counts a dropout mask). With
  activation checkpointing each layer keeps only its input, ``a*b*s*h`` (the paper's full
  recomputation, ``2sbhL``), plus one layer recomputed at a time in the backward. Kernel
  workspaces, RoPE tables and HF's fp32 upcasts inside RMSNorm are not counted.
* **logits and loss** ``b*s*V*(a + 12)`` plus the final norm ``2*a*b*s*h``: the logits, and
  in the backward the fp32 log-softmax kept by the loss, its incoming and its outgoing
  gradient (4 bytes each).
* **buffers**: the root unit (embedding, final norm, head) stays gathered for the whole
  step, parameters and gradients in the compute dtype; two decoder layers are gathered at
  a time (the current one and the prefetched next; every layer with
  ``reshard_after_forward: false``); in the backward the largest layer's unsharded
  gradient and its fp32 copy for the reduce-scatter; and, for packed rows, the 4-D
  attention mask (``b*s^2`` bytes) when the kernel takes one (sdpa, eager;
  `ja_instruct.train.isolation`; flash and flex take boundaries instead). One process
  (N = 1) is a plain module: no gathers, but autocast's bf16 weight copies (``2P``).
* **runtime** `RUNTIME_BYTES`: CUDA context, NCCL and cuBLAS workspaces.

These are estimates: the caching allocator's fragmentation adds a few per cent, so a plan
with less than `TIGHT_MARGIN` of the memory free is called tight.

**Time** = ``6 x P x tokens / (N x peak x MFU)``: forward 2, backward 4 FLOPs per parameter
and token; ``8 x`` with activation checkpointing (the recomputation is one more forward);
LoRA computes no weight gradients for the frozen base (``4 x``, ``6 x`` checkpointed).
Attention-score FLOPs are left out (a few per cent at 8k tokens for a 13B model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ja_instruct.train.config import TrainConfig

GIB = 1024 ** 3
#: CUDA context, NCCL and cuBLAS workspaces of one training process (about 1-2 GiB on an A100).
RUNTIME_BYTES = 2 * GIB
#: A plan that leaves less than this share of the GPU free is tight (allocator fragmentation).
TIGHT_MARGIN = 0.1
STATES = ("weights", "gradients", "optimiser state")


@dataclass
class ParamCount:
    """Parameters of a model by FSDP unit; ``trainable*`` count what the optimiser updates."""

    arch: str
    total: int
    embedding: int
    lm_head: int
    """0 when the head is tied to the embedding."""
    tied: bool
    layers: list[int]
    """Parameters of each decoder layer (one FSDP unit each)."""
    trainable: int
    trainable_layers: list[int]

    @property
    def root(self) -> int:
        """Parameters outside the decoder layers (embedding, final norm, head): FSDP's root unit."""
        return self.total - sum(self.layers)

    @property
    def trainable_root(self) -> int:
        return self.trainable - sum(self.trainable_layers)


@dataclass
class Shape:
    """The widths that size a micro-batch's activations."""

    hidden: int
    q_width: int
    kv_width: int
    intermediate: int
    heads: int
    vocab: int
    layers: int


def activation_bytes(shape: Shape, rows: int, seq: int, act: int, checkpointing: bool,
                     attention: str | None) -> dict[str, float]:
    """Activations of one micro-batch of ``rows`` x ``seq`` tokens at ``act`` bytes per element
    (module doc): ``{"layers": kept by the decoder layers, "logits": final norm, logits and loss}``."""
    t = rows * seq
    h, q, k, i = shape.hidden, shape.q_width, shape.kv_width, shape.intermediate
    layer = act * t * (4 * h + 2 * q + 2 * k + 4 * i)
    if attention == "eager":
        layer += rows * shape.heads * seq * seq * (4 + act)
    kept = shape.layers * act * t * h + layer if checkpointing else shape.layers * layer
    return {"layers": kept, "logits": 2 * act * t * h + t * shape.vocab * (act + 12)}


def takes_mask(packing: bool, attention: str | None) -> bool:
    """Whether packed rows reach attention as a dense 4-D mask (flash: boundaries; flex: BlockMask)."""
    return packing and not any(k in (attention or "") for k in ("flash", "flex"))


def buffer_bytes(p: ParamCount, gpus: int, compute: int, rows: int, seq: int, attention: str | None,
                 packing: bool, reshard: bool) -> float:
    """Temporary memory (module doc): FSDP2's gathered layers and gradient reductions, the
    root unit, and the packed attention mask; ``compute`` bytes per compute-dtype element."""
    mask = rows * seq * seq * (compute if attention == "eager" else 1) if takes_mask(packing, attention) else 0
    if gpus == 1:
        return mask + (2 * p.total if compute == 2 else 0)
    gathered = (2 * max(p.layers, default=0) if reshard else sum(p.layers)) * compute
    reduce = max(p.trainable_layers, default=0) * (compute + (4 if compute != 4 else 0))
    return gathered + reduce + (p.root + p.trainable_root) * compute + mask


def memory_per_gpu(p: ParamCount, shape: Shape, cfg: TrainConfig, gpus: int, seq: int,
                   checkpointing: bool | None = None, micro: int | None = None) -> dict[str, tuple[str, float]]:
    """Bytes per GPU by part, ``{part: (what it holds, bytes)}``, for micro-batches of rows of up
    to ``seq`` tokens; ``checkpointing`` and ``micro`` replace the config's (for what-ifs)."""
    ckpt = cfg.activation_checkpointing if checkpointing is None else checkpointing
    b = cfg.micro_batch_size if micro is None else micro
    act = 4 if cfg.dtype == "fp32" else 2  # auto means bf16 on a GPU that has it
    acts = activation_bytes(shape, b, seq, act, ckpt, cfg.attn_implementation)
    sh = ", sharded" if gpus > 1 else ""
    lora = "" if p.trainable == p.total else ", LoRA adapters only"
    buffers = ("FSDP gathers and reductions" if gpus > 1 else "bf16 weight copies" if act == 2 else "none") \
        + (", attention mask" if takes_mask(cfg.packing, cfg.attn_implementation) else "")
    return {
        "weights": (f"fp32 master weights{sh}", 4 * p.total / gpus),
        "gradients": (f"fp32{lora}{sh}", 4 * p.trainable / gpus),
        "optimiser state": (f"AdamW m and v in fp32{lora}{sh}", 8 * p.trainable / gpus),
        "activations": (f"{b} x {seq} tokens, {'fp32' if act == 4 else 'bf16'}, checkpointing "
                        f"{'on' if ckpt else 'off'}", acts["layers"]),
        "logits and loss": (f"{b} x {seq} x {shape.vocab} logits", acts["logits"]),
        "buffers": (buffers, buffer_bytes(p, gpus, act, b, seq, cfg.attn_implementation, cfg.packing,
                                          cfg.reshard_after_forward)),
        "runtime": ("CUDA context, NCCL, workspaces", RUNTIME_BYTES),
    }


def total_bytes(memory: dict[str, tuple[str, float]]) -> float:
    """The sum of `memory_per_gpu`'s parts."""
    return sum(v for _, v in memory.values())


def flops_per_token(p: ParamCount, checkpointing: bool) -> tuple[float, str]:
    """Training FLOPs per token, and how they were counted."""
    full = p.trainable == p.total
    k = (6 if full else 4) + (2 if checkpointing else 0)
    how = f"{k} x params x tokens: forward 2 + " + ("backward 4" if full else
                                                     "input gradients 2 (LoRA: no base weight gradients)")
    return k * p.total, how + (" + recomputed forward 2 (activation checkpointing)" if checkpointing else "")


def wall_seconds(flops: float, gpus: int, peak_tflops: float, mfu: float) -> float:
    """Seconds to do ``flops`` on ``gpus`` GPUs of ``peak_tflops`` TFLOP/s at utilisation ``mfu``."""
    return flops / (gpus * peak_tflops * 1e12 * mfu)


def min_gpus(p: ParamCount, shape: Shape, cfg: TrainConfig, seq: int, limit: float) -> int | None:
    """The fewest GPUs (>= 2; with ``batch_unit: rows``, splitting ``global_batch_size`` evenly) on which the run fits in
    ``limit`` bytes with checkpointing and micro batch 1, keeping `TIGHT_MARGIN` free; None if
    the unsharded parts alone do not fit. The sharded states shrink as 1/N, the rest does not."""
    lean = memory_per_gpu(p, shape, cfg, 2, seq, checkpointing=True, micro=1)
    states = 2 * sum(lean[k][1] for k in STATES)
    room = limit * (1 - TIGHT_MARGIN) - (total_bytes(lean) - states / 2)
    if room <= 0:
        return None
    n = max(2, math.ceil(states / room))
    # Rows must divide over the ranks (micro batch 1); examples/tokens steps are split over any number.
    while cfg.batch_unit == "rows" and cfg.global_batch_size % n and n < cfg.global_batch_size:
        n += 1
    return n
