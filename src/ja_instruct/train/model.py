"""The model to train: the base model (full or LoRA), its compute dtype and its FSDP2 sharding.

* in one process (`ja_instruct.train.distributed.Dist` not enabled) the model is loaded
  with ``from_pretrained`` and is a plain module on the device;
* under ``torchrun`` it is sharded with FSDP2: ``fully_shard`` on every decoder layer (the
  classes the model lists in ``_no_split_modules``) and on the root, so each rank holds
  1/world of the parameters, gradients and optimiser state.

Loading under ``torchrun`` is torchtitan's and torchtune's practice: only rank 0 reads the
checkpoint (``from_pretrained`` on the CPU, fp32, then LoRA as in one process). Every rank
builds a skeleton of the same module from the config (`build_skeleton`: parameters on the meta
device, no memory, no disk read), adds the same LoRA adapters, shards it, allocates its own
shards only (``to_empty``) and receives them from rank 0, tensor by tensor, as its rows of each
tensor (`load_from_rank0`). A non-zero rank's peak is its shards: 1/world of the fp32 model
instead of all of it (benchmarks/load_memory.py measures it).

What a state dict does not carry (non-persistent buffers such as rotary ``inv_freq``, and
plain tensor attributes of remote-code models such as PLaMo's cached ``cos``/``sin``) is not
on the meta device in a skeleton: the model's own ``__init__`` computes it on the CPU, as in
transformers 4. transformers 5's ``from_pretrained`` leaves such tensors of a remote-code model
uninitialised or on meta; `load_pretrained` repairs them from a skeleton (one process too).
Guarantees are checked, not assumed: rank 0's skeleton must hold exactly the tensors it loaded
(names, shapes, dtypes, ties), every rank must hold rank 0's, and after loading no tensor may be
left on the meta device and tied parameters must still be one tensor.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ja_instruct.errors import UserError
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import Dist

log = logging.getLogger(__name__)


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


def _attn_kwargs(cfg: TrainConfig) -> dict:
    return {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}


@contextlib.contextmanager
def _parameters_on_meta():
    """Parameters go to the meta device as they are registered, while buffers and plain tensor
    attributes are computed for real: accelerate's ``init_empty_weights(include_buffers=False)``
    (accelerate is not a dependency). A parameter is allocated only for the instant before it
    moves, and the module's own weight initialisation then runs on meta tensors (free)."""
    register = torch.nn.Module.register_parameter

    def to_meta(module: torch.nn.Module, name: str, param) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            kind, kwargs = type(param), param.__dict__
            module._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name].__dict__.update(kwargs)

    torch.nn.Module.register_parameter = to_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_skeleton(cfg: TrainConfig, model_path: str) -> torch.nn.Module:
    """The module `load_pretrained` returns, built from the config with no weights: parameters on
    the meta device (no memory, no checkpoint read); buffers and tensor attributes hold the values
    the model's own ``__init__`` computes. The global RNG is left as it was."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code, **config_overrides(cfg))
    with torch.random.fork_rng(devices=[]), _parameters_on_meta():
        return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code,
                                                dtype=torch.float32, **_attn_kwargs(cfg))


def _from_pretrained(cfg: TrainConfig, model_path: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code,
                                                dtype=torch.float32, **config_overrides(cfg), **_attn_kwargs(cfg))


def load_pretrained(cfg: TrainConfig, model_path: str) -> torch.nn.Module:
    """The base model with its weights, on the CPU, in fp32, its non-persistent state repaired.

    Master weights in fp32: with bf16 training, FSDP2 casts a bf16 copy for compute
    (MixedPrecisionPolicy) or autocast does in one process; the optimiser updates fp32.

    transformers 5 builds the model on the meta device and re-creates non-persistent buffers
    uninitialised, refilled only by ``_init_weights``: a remote-code model's own buffers (and
    plain tensor attributes, left on meta) would hold garbage. Their values are taken from a
    `build_skeleton` (cheap), whatever ``_init_weights`` did."""
    model = _from_pretrained(cfg, model_path)
    repaired = adopt_unsaved_state(model, build_skeleton(cfg, model_path))
    if repaired:
        log.warning("%s: from_pretrained left %d non-persistent tensor(s) without their values (%s); using "
                    "the values the model's own code computes", cfg.model, len(repaired), ", ".join(repaired[:4]))
    return model


def _finish(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """What every rank does to the base model alike: no KV cache, checkpointing, LoRA."""
    model.config.use_cache = False  # no KV cache while training (and packed masks need it off)
    if cfg.activation_checkpointing:
        # Non-reentrant checkpointing works with FSDP2 and with frozen (LoRA) inputs.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    return model


def build_model(cfg: TrainConfig, model_path: str, d: Dist, dtype: torch.dtype) -> torch.nn.Module:
    """The model to train: base model (fp32 master weights), checkpointing, LoRA; under
    ``torchrun`` sharded with FSDP2 and loaded from rank 0 only (see the module docstring)."""
    if not d.enabled:  # one process: nothing to share, the simple path
        model = _finish(load_pretrained(cfg, model_path), cfg)
        model.to(d.device)
        model.train()
        return model
    with torch.random.fork_rng(devices=[]):  # LoRA's random init here is discarded: draw nothing
        model = _finish(build_skeleton(cfg, model_path), cfg)
    full: dict[str, torch.Tensor] = {}
    if d.is_main:
        # Rank 0 reads the checkpoint as the one-process path does (same RNG draws, so the same
        # LoRA initialisation); its tensors are only referenced, then sent after sharding. Its
        # non-persistent state is not sent: every skeleton computed its own.
        pretrained = _finish(_from_pretrained(cfg, model_path), cfg)
        check_same_module(model, pretrained, cfg.model)
        full = pretrained.state_dict()
        del pretrained
    aliases = _aliases(model)
    shard_model(model, cfg, d, dtype)  # also moves each shard (and the buffers) to the mesh's device
    load_from_rank0(model, full, d)
    del full
    check_loaded(model, aliases, cfg.model)
    model.train()
    return model


def _unsaved(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str, bool]]:
    """What a state dict does not carry, by qualified name: non-persistent buffers and plain tensor
    attributes (a remote-code model's cached ``cos``/``sin``...) -> (module, attribute, is buffer)."""
    out = {}
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for b in sorted(m._non_persistent_buffers_set):
            if m._buffers.get(b) is not None:
                out[prefix + b] = (m, b, True)
        for attr, v in vars(m).items():
            if isinstance(v, torch.Tensor):
                out[prefix + attr] = (m, attr, False)
    return out


def _get(m: torch.nn.Module, attr: str, is_buffer: bool) -> torch.Tensor:
    return m._buffers[attr] if is_buffer else vars(m)[attr]


def adopt_unsaved_state(target: torch.nn.Module, source: torch.nn.Module) -> list[str]:
    """Copy ``source``'s non-persistent buffers and tensor attributes into ``target`` where
    ``target``'s are missing, on the meta device, or hold other values; returns their names."""
    theirs, changed = _unsaved(target), []
    for name, (m, attr, is_buffer) in _unsaved(source).items():
        src = _get(m, attr, is_buffer)
        if name not in theirs:
            changed.append(name)
            continue  # reported: the structure check or the meta check will name it
        tm, _, t_is_buffer = theirs[name]
        dst = _get(tm, attr, t_is_buffer)
        if dst.is_meta or dst.shape != src.shape or dst.dtype != src.dtype or not torch.equal(dst, src.to(dst.device)):
            value = src.detach().to("cpu" if dst.is_meta else dst.device).clone()
            if t_is_buffer:
                tm._buffers[attr] = value
            else:
                setattr(tm, attr, value)
            changed.append(name)
    return changed


def _aliases(model: torch.nn.Module) -> dict[str, str]:
    """Each parameter name -> the first name of the same tensor (tied weights share one)."""
    first: dict[int, str] = {}
    return {n: first.setdefault(id(p), n) for n, p in model.named_parameters(remove_duplicate=False)}


def check_same_module(skeleton: torch.nn.Module, pretrained: torch.nn.Module, name: str) -> None:
    """Refuse to go on when the module built from the config is not the one ``from_pretrained``
    loaded: the same config (attention implementation included), every state-dict entry with the
    same shape and dtype, the same weights tied."""
    def inventory(model):
        config = {f"config.{k}": v for k, v in model.config.to_dict().items()}
        return {**config, "config.attn_implementation": model.config._attn_implementation,
                **{k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}}

    a, b = inventory(skeleton), inventory(pretrained)
    diff = sorted(set(a) ^ set(b)) or [k for k in a if a[k] != b[k]]
    if not diff and _aliases(skeleton) != _aliases(pretrained):
        diff = [k for k, v in _aliases(skeleton).items() if _aliases(pretrained).get(k) != v]
    if diff:
        what = ", ".join(f"{k} {a.get(k, 'absent')} vs {b.get(k, 'absent')}" for k in diff[:3])
        raise UserError(f"{name}: the model built from its config differs from the one from_pretrained loads "
                        f"(built vs loaded: {what}), so rank 0 cannot send its weights to the other ranks",
                        field="train.model", hint="Train it in one process, or report the model's code.")


def _is_meta(t: torch.Tensor) -> bool:
    return t.to_local().is_meta if hasattr(t, "to_local") else t.is_meta


def _rows(n: int, world: int, rank: int) -> slice:
    """The rows of dim 0 that ``rank`` holds: FSDP2 and DTensor's ``Shard(0)`` cut like ``torch.chunk``."""
    size = -(-n // world)
    start = min(rank * size, n)
    return slice(start, min(start + size, n))


def _send_sharded(src: torch.Tensor | None, target, d: Dist) -> None:
    """Rank 0 sends each rank its rows of ``src``, received straight into that rank's shard of
    ``target`` (a DTensor): no rank ever allocates a full tensor or a second copy of its shard."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor

    local = target.to_local()
    if tuple(target.placements) != (Shard(0),) or target.device_mesh.ndim != 1:  # not FSDP2's layout
        if src.is_meta:  # distribute_tensor wants a real source of the full shape (left untouched)
            src = torch.empty(src.shape, dtype=src.dtype, device=d.device)
        local.copy_(distribute_tensor(src, target.device_mesh, target.placements, src_data_rank=0).to_local())
        return
    n = target.shape[0]
    if local.shape[0] != _rows(n, d.world_size, d.rank).stop - _rows(n, d.world_size, d.rank).start:
        raise RuntimeError(f"rank {d.rank}: unexpected shard shape {tuple(local.shape)} of {tuple(target.shape)}")
    if d.is_main:
        for r in range(1, d.world_size):
            rows = src[_rows(n, d.world_size, r)]
            if rows.numel():
                dist.send(rows.to(d.device).contiguous(), dst=r)
        local.copy_(src[_rows(n, d.world_size, 0)])
    elif local.numel():
        into = local if local.is_contiguous() else torch.empty_like(local)
        dist.recv(into, src=0)
        if into is not local:
            local.copy_(into)


def load_from_rank0(model: torch.nn.Module, full: dict[str, torch.Tensor], d: Dist) -> None:
    """Fill a sharded skeleton (`shard_model` of `build_skeleton`) with rank 0's full state dict
    ``full`` (empty on the other ranks), one tensor at a time.

    Each sharded tensor goes from rank 0 to each rank as that rank's rows only, received in place
    (`_send_sharded`); the few unsharded ones (persistent buffers) are broadcast. So a rank's
    peak is its shards. ``set_model_state_dict(..., broadcast_from_rank0=True)`` broadcasts every
    full tensor to every rank instead, and DTensor's scatter receives into a temporary: at 2 ranks
    of a small model, the embedding matrix that adds is 0.1 to 0.2 of the model
    (benchmarks/load_memory.py)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    # to_empty allocates this rank's shards (torchtitan's practice), but also re-allocates every
    # buffer: keep the buffers' computed values (the persistent ones are then loaded anyway).
    buffers = {n: b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)}
    model.to_empty(device=d.device)
    with torch.no_grad():
        for n, b in model.named_buffers(remove_duplicate=False):
            b.copy_(buffers[n])
    del buffers
    sent = [[(k, tuple(v.shape), v.dtype) for k, v in full.items()] if d.is_main else None]
    dist.broadcast_object_list(sent, src=0)
    local = model.state_dict()  # views of this rank's shards and buffers: copies land in the model
    mine = {k: (tuple(v.shape), v.dtype) for k, v in local.items()}
    theirs = {k: (shape, dtype) for k, shape, dtype in sent[0]}
    if mine != theirs:
        diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
        raise RuntimeError(f"rank {d.rank}'s model differs from rank 0's: {diff[:5]}")
    first = _aliases(model)
    with torch.no_grad():
        for key, shape, dtype in sent[0]:
            if first.get(key, key) != key:
                continue  # a tied weight: loaded under its first name
            target = local[key]
            if isinstance(target, DTensor):
                # off rank 0 the source is only a shape (not even allocated when sends suffice)
                src = full[key] if d.is_main else torch.empty(shape, dtype=dtype, device="meta")
                _send_sharded(src, target, d)
            else:
                buf = full[key].to(d.device) if d.is_main else torch.empty(shape, dtype=dtype, device=d.device)
                dist.broadcast(buf, src=0)
                target.copy_(buf)


def check_loaded(model: torch.nn.Module, aliases: dict[str, str], name: str) -> None:
    """After loading: no tensor left without values (meta), tied parameters still one tensor."""
    meta = [n for n, p in model.named_parameters() if _is_meta(p)]
    meta += [n for n, b in model.named_buffers() if b.is_meta]
    meta += [n for n, (m, attr, is_buffer) in _unsaved(model).items() if _get(m, attr, is_buffer).is_meta]
    if meta:
        raise RuntimeError(f"{name}: {len(meta)} tensor(s) still have no values after loading: {meta[:5]}")
    now = _aliases(model)
    if now != aliases:
        broken = [k for k, v in aliases.items() if now.get(k) != v]
        raise RuntimeError(f"{name}: tied parameters came apart while loading: {broken[:5]}")


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
