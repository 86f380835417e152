"""The process group, the model (full or LoRA) and its FSDP2 sharding.

One code path for a laptop and a cluster:

* without ``torchrun`` there is no process group: one process, a plain module;
* under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) a process group is created (nccl on
  GPUs, gloo on CPU) and the model is sharded with FSDP2: ``fully_shard`` on every
  decoder layer (the classes the model lists in ``_no_split_modules``) and on the root,
  so each rank holds 1/world of the parameters, gradients and optimiser state.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ja_instruct.errors import UserError
from ja_instruct.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Dist:
    """Where this process stands: rank, world size, device; ``enabled`` when a process group exists."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks, in place (no-op in one process). NCCL reduces device tensors
        only, so the tensor travels to this rank's device and back."""
        if self.enabled:
            x = t.to(self.device)
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            t.copy_(x)
        return t


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun; a plain single process otherwise."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # nccl for GPUs; gloo is the CPU backend (FSDP2 runs on it, slowly, for tests and laptops).
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                device=device, enabled=True)


def teardown_distributed(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The forward/backward dtype: ``auto`` means bf16 on a GPU that has it, else fp32."""
    if cfg.dtype == "bf16":
        return torch.bfloat16
    if cfg.dtype == "fp32":
        return torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def decoder_layer_classes(model: torch.nn.Module) -> tuple[type, ...]:
    """The transformer-block classes to shard one by one (from ``_no_split_modules``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    classes = {type(m) for m in base.modules() if type(m).__name__ in names}
    if not classes:
        raise UserError(f"cannot find the decoder layers of {type(base).__name__} to shard "
                        "(its _no_split_modules is empty)", hint="Use a standard HF causal LM.")
    return tuple(classes)


def apply_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Wrap the model with peft LoRA adapters; only the adapters require gradients."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM", bias="none")
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:  # target modules not found
        raise UserError(f"LoRA: {e}", field="train.lora.target_modules",
                        hint="Name linear layers of this model, e.g. [q_proj, v_proj], or use all-linear.") from None
    return model


def config_overrides(cfg: TrainConfig) -> dict:
    """Model-config keys the train config overrides (passed to ``from_pretrained``/``AutoConfig``)."""
    return {"max_position_embeddings": cfg.max_position_embeddings} if cfg.max_position_embeddings else {}


def build_model(cfg: TrainConfig, model_path: str, d: Dist, dtype: torch.dtype) -> torch.nn.Module:
    """Load the base model (fp32 master weights), add LoRA, checkpointing, then shard it with FSDP2."""
    from transformers import AutoModelForCausalLM

    # Master weights in fp32: with bf16 training, FSDP2 casts a bf16 copy for compute
    # (MixedPrecisionPolicy) or autocast does in one process; the optimiser updates fp32.
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code,
                                                 dtype=torch.float32, **config_overrides(cfg), **extra)
    model.config.use_cache = False  # no KV cache while training (and packed masks need it off)
    if cfg.activation_checkpointing:
        # Non-reentrant checkpointing works with FSDP2 and with frozen (LoRA) inputs.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    if d.enabled:
        shard_model(model, cfg, d, dtype)  # also moves each shard to the mesh's device
    else:
        model.to(d.device)
    model.train()
    return model


def shard_model(model: torch.nn.Module, cfg: TrainConfig, d: Dist, dtype: torch.dtype) -> None:
    """FSDP2: ``fully_shard`` each decoder layer, then the root (embeddings, final norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    # Compute in `dtype`, but reduce gradients in fp32 so summing over ranks loses nothing.
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    layer_classes = decoder_layer_classes(model)
    for m in model.modules():
        if isinstance(m, layer_classes):
            fully_shard(m, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    # The root's parameters are gathered for the whole step anyway: no point resharding them.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             fused=device.type == "cuda")


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                    min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``ceil(warmup_ratio * total)`` steps, then cosine decay to ``min_lr_ratio``."""
    import math

    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        # `step` counts optimiser steps already taken; the lr of step s uses factor(s).
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
