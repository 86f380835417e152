"""The training loop, top to bottom: `run_training(recipe) -> <out>/final`.

    check inputs (cheap) -> tokenise + pack -> model (+LoRA, FSDP2) -> AdamW + cosine
    -> resume from the latest checkpoint -> for each step: micro-batches, loss per
    supervised token of the whole global batch, clip, step -> checkpoints -> export.

Run it as one process (``ja-instruct train RECIPE``) or under torchrun (the same
command after ``torchrun --nproc_per_node N -m ja_instruct.cli``): see docs/training.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ja_instruct.config import save_config
from ja_instruct.errors import UserError
from ja_instruct.io import JsonlAppender, read_jsonl_store, write_jsonl
from ja_instruct.train import checkpoint as ckpt
from ja_instruct.train.export import export_final, final_is_complete
from ja_instruct.train.model import (Dist, build_model, build_optimizer, compute_dtype, cosine_schedule,
                                     is_fsdp, setup_distributed, teardown_distributed)
from ja_instruct.train.packing import IGNORE_INDEX, StepSampler, build_rows, collate
from ja_instruct.train.prepare import Prepared, prepare

log = logging.getLogger(__name__)

# Test hook: SIGKILL this process right after optimiser step N (simulates a crash / preemption).
FAIL_AT_STEP_ENV = "JA_INSTRUCT_TRAIN_FAIL_AT_STEP"


def run_training(recipe, out_dir: str | Path | None = None) -> Path:
    """Train the recipe's ``train`` section; returns the exported HF model folder ``<out>/final``.

    Resumable: an existing complete ``final`` for the same config is returned at once; an
    existing checkpoint is resumed exactly. Every rank of a torchrun job calls this.
    """
    d = setup_distributed()
    try:
        return _run(recipe, Path(out_dir) if out_dir is not None else recipe.stage_dir("train"), d)
    finally:
        teardown_distributed(d)


def _run(recipe, out: Path, d: Dist) -> Path:
    # 1. Everything that can be wrong with the inputs is checked here, before any model is loaded.
    p: Prepared = prepare(recipe, out, d)
    cfg = p.cfg
    final = out / "final"
    if final_is_complete(final, p.config_hash):
        if d.is_main:
            log.info("train: %s is complete for this config; skipping", final)
        return final

    # 2. Rows (packed examples) and the deterministic order of the whole run.
    rows = build_rows(p.examples, cfg.max_length, cfg.packing)
    sampler = StepSampler(len(rows), cfg.global_batch_size, cfg.micro_batch_size, d.world_size, d.rank, p.seed)
    total_steps = cfg.epochs * sampler.steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    dtype = compute_dtype(cfg, d.device)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        n_tok = sum(len(e.input_ids) for e in p.examples)
        log.info("train: %d examples -> %d rows of <= %d tokens (%.1f%% padding); %d steps/epoch, %d steps",
                 len(p.examples), len(rows), cfg.max_length, 100 * (1 - n_tok / (len(rows) * cfg.max_length))
                 if cfg.packing else float("nan"), sampler.steps_per_epoch, total_steps)
        log.info("train: global batch %d rows = micro batch %d x grad accum %d x world size %d; %s on %s",
                 cfg.global_batch_size, cfg.micro_batch_size, p.grad_accum, d.world_size,
                 str(dtype).replace("torch.", ""), d.device)

    # 3. Model, optimiser, schedule. The seed fixes LoRA's initialisation (and dropout).
    torch.manual_seed(p.seed)
    model = build_model(cfg, p.model_path, d, dtype)
    optimizer = build_optimizer(model, cfg, d.device)
    scheduler = cosine_schedule(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    fsdp = is_fsdp(model)
    # One process trains in bf16 through autocast; under FSDP2 the MixedPrecisionPolicy casts.
    autocast = (torch.autocast(d.device.type, dtype=dtype) if dtype != torch.float32 and not fsdp
                else contextlib.nullcontext())
    torch.manual_seed(p.seed + d.rank)  # per-rank dropout streams

    # 4. Resume: model, optimiser, scheduler, RNG; the data position is the step number.
    ckpt_root = out / "checkpoints"
    step, seen = 0, {"tokens": 0, "supervised_tokens": 0}
    latest = ckpt.latest_checkpoint(ckpt_root)
    if latest is not None:
        state = ckpt.read_trainer_state(latest)
        if state.get("config_hash") != p.config_hash:
            raise UserError(f"the checkpoints in {ckpt_root} were made with a different train config",
                            hint="Use another --out, or delete that folder to start over.")
        state = ckpt.load_checkpoint(latest, model, optimizer, scheduler, d)
        step, seen = state["step"], state["seen"]
        if d.is_main:
            log.info("train: resumed from %s (step %d)", latest.name, step)
    metrics = _open_metrics(out / "metrics.jsonl", step) if d.is_main else None
    tb = _tensorboard(out / "tensorboard", cfg.tensorboard) if d.is_main else None

    # 5. The loop.
    fail_at = int(os.environ.get(FAIL_AT_STEP_ENV, "0") or 0)
    bar = _progress(d, total_steps, step)
    t_last, tok_last = time.perf_counter(), seen["tokens"]
    while step < total_steps:
        mbs = sampler.micro_batches(step)
        micro = [collate(p.examples, [rows[r] for r in mb], p.pad_id) for mb in mbs]
        # The loss is the mean over the supervised tokens of the WHOLE global batch (all
        # micro-batches of all ranks), so long answers weigh what they weigh whatever the
        # batching: count first, then every micro-batch adds sum(token losses) / count.
        counts = torch.tensor([sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro),
                               sum(len(p.examples[i].input_ids) for mb in mbs for r in mb for i in rows[r])],
                              dtype=torch.float64)
        d.all_reduce_sum(counts)
        n_sup, n_tok = counts[0].item(), counts[1].item()
        loss_sum = torch.zeros((), dtype=torch.float64)
        for k, batch in enumerate(micro):
            batch = {name: t.to(d.device) for name, t in batch.items()}
            if fsdp:  # reduce-scatter gradients once per step, on the last micro-batch
                model.set_requires_gradient_sync(k == len(micro) - 1)
            with autocast:
                # No attention mask: position ids that restart make the per-example block mask.
                logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                               use_cache=False).logits
            tok_loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum")
            # FSDP averages gradients over ranks; x world size turns that average into the sum.
            (tok_loss * (d.world_size / max(n_sup, 1.0))).backward()
            loss_sum += tok_loss.detach().double().cpu()
            del logits, tok_loss
        loss = d.all_reduce_sum(loss_sum).item() / max(n_sup, 1.0)
        grad_norm = _clip(model, cfg.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seen["tokens"] += int(n_tok)
        seen["supervised_tokens"] += int(n_sup)

        if d.is_main:
            now = time.perf_counter()
            tps = (seen["tokens"] - tok_last) / max(now - t_last, 1e-9)
            t_last, tok_last = now, seen["tokens"]
            rec = {"step": step, "epoch": round(sampler.epoch_of(step), 4), "loss": loss, "lr": lr,
                   "tokens": seen["tokens"], "supervised_tokens": seen["supervised_tokens"],
                   "tokens_per_s": round(tps, 1), "grad_norm": grad_norm}
            if step % cfg.log_every == 0 or step == total_steps:
                metrics.append(rec)
                if tb is not None:
                    for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
                        tb.add_scalar(f"train/{key}", rec[key], step)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
            bar.update(1)

        if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps:
            ckpt.save_checkpoint(ckpt_root, step, model, optimizer, scheduler,
                                 {"step": step, "seen": seen, "config_hash": p.config_hash}, d, cfg.keep_last)
        if fail_at and step == fail_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if metrics is not None:
        metrics.close()
    if tb is not None:
        tb.close()

    # 6. Export the final HF folder (all ranks gather; rank 0 writes).
    card = {"name": recipe.name, "stats": p.dataset_stats, "steps": total_steps, "grad_accum": p.grad_accum,
            "world_size": d.world_size, "dtype": str(dtype).replace("torch.", ""), "seed": p.seed,
            "examples": len(p.examples), "supervised_tokens": p.token_stats.get("supervised_tokens")}
    return export_final(model, cfg, p.model_path, p.tokenizer, cfg.template, out, d, card, p.config_hash)


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm (FSDP2: a DTensor norm over all shards); returns the norm."""
    params = [q for q in model.parameters() if q.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _open_metrics(path: Path, step: int) -> JsonlAppender:
    """The metrics store; on resume, lines after the checkpoint's step (lost work) are dropped."""
    if path.exists():
        kept = [r for r in read_jsonl_store(path) if r.get("step", 0) <= step]
        write_jsonl(path, kept)
    return JsonlAppender(path)


def _tensorboard(path: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(str(path))


def _progress(d: Dist, total: int, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not d.is_main)
