"""Export the trained model as a plain Hugging Face directory (``<out>/final``).

What a user needs to run the model with nothing but transformers:

* ``model.safetensors`` + ``config.json`` (or, for ``lora.export: adapter``, the peft
  adapter files; loading them needs the base model);
* the tokenizer, with the recipe's prompt format installed as its chat template, so
  ``tokenizer.apply_chat_template`` renders exactly the training prompt;
* ``generation_config.json`` with the PLaMo card's sampling defaults;
* ``README.md``, a model card that states what happened: the base model's hub id and
  licence (front matter ``base_model`` and ``license``), training sources and their
  licences, the training data checks (benchmark contamination, near-duplicate removal, quality
  filtering: `ja_instruct.data.card`), the examples kept whole / truncated / dropped at tokenisation (and why), the
  optimiser steps, epochs (a fraction when ``max_steps`` stopped the run) and tokens
  actually trained, and the hyper-parameters;
* ``.complete``: a marker written last, holding the fingerprint of the train manifest
  that describes this folder (`ja_instruct.train.identity.final_is_complete`).

The folder is written beside ``final`` and swapped in by renames, so ``final`` is never
half-written; the stage removes its manifest before training and writes it after the swap,
so an old ``final`` left by a killed retrain never passes for the current one.

The full (unsharded) state dict is gathered with ``get_model_state_dict(full_state_dict=True,
cpu_offload=True)``: every rank takes part, one tensor at a time, and only rank 0 keeps them
(CPU tensors) and writes. With LoRA only the adapters are gathered (``ignore_frozen_params``):
the frozen base weights are read again from the base model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ja_instruct.io import read_json, write_json, write_text
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import Dist
from ja_instruct.train.identity import COMPLETE, FINAL

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def save_dtype(cfg: TrainConfig, base_config) -> torch.dtype:
    if cfg.save_dtype != "auto":
        return _DTYPES[cfg.save_dtype]
    dt = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else torch.float32


def export_final(model: torch.nn.Module, cfg: TrainConfig, model_path: str, tokenizer, template_name: str,
                 out_dir: Path, d: Dist, card: dict, fingerprint: str) -> Path:
    """Write ``out_dir/final`` (every rank calls this; rank 0 writes), marked complete for the
    train manifest ``fingerprint``. Returns the folder."""
    # Collective: every rank takes part, one tensor at a time; with cpu_offload only rank 0 keeps
    # the gathered tensors (on its CPU). With LoRA only the adapters are gathered: rank 0 reads
    # the frozen base weights from the base model again.
    full_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                   ignore_frozen_params=cfg.lora.enabled))
    final = out_dir / FINAL
    if d.is_main:
        tmp = out_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if cfg.lora.enabled:
            _write_lora(full_sd, cfg, model_path, tmp)
        else:
            _write_full(full_sd, cfg, model_path, tmp)
        del full_sd
        _write_tokenizer(tokenizer, template_name, tmp)
        _write_generation_config(cfg, tokenizer, model_path, tmp)
        write_text(tmp / "README.md", model_card(cfg, card))
        write_json(tmp / COMPLETE, {"fingerprint": fingerprint})  # last: marks the folder complete
        _swap_in(tmp, final)
    d.barrier()
    return final


def _swap_in(new: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``new`` with renames (a folder cannot be renamed over a
    non-empty one): the old one moves aside first and is deleted last."""
    old = final.parent / ".final.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _write_full(sd: dict, cfg: TrainConfig, model_path: str, out: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from ja_instruct.train.model import config_overrides

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code,
                                        **config_overrides(cfg))
    dtype = save_dtype(cfg, config)
    # Build the skeleton on the meta device (no memory, no random init) and adopt the gathered
    # tensors with assign=True: rank 0 never holds two copies of a 13B model.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    for k in list(sd):  # cast in place, one tensor at a time: never a second copy of the model
        sd[k] = sd[k].to(dtype)
    model.load_state_dict(sd, assign=True, strict=False)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"export: weights missing from the trained state dict: {missing[:5]}")
    model.config.use_cache = True  # inference default again
    model.config.dtype = dtype
    model.save_pretrained(out)


