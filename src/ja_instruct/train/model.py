"""The model to train: the base model (full or LoRA), its compute dtype and its FSDP2 sharding.

* in one process (`ja_instruct.train.distributed.Dist` not enabled) the model is a plain
  module on the device;
* under ``torchrun`` it is sharded with FSDP2: ``fully_shard`` on every decoder layer (the
  classes the model lists in ``_no_split_modules``) and on the root, so each rank holds
  1/world of the parameters, gradients and optimiser state.
"""

from __future__ import annotations

import torch

from ja_instruct.errors import UserError
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import Dist


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
