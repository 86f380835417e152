"""Packed examples never attend to each other: the boundaries are passed to attention
explicitly, and a start-up check on the real model proves that the model honours them.

Transformers can *infer* a block-diagonal mask from position ids that restart
(``masking_utils.find_packed_sequence_indices``), but that is luck, not a guarantee: its
flash-attention path only infers boundaries for a batch of one row
(``modeling_flash_attention_utils._is_packed_sequence``), and remote-code models that build
their own causal mask never look. So `attention_layout` picks, from the model's
``config._attn_implementation``, how the example boundaries (`packing.collate`'s segment ids)
reach the kernel:

* ``varlen``, flash-attention kernels (``flash_attention_2/3/4``, hub ``...flash-attn...``):
  the micro-batch is flattened into one row without padding, with ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` (`packing.collate_flat`, the format of transformers'
  ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``). Transformers hands them to
  ``flash_attn_varlen_func``, which attends within each sequence only: correct for any
  micro-batch size, and padding costs nothing.
* ``mask``, sdpa and anything else: a boolean 4-D mask ``B x 1 x L x L`` (True: may attend) =
  same segment, not in the future, and inside the window on sliding-window layers.
  Transformers uses a 4-D mask as given (``_preprocess_mask_arguments``). It costs L² bytes
  per row: 64 MiB at 8192 tokens.
* ``float_mask``, eager (which adds the mask to the scores): the same mask as 0 / dtype min.
* ``flex``, flex_attention: the same mask as a ``BlockMask``.
* ``plain``, packing off: one example per row, right-padded. Causal attention alone keeps the
  padding away from every real token, so the model gets input ids only and a model with its
  own mask code trains unchanged.

Position ids restart at every example in every packed layout (RoPE sees each example from 0).

`check_isolation` then runs two packed rows of up to three short examples through exactly
the training forward of the built (sharded) model and compares every example's logits with
that example's own forward. A model that does not honour the boundaries (remote code that
builds its own causal mask, an attention kernel that ignores the mask) stops the run with a
`UserError` that names it and suggests ``packing: false``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ja_instruct.errors import UserError
from ja_instruct.train.packing import Example, collate, collate_flat, example_spans

log = logging.getLogger(__name__)

# Tolerances of the check, as shares of the largest |logit| of the lone forwards ("scale").
# Measured on SmolLM2-135M (30 layers, CPU, max |logit| 34): with the boundaries honoured,
# fp32 differs by 5e-5..1e-4 and bf16 by 0.47 (1.4%: the two forwards run other kernels on
# other shapes, and bf16 keeps 8 mantissa bits); with them ignored, by 34..38 in both.
#: fp32: 1e-4, or 1e-5 of the scale for larger logits (deeper models accumulate more rounding).
FP32_TOLERANCE = (1e-4, 1e-5)
#: bf16/fp16: 10% of (1 + scale): 7x the measured noise, a tenth of what a leak does.
HALF_TOLERANCE = 0.1

_LAYER_TYPES = {"full_attention", "sliding_attention"}


@dataclass(frozen=True)
class AttentionLayout:
    """How a micro-batch is collated and handed to the model so that packed examples stay apart."""

    kind: str
    """``varlen``, ``mask``, ``float_mask``, ``flex`` or ``plain`` (see the module doc)."""
    attn_implementation: str
    dtype: torch.dtype
    """The compute dtype (of the ``float_mask``)."""
    window: int | None = None
    """Sliding-window length of the windowed layers, if any."""
    mixed: bool = False
    """Both full and sliding-window layers: the mask is a dict keyed by layer type."""

    def collate(self, examples: list[Example], rows: list[list[int]], pad_id: int) -> dict:
        """The CPU tensors of one micro-batch (``labels`` included) in this layout."""
        return collate_flat(examples, rows) if self.kind == "varlen" else collate(examples, rows, pad_id)

    def spans(self, examples: list[Example], rows: list[list[int]]) -> list[tuple[int, int, int, int]]:
        """``(example, row, start, length)`` of each example in `collate`'s tensors."""
        return example_spans(examples, rows, flat=self.kind == "varlen")

    def model_inputs(self, batch: dict, device: torch.device) -> dict:
        """The keyword arguments of the model's forward for a collated ``batch`` (labels left out)."""
        inputs = {"input_ids": batch["input_ids"].to(device), "use_cache": False}
        if self.kind == "plain":
            return inputs
        inputs["position_ids"] = batch["position_ids"].to(device)
        if self.kind == "varlen":
            for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
                inputs[key] = batch[key].to(device)
            # Python ints: the kernel wants them on the host, and a tensor would cost a device sync.
            inputs["max_length_q"], inputs["max_length_k"] = int(batch["max_length_q"]), int(batch["max_length_k"])
            return inputs
        seg = batch["segment_ids"].to(device)
        branch = batch["branch_ids"].to(device) if "branch_ids" in batch else None
        if branch is not None and (self.window is not None or self.kind not in ("mask", "float_mask", "flex")):
            raise ValueError(f"branch_ids (a shared prompt) need a full-attention mask layout, not {self.kind}")
        if self.mixed:  # models with both kinds of layers take a mask per layer type
            inputs["attention_mask"] = {"full_attention": self._mask(seg, None),
                                        "sliding_attention": self._mask(seg, self.window)}
        else:
            inputs["attention_mask"] = self._mask(seg, self.window, branch)
        return inputs

    def _mask(self, seg: torch.Tensor, window: int | None, branch: torch.Tensor | None = None):
        """Block-causal mask of segment ids ``seg`` (B x L): q may see kv when both lie in the
        same segment, kv <= q and, with a window, q - kv < window (transformers' convention).
        With ``branch`` ids (DPO's shared prompt: 0 the shared prefix, 1 and 2 the two answers
        that follow it), q also needs kv on the shared prefix or on its own branch."""
        if self.kind == "flex":
            return _block_mask(seg, window, branch)
        idx = torch.arange(seg.shape[1], device=seg.device)
        allowed = idx[None, :] <= idx[:, None]
        if window is not None:
            allowed = allowed & (idx[:, None] - idx[None, :] < window)
        mask = (seg[:, :, None] == seg[:, None, :]) & allowed  # B x L x L
        if branch is not None:
            mask = mask & ((branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None]))
        mask = mask[:, None]
        if self.kind == "float_mask":
            return torch.zeros(mask.shape, dtype=self.dtype, device=seg.device).masked_fill_(
                ~mask, torch.finfo(self.dtype).min)
        return mask