def _write_lora(sd: dict, cfg: TrainConfig, model_path: str, out: Path) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from ja_instruct.train.model import apply_lora, config_overrides

    base = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code,
                                                **config_overrides(cfg))
    dtype = save_dtype(cfg, base.config)
    peft_model = apply_lora(base, cfg)
    # The gathered dict has the peft model's full names; keep the adapter weights only.
    adapter = get_peft_model_state_dict(peft_model, state_dict=sd)
    set_peft_model_state_dict(peft_model, adapter)
    if cfg.lora.export == "adapter":
        peft_model.save_pretrained(out)
        return
    merged = peft_model.merge_and_unload()
    merged.to(dtype)
    merged.config.use_cache = True
    merged.config.dtype = dtype
    merged.save_pretrained(out)


def _write_tokenizer(tokenizer, template_name: str, out: Path) -> None:
    from ja_instruct.data.templates import install_chat_template

    install_chat_template(tokenizer, template_name)
    tokenizer.save_pretrained(out)


def _write_generation_config(cfg: TrainConfig, tokenizer, model_path: str, out: Path) -> None:
    from transformers import GenerationConfig

    g = cfg.generation
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    gc = GenerationConfig(do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                          repetition_penalty=g.repetition_penalty, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=eos, pad_token_id=pad)
    gc.save_pretrained(out)


def read_dataset_stats(dataset_dir: Path) -> dict:
    """The data stage's stats.json, or {} when the dataset dir has none."""
    p = dataset_dir / "stats.json"
    return read_json(p) if p.is_file() else {}


def _sources_table(stats: dict) -> list[str]:
    """Rows ``| source | licence | examples |`` from stats.json, read tolerantly."""
    sources = stats.get("sources") or stats.get("per_source") or {}
    if isinstance(sources, list):
        sources = {s.get("name", f"source{i}"): s for i, s in enumerate(sources)}
    licences = stats.get("licenses") or stats.get("licences") or {}
    rows = []
    for name, s in sources.items():
        s = s if isinstance(s, dict) else {"kept": s}
        lic = s.get("license") or s.get("licence") or (licences.get(name) if isinstance(licences, dict) else None)
        n = s.get("sampled", s.get("kept", s.get("count", "")))
        rows.append(f"| {name} (`{s.get('path', '')}`) | {lic or 'unknown'} | {n} |")
    return rows


def _data_checks(stats: dict) -> list[str]:
    """"## Training data checks": the benchmark contamination result, near-duplicate removal and
    judge-scored filtering, in the words of the dataset card (`ja_instruct.data.card`)."""
    from ja_instruct.data.card import describe_contamination, describe_filters

    lines = describe_contamination(stats) + describe_filters(stats)
    return ["## Training data checks", "", *[f"- {s}" for s in lines], ""]


def _heldout_note(stats: dict) -> list[str]:
    held = stats.get("heldout") if isinstance(stats.get("heldout"), dict) else {}
    n = held.get("total") or 0
    return ["", f"{n} further examples were held out of training for evaluation (`data.heldout`)."] if n else []


# Where each embedded model comes from: (hub id, licence). The licence is also the GGUF's own
# ``general.license`` (apache-2.0 for SmolLM2). Belongs beside `ja_instruct.models.EMBEDDED_MODELS`.
EMBEDDED_ORIGINS = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


def base_model_origin(model: str, model_path: str | None = None) -> tuple[str | None, str | None]:
    """``(hub id, licence)`` of a recipe's base model, each None when unknown (nothing is downloaded).

    An embedded model maps to its origin (`EMBEDDED_ORIGINS`); a hub id is its own hub id, with
    the licence of its model card when the local HF cache has it; a local folder has a hub id
    only when it is a hub cache snapshot (``models--org--name/snapshots/<sha>``), and the
    licence of its own README.md front matter (an export of ours has one)."""
    if model.startswith("embedded:"):
        return EMBEDDED_ORIGINS.get(model[len("embedded:"):], (None, None))
    local = Path(model_path or model).expanduser()
    if local.is_dir():
        parts = local.resolve().parts
        hub = next((p[len("models--"):].replace("--", "/", 1) for p in parts if p.startswith("models--")), None)
        return hub, _card_license(local / "README.md")
    try:
        from huggingface_hub import try_to_load_from_cache

        readme = try_to_load_from_cache(model, "README.md")
    except Exception:  # not a valid repo id: nothing to read
        readme = None
    return model, _card_license(Path(readme)) if isinstance(readme, str) else None


def _card_license(readme: Path) -> str | None:
    """The ``license`` of a model card's YAML front matter, if it has one."""
    from huggingface_hub import metadata_load

    try:
        lic = (metadata_load(readme) or {}).get("license") if readme.is_file() else None
    except Exception:  # a card with broken front matter: the licence is unknown
        return None
    return str(lic) if lic else None


def front_matter(cfg: TrainConfig, hub_id: str | None, licence: str | None) -> str:
    """The card's YAML metadata (huggingface_hub's `ModelCardData`): ``base_model`` only when it
    is a real hub id, and ``license`` always (``other`` + ``license_name: unknown`` when unknown)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="transformers", base_model=hub_id, license=licence or "other",
                         license_name=None if licence else "unknown", language=["ja"],
                         tags=["ja-instruct", cfg.method] + (["lora"] if cfg.lora.enabled else []))
    return f"---\n{data.to_yaml()}\n---"


def training_length(cfg: TrainConfig, trained: dict[str, Any] | None) -> list[str]:
    """"## Training length": the optimiser steps actually taken, the epochs they make (a
    fraction when ``max_steps`` stopped the run), examples per step and the tokens trained.

    ``trained`` holds ``steps``, ``steps_per_epoch``, ``rows`` (training rows of an epoch),
    ``examples`` (examples in them) and the ``tokens`` and ``supervised_tokens`` the loop
    counted; the section says what is missing rather than guess it."""
    lines = ["## Training length", ""]
    t = trained or {}
    steps, per_epoch = t.get("steps"), t.get("steps_per_epoch")
    if not steps or not per_epoch:
        return lines + [f"Configured: {cfg.epochs} epoch(s)"
                        + (f", at most {cfg.max_steps} steps" if cfg.max_steps else "")
                        + f"; steps taken: {steps if steps else 'not recorded'}.", ""]
    full = cfg.epochs * per_epoch
    stop = (f" (`max_steps: {cfg.max_steps}` stopped the run; the configured {cfg.epochs} epoch(s) are {full} "
            "steps)") if steps < full else ""
    rows, examples = t.get("rows"), t.get("examples")
    lines += ["| | |", "|---|---|", f"| optimiser steps | {steps}{stop} |",
              f"| epochs trained | {steps / per_epoch:.3f} ({steps} steps of {per_epoch} per epoch) |"]
    ps = t.get("per_step")
    if ps and examples:  # what the run's own steps held (min - max, mean), in any batch unit
        rng = lambda u: f"{ps[u]['min']:,}-{ps[u]['max']:,} (mean {ps[u]['mean']:,.1f}) {u}"  # noqa: E731
        lines += [f"| per step | {ps['global_batch_size']} {ps['unit']}{' (packed)' if cfg.packing else ''}: "
                  f"{rng('rows')}, {rng('examples')}, {rng('tokens')} |",
                  f"| examples seen | {steps * ps['examples']['mean']:,.0f} (repeats counted; the training set "
                  f"holds {examples:,}) |"]
    elif rows and examples:
        per_step = cfg.global_batch_size * examples / rows
        lines += [f"| per step | {cfg.global_batch_size} rows{' (packed)' if cfg.packing else ''} = "
                  f"{per_step:,.1f} examples on average |",
                  f"| examples seen | {steps * per_step:,.0f} (repeats counted; the training set holds {examples:,}) |"]
    if t.get("tokens") is not None:
        lines.append(f"| tokens trained | {t['tokens']:,} ({t.get('supervised_tokens', 0):,} supervised) |")
    return lines + [""]


def _examples_section(cfg: TrainConfig, counts: dict | None) -> list[str]:
    """"## Training examples": what tokenisation kept whole, truncated and dropped, and why.
    ``counts`` is `ja_instruct.data.tokenize.example_counts` (absent: the section says so)."""
    if cfg.overlong == "drop":
        policy = (f"Over-long examples (more than {cfg.max_length} tokens) were dropped (`overlong: drop`): a cut "
                  "answer has no EOS, so training on it would teach the model not to stop.")
    else:
        policy = (f"Over-long examples were truncated to {cfg.max_length} tokens (`overlong: truncate`): their cut "
                  "answer has no EOS, which teaches the model not to stop.")
    lines = ["## Training examples", ""]
    if not counts:
        return lines + [policy, ""]
    lines += ["| examples | count |", "|---|---|",
              f"| in the dataset | {counts.get('total', '')} |",
              f"| trained on whole | {counts.get('kept_whole', '')} |",
              f"| trained on truncated to {cfg.max_length} tokens | {counts.get('truncated', 0)} |"]
    lines += [f"| dropped: {why} | {n} |" for why, n in (counts.get("dropped") or {}).items()]
    return lines + ["", policy, ""]


def model_card(cfg: TrainConfig, card: dict) -> str:
    """README.md of the exported model: what it is, what it was trained on, how."""
    stats = card.get("stats", {})
    hub_id, licence = base_model_origin(cfg.model, card.get("model_path"))
    base = f"`{hub_id}`" + (f" (recipe: `{cfg.model}`)" if hub_id != cfg.model else "") if hub_id else f"`{cfg.model}`"
    if cfg.method == "dpo":
        from ja_instruct.train.dpo_card import dpo_sections

        head = [front_matter(cfg, hub_id, licence), "", f"# {card.get('name', 'ja-instruct model')}", "",
                f"DPO preference tune of {base}, licence {licence or 'unknown (check the starting model)'}, made with "
                f"ja-instruct ({'LoRA, exported ' + cfg.lora.export if cfg.lora.enabled else 'full fine-tuning'}).",
                f"Prompt format: `{cfg.template}` (installed as the tokenizer's chat template).", "",
                *dpo_sections(cfg, card)]
    lines = head + [
        *training_length(cfg, {"steps": card.get("steps"), **(card.get("trained") or {})}),
        "## Hyper-parameters", "", "| key | value |", "|---|---|",
    ] if cfg.method == "dpo" else [
        front_matter(cfg, hub_id, licence),
        "",
        f"# {card.get('name', 'ja-instruct model')}",
        "",
        f"Supervised fine-tune of {base}, licence {licence or 'unknown (check the base model)'}, made with ja-instruct "
        f"({'LoRA, exported ' + cfg.lora.export if cfg.lora.enabled else 'full fine-tuning'}; "
        f"{'PyTorch FSDP2 over ' + str(card.get('world_size')) + ' ranks' if (card.get('world_size') or 1) > 1 else 'one process'}).",
        f"Prompt format: `{cfg.template}` (installed as the tokenizer's chat template).",
        "",
        "## Training data",
        "",
        "| source | licence | examples |",
        "|---|---|---|",
        *(_sources_table(stats) or ["| (dataset without stats.json) | unknown | |"]),
        "",
        f"Commercial use of the training data allowed: {stats.get('commercial_use_ok', 'unknown')} "
        f"(licence policy: {stats.get('licence_policy', 'unknown')}). The weights inherit the base model's "
        f"licence ({licence or 'unknown'}) and the most restrictive data licence above.",
        *_heldout_note(stats),
        "",
        *_data_checks(stats),
        *_examples_section(cfg, card.get("tokenise")),
        *training_length(cfg, {"steps": card.get("steps"), **(card.get("trained") or {})}),
        "## Hyper-parameters",
        "",
        "| key | value |",
        "|---|---|",
    ]
    hp = {
        "epochs (configured)": cfg.epochs, "max steps": cfg.max_steps, f"global batch ({cfg.batch_unit})": cfg.global_batch_size,
        "micro batch": cfg.micro_batch_size, "gradient accumulation": card.get("grad_accum") or "varies per step",
        "world size": card.get("world_size"), "max length": cfg.max_length, "packing": cfg.packing,
        "learning rate": cfg.lr, "warm-up ratio": cfg.warmup_ratio, "schedule": "linear warm-up, cosine decay",
        "weight decay": cfg.weight_decay, "betas": list(cfg.betas), "grad clip": cfg.grad_clip,
        "precision": card.get("dtype"), "seed": card.get("seed"), "examples": card.get("examples"),
        "supervised tokens per epoch": card.get("supervised_tokens"),
    }
    if cfg.method == "dpo":
        hp = {k: v for k, v in hp.items() if k not in ("examples", "supervised tokens per epoch")}
        hp.update({"pairs": card.get("examples"), "dpo beta": cfg.dpo.beta, "dpo loss": cfg.dpo.loss,
                   "label smoothing": cfg.dpo.label_smoothing, "sft weight": cfg.dpo.sft_weight})
    if cfg.lora.enabled:
        hp.update({"lora r": cfg.lora.r, "lora alpha": cfg.lora.alpha, "lora dropout": cfg.lora.dropout,
                   "lora targets": cfg.lora.target_modules})
    lines += [f"| {k} | {v} |" for k, v in hp.items()]
    g = cfg.generation
    lines += ["", "## Generation defaults", "",
              f"do_sample={g.do_sample}, temperature={g.temperature}, top_p={g.top_p}, top_k={g.top_k} "
              "(generation_config.json).", ""]
    return "\n".join(lines)