def _block_mask(seg: torch.Tensor, window: int | None, branch: torch.Tensor | None = None):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, kv):
        ok = (seg[b, q] == seg[b, kv]) & (kv <= q)
        if branch is not None:
            ok = ok & ((branch[b, kv] == 0) | (branch[b, kv] == branch[b, q]))
        return ok & (q - kv < window) if window is not None else ok

    batch, length = seg.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=seg.device)


def _base_config(model: torch.nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return base.config


def attention_layout(model: torch.nn.Module, packing: bool, dtype: torch.dtype, name: str) -> AttentionLayout:
    """The layout for this model's attention implementation (see the module doc)."""
    config = _base_config(model)
    impl = str(getattr(config, "_attn_implementation", None) or "eager")
    if not packing:
        return AttentionLayout("plain", impl, dtype)
    if "flash" in impl:  # the kernel applies sliding windows itself
        return AttentionLayout("varlen", impl, dtype)
    kind = "flex" if impl == "flex_attention" else "float_mask" if impl == "eager" else "mask"
    types = set(getattr(config, "layer_types", None) or ())
    if types - _LAYER_TYPES:
        raise UserError(f"packing with {impl} attention cannot keep the examples of {name} apart: it has "
                        f"{', '.join(sorted(types - _LAYER_TYPES))} layers, which take no attention mask",
                        field="train.packing",
                        hint="Set `packing: false`, or `attn_implementation: flash_attention_2` on a GPU.")
    window = getattr(config, "sliding_window", None)
    if types and "sliding_attention" not in types:
        window = None  # a window in the config that no layer uses (e.g. Qwen2 without use_sliding_window)
    return AttentionLayout(kind, impl, dtype, window=window, mixed=window is not None and len(types) > 1)


def tolerance(dtype: torch.dtype, scale: float) -> float:
    """Allowed max |Δlogit| between packed and lone forwards; ``scale``: max |logit| (lone)."""
    if dtype == torch.float32:
        return max(FP32_TOLERANCE[0], FP32_TOLERANCE[1] * scale)
    return HALF_TOLERANCE * (1.0 + scale)


def probe_examples(examples: list[Example], vocab_size: int) -> list[Example]:
    """Three short, distinct examples: the ends of the run's first examples (answers differ where
    prompts share a preamble), or deterministic random ids when the data has too few."""
    picked: list[Example] = []
    for ex in examples[:1000]:
        cut = (24, 16, 12)[len(picked)]
        if len(ex.input_ids) >= 4 and all(p.input_ids != ex.input_ids[-cut:] for p in picked):
            picked.append(Example(ex.input_ids[-cut:], ex.labels[-cut:]))
            if len(picked) == 3:
                break
    if len(picked) >= 2:
        return picked
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(vocab_size, (n,), generator=g).tolist() for n in (24, 16, 12)]
    return [Example(i, i) for i in ids]


def check_isolation(model: torch.nn.Module, layout: AttentionLayout, examples: list[Example], *, name: str,
                    pad_id: int, autocast, device: torch.device, distributed: bool = False) -> float:
    """Packed logits must equal lone logits on the real model; returns the max |Δlogit|.

    Two rows, ``[a, b, c]`` and ``[b]`` (padded, or flattened with the first), go through
    `AttentionLayout.model_inputs` and the model exactly as in training; each example also goes
    alone through a plain ``model(input_ids)``. Every rank must call this with the same examples
    (FSDP forwards are collective); the verdict is the max over ranks. Raises `UserError` when the
    difference exceeds `tolerance` or the forward rejects the boundaries.
    """
    probe = probe_examples(examples, int(getattr(_base_config(model), "vocab_size", None) or 256))
    rows = [list(range(len(probe))), [1]]
    was_training = model.training
    model.eval()  # no dropout: both forwards must be deterministic
    try:
        with torch.no_grad(), autocast:
            lone = [model(input_ids=torch.tensor([ex.input_ids], device=device), use_cache=False).logits[0].float()
                    for ex in probe]
            batch = layout.model_inputs(layout.collate(probe, rows, pad_id), device)
            try:
                packed = model(**batch).logits.float()
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001  (any failure of foreign model code is the verdict)
                detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                raise UserError(f"packing cannot be used with {name}: its forward rejects explicit example "
                                f"boundaries ({layout.attn_implementation}, {layout.kind}): {detail}",
                                field="train.packing", hint=_HINT) from None
    finally:
        model.train(was_training)
        reshard(model)
    diff = max((packed[r, s:s + n] - lone[i]).abs().max().item() for i, r, s, n in layout.spans(probe, rows))
    scale = max(t.abs().max().item() for t in lone)
    diff, scale = _max_over_ranks([diff, scale], device if distributed else None)
    tol = tolerance(layout.dtype, scale)
    if not diff <= tol:  # NaN fails too
        raise UserError(f"packing is not safe with {name}: examples packed into one row do not give the logits "
                        f"each gives alone (max |Δlogit| {diff:.3g} > tolerance {tol:.3g}, "
                        f"{layout.attn_implementation} attention, {str(layout.dtype).replace('torch.', '')}); "
                        "the model does not honour the example boundaries, so packed examples would attend "
                        "to each other", field="train.packing", hint=_HINT)
    if not distributed or torch.distributed.get_rank() == 0:
        log.info("packing isolation checked on %s: max |Δlogit| %.1g (%s attention, %s; tolerance %.1g)",
                 name, diff, layout.attn_implementation, layout.kind, tol)
    return diff


_HINT = ("Set `packing: false` in the train section (one example per row, padded), "
         "or use a model whose attention takes transformers' masks.")


def _max_over_ranks(values: list[float], device: torch.device | None) -> list[float]:
    """Element-wise max over ranks (``device``: this rank's, None in one process), so that every
    rank reaches the same verdict; NaN counts as inf."""
    t = torch.nan_to_num(torch.tensor(values, dtype=torch.float64), nan=float("inf"))
    if device is not None:
        import torch.distributed as dist

        x = t.to(device)  # NCCL reduces device tensors only
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
        t = x.cpu()
    return t.tolist()


def reshard(model: torch.nn.Module) -> None:
    """FSDP2 keeps a module gathered after a forward when it does not reshard after forward (the
    root) and no backward follows: shard it again before the optimiser sees the parameters."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
