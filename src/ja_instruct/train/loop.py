"""The training loop: `fit(prepared, ...)` trains one run to its last step.

    rows (packed examples) + the deterministic order -> model (+LoRA, FSDP2) -> packing
    isolation checked on that model -> AdamW + cosine -> resume from the run's latest
    checkpoint -> for each step: this rank's micro-batches of the step's global batch (in
    rows, examples or tokens; example boundaries passed to attention), loss per supervised
    token of the whole global batch, clip, step -> checkpoints.

Which run, whether it is up to date, the export and the manifest are the stage's business
(`ja_instruct.train.stage`). Run it as one process (``ja-instruct train RECIPE``) or under
torchrun (the same command after ``torchrun --nproc_per_node N -m ja_instruct.cli``): see
docs/training.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ja_instruct.io import JsonlAppender, read_jsonl_store, write_jsonl
from ja_instruct.train import checkpoint as ckpt
from ja_instruct.train.distributed import Dist
from ja_instruct.train.isolation import AttentionLayout, attention_layout, check_isolation
from ja_instruct.train.model import build_model, compute_dtype, is_fsdp
from ja_instruct.train.optim import build_optimizer, cosine_schedule
from ja_instruct.train.packing import IGNORE_INDEX, Example, build_rows, count_steps, make_sampler, pack_best_fit
from ja_instruct.train.prepare import Prepared

log = logging.getLogger(__name__)


@dataclass
class Fitted:
    """A trained run: the (possibly sharded) model and the facts the model card reports."""

    model: torch.nn.Module
    total_steps: int
    dtype: torch.dtype
    start_step: int
    steps_per_epoch: int = 0
    rows: int = 0
    seen: dict | None = None  # tokens and supervised tokens actually trained (over all ranks)
    per_step: dict | None = None  # `plan.per_step_facts` of the run's steps (rank 0 only)
    dpo: dict | None = None  # DPO: settings, pairs, reference cache, held-out evaluations (rank 0 only)


def fit(p: Prepared, out: Path, run_dir: Path, run: str, d: Dist, *,
        on_step: Callable[[int], None] | None = None) -> Fitted:
    """Train run ``run`` (checkpoints in ``run_dir``) to its last step, resuming its latest
    checkpoint exactly; metrics go to ``<out>/metrics.jsonl`` and ``<out>/tensorboard/<run>``.

    ``on_step(step)`` is called on every rank after each optimiser step (and its checkpoint):
    a place for progress hooks, and for tests that kill the process at a given step.
    """
    cfg = p.cfg
    dpo = p.pairs is not None  # DPO: the sampler orders pairs; `dpo.expand_rows` makes their rows
    # 1. Rows (packed examples, or pairs) and the deterministic order of the whole run.
    rows = p.rows or build_rows(p.examples, cfg.max_length, cfg.packing)
    lengths = p.unit_lengths
    sampler = make_sampler(rows, lengths, cfg.batch_unit, cfg.global_batch_size, cfg.micro_batch_size,
                           d.world_size, d.rank, p.seed, max_length=cfg.max_length, packing=p.packs_units)
    total_steps = cfg.epochs * sampler.steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    dtype = compute_dtype(cfg, d.device)
    per_step, epoch_rows = None, len(rows)
    if d.is_main:
        from ja_instruct.train.plan import micro_batch_summary, per_step_facts, step_summary

        # Exact: the counts of the very steps this run takes (the order is a pure function).
        planned = count_steps(sampler, range(total_steps))
        if cfg.batch_unit == "rows":
            n_tok = sum(lengths)
            log.info("train: %d %s -> %d rows of <= %d tokens (%.1f%% padding); %d steps/epoch, %d steps",
                     len(lengths), "pairs" if dpo else "examples", len(rows), cfg.max_length, 100 * (1 - n_tok / (len(rows) * cfg.max_length))
                     if cfg.packing else float("nan"), sampler.steps_per_epoch, total_steps)
        else:  # packed per step: the rows of an epoch are those of its steps
            per_epoch = sampler.steps_per_epoch
            first = planned if total_steps >= per_epoch else count_steps(sampler, range(per_epoch))
            epoch_rows = sum(first.rows[:per_epoch])
            how = (f"each packed on its own into rows of <= {cfg.max_length} tokens" if cfg.packing
                   else "one example per row")
            log.info("train: %d %s; %d steps/epoch of about %d %s, %s (%d rows in epoch 1); %d steps",
                     len(lengths), "pairs" if dpo else "examples", per_epoch, cfg.global_batch_size,
                     "pairs" if dpo and cfg.batch_unit == "examples" else cfg.batch_unit, how, epoch_rows, total_steps)
        per_step = per_step_facts(cfg, planned)
        summary = step_summary(cfg.batch_unit, cfg.global_batch_size, planned)
        log.info("train: per step %s", summary.replace("examples", "pairs") if dpo else summary)
        log.info("train: global batch = %s; %s on %s",
                 micro_batch_summary(cfg, planned, p.grad_accum, d.world_size, "rank(s)"),
                 str(dtype).replace("torch.", ""), d.device)

    # 2. Model, optimiser, schedule. The seed fixes LoRA's initialisation (and dropout).
    torch.manual_seed(p.seed)
    model = build_model(cfg, p.model_path, d, dtype)
    fsdp = is_fsdp(model)
    # One process trains in bf16 through autocast; under FSDP2 the MixedPrecisionPolicy casts.
    autocast = (torch.autocast(d.device.type, dtype=dtype) if dtype != torch.float32 and not fsdp
                else contextlib.nullcontext())
    # How example boundaries reach attention; with packing, proven on this very model before
    # step 1 (seconds; every rank, same inputs: FSDP forwards are collective).
    layout = attention_layout(model, cfg.packing, dtype, cfg.model)
    if cfg.packing:
        check_isolation(model, layout, p.examples, name=cfg.model, pad_id=p.pad_id, autocast=autocast,
                        device=d.device, distributed=d.enabled)
    if dpo and p.pairs.shared is not None:  # DPO's shared prompts: proven on this model too
        from ja_instruct.train.dpo import check_shared_prompt

        check_shared_prompt(model, layout, p.pairs.examples, p.pairs.shared, name=cfg.model, pad_id=p.pad_id,
                            autocast=autocast, d=d)
    # DPO: the reference log-probabilities, from the model as loaded (before any checkpoint is
    # resumed into it): cached beside the pairs, computed once.
    ref = reference(p, model, layout, d, autocast, out) if dpo else None
    optimizer = build_optimizer(model, cfg, d.device)
    scheduler = cosine_schedule(optimizer, total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    torch.manual_seed(p.seed + d.rank)  # per-rank dropout streams

    # 3. Resume: model, optimiser, scheduler, RNG; the data position is the step number.
    step, seen = 0, {"tokens": 0, "supervised_tokens": 0}
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        state = ckpt.load_checkpoint(latest, model, optimizer, scheduler, d)
        step, seen = state["step"], state["seen"]
        if d.is_main:
            log.info("train: resumed from %s (step %d of %d)", latest.name, step, total_steps)
    start_step = step
    metrics = _open_metrics(out / "metrics.jsonl", run_dir, run, step) if d.is_main else None
    tb = _tensorboard(out / "tensorboard" / run, cfg.tensorboard) if d.is_main and step < total_steps else None

    # 4. The loop.
    bar = _progress(d, total_steps, step)
    t_last, tok_last = time.perf_counter(), seen["tokens"]
    # A micro-batch that got no row (a step of fewer unsplittable rows than ranks x micro-batches)
    # runs as one padding token without a label: under FSDP every forward/backward is a
    # collective, so every rank must run as many; it adds nothing to the loss or the gradients.
    empty = [Example([p.pad_id], [IGNORE_INDEX])]
    evaluate = _heldout_eval(p, model, layout, d, autocast, ref) if dpo else None
    if evaluate is not None and step == 0:
        _log_eval(evaluate(), 0, run, metrics, tb, d)
    while step < total_steps:
        mbs = sampler.micro_batch_rows(step)  # lists of rows of example (DPO: pair) indices
        extra = {}
        if dpo:
            from ja_instruct.train.dpo import dpo_step, expand_rows, pair_batch

            ex_rows = [expand_rows(mb, cfg.packing) for mb in mbs]
            micro = [(pair_batch(p.examples, r, layout, p.pad_id, p.pairs.shared), r) if r
                     else (layout.collate(empty, [[0]], p.pad_id), []) for r in ex_rows]
            extra = dpo_step(model, optimizer, micro, p.examples, ref[0], layout, d, cfg.dpo, autocast=autocast,
                             grad_clip=cfg.grad_clip)
            loss, grad_norm, n_tok = extra.pop("loss"), extra.pop("grad_norm"), extra.pop("tokens")
            n_sup = sum(sum(t != IGNORE_INDEX for t in p.examples[i].labels) for mb in ex_rows for r in mb for i in r)
            n_sup = d.all_reduce_sum(torch.tensor([float(n_sup)], dtype=torch.float64)).item()
        else:
            micro = [layout.collate(p.examples, mb, p.pad_id) if mb else layout.collate(empty, [[0]], p.pad_id)
                     for mb in mbs]
            tokens = sum(lengths[i] for mb in mbs for row in mb for i in row)
            loss, grad_norm, n_sup, n_tok = train_step(model, optimizer, micro, tokens, layout, d,
                                                       autocast=autocast, grad_clip=cfg.grad_clip)
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        scheduler.step()
        step += 1
        seen["tokens"] += int(n_tok)
        seen["supervised_tokens"] += int(n_sup)

        if d.is_main:
            now = time.perf_counter()
            tps = (seen["tokens"] - tok_last) / max(now - t_last, 1e-9)
            t_last, tok_last = now, seen["tokens"]
            rec = {"step": step, "epoch": round(sampler.epoch_of(step), 4), "loss": loss, "lr": lr,
                   "tokens": seen["tokens"], "supervised_tokens": seen["supervised_tokens"],
                   "tokens_per_s": round(tps, 1), "grad_norm": grad_norm, **extra, "run": run}
            if step % cfg.log_every == 0 or step == total_steps:
                metrics.append(rec)
                if tb is not None:
                    for key in ("loss", "lr", "tokens_per_s", "grad_norm", *extra):
                        tb.add_scalar(f"train/{key}", rec[key], step)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}",
                            **({"acc": f"{extra['rewards/accuracies']:.2f}"} if dpo else {}))
            bar.update(1)
        if evaluate is not None and (step == total_steps or (cfg.dpo.eval_every and step % cfg.dpo.eval_every == 0)):
            _log_eval(evaluate(), step, run, metrics, tb, d)

        if (cfg.save_every and step % cfg.save_every == 0) or step == total_steps:
            ckpt.save_checkpoint(run_dir, step, model, optimizer, scheduler,
                                 {"step": step, "seen": seen, "run": run}, d, cfg.keep_last)
        if on_step is not None:
            on_step(step)
    bar.close()
    if metrics is not None:
        metrics.close()
    if tb is not None:
        tb.close()
    extra = _dpo_facts(p, out / "metrics.jsonl", run, ref) if dpo and d.is_main else None
    return Fitted(model=model, total_steps=total_steps, dtype=dtype, start_step=start_step,
                  steps_per_epoch=sampler.steps_per_epoch, rows=epoch_rows, seen=dict(seen), per_step=per_step,
                  dpo=extra)


def reference(p: Prepared, model, layout: AttentionLayout, d: Dist, autocast, out: Path):
    """(train, held-out) reference log-probabilities of every example of the pairs: read from
    the cache beside the pairs when it holds this key, else computed now (every rank) and
    cached by rank 0. With LoRA the adapters are off while computing them."""
    from ja_instruct.train.dpo import all_logps, expand_rows, reference_context
    from ja_instruct.train.dpo_data import ReferenceCache, scored_hash
    from ja_instruct.train.identity import base_model_fingerprint

    cfg = p.cfg
    # The key: what is scored (every token and label of every pair, as this run tokenised and
    # kept them, and the shared prompt lengths), by which model, computed how.
    inputs = {"model": base_model_fingerprint(cfg.model, p.model_path), "scored": scored_hash(p.pairs),
              "template": cfg.template, "max_length": cfg.max_length, "packing": cfg.packing,
              "dtype": str(compute_dtype(cfg, d.device)), "attention": layout.kind,
              "attn_implementation": layout.attn_implementation, "shared_prompt": p.pairs.shared is not None,
              "max_position_embeddings": cfg.max_position_embeddings, "trust_remote_code": cfg.trust_remote_code}
    cache = ReferenceCache(p.pairs, inputs, out)
    got = cache.load()
    if got is not None:
        if d.is_main:
            log.info("dpo: reference log-probabilities read from %s", cache.where)
        p.pairs.meta["reference"] = {"cache": str(cache.where), "reused": True}
        return got
    units = pack_best_fit(p.unit_lengths, cfg.max_length) if p.packs_units else [[i] for i in range(len(p.unit_lengths))]
    with reference_context(model):
        train, _ = all_logps(model, p.examples, expand_rows(units, cfg.packing), layout, d, p.pad_id,
                             cfg.micro_batch_size, autocast=autocast, desc="reference log-probs",
                             shared=p.pairs.shared)
        held = (all_logps(model, p.pairs.heldout, p.pairs.heldout_rows(cfg.max_length, cfg.packing, p.packs_units), layout, d,
                          p.pad_id, cfg.micro_batch_size, autocast=autocast, shared=p.pairs.heldout_shared)[0]
                if p.pairs.heldout else torch.zeros(0, dtype=torch.float64))
    if d.is_main:
        where = cache.save(train, held)
        log.info("dpo: reference log-probabilities of %d pairs (+%d held out) computed and cached in %s",
                 len(p.pairs.ids), len(p.pairs.heldout_ids), where)
        p.pairs.meta["reference"] = {"cache": str(where), "reused": False}
    d.barrier()
    return train, held


def _heldout_eval(p: Prepared, model, layout: AttentionLayout, d: Dist, autocast, ref):
    """A function measuring the held-out pairs now (None when there are none)."""
    from ja_instruct.train.dpo import evaluate_pairs

    if not p.pairs.heldout_ids:
        return None
    rows = p.pairs.heldout_rows(p.cfg.max_length, p.cfg.packing, p.packs_units)
    return lambda: evaluate_pairs(model, p.pairs.heldout, rows, ref[1], layout, d, p.pad_id,
                                  p.cfg.micro_batch_size, p.cfg.dpo, autocast=autocast, shared=p.pairs.heldout_shared)


def _log_eval(result: dict, step: int, run: str, metrics, tb, d: Dist) -> None:
    if not d.is_main:
        return
    if step == 0 and any(r.get("eval") and r.get("step") == 0 and r.get("run") == run
                         for r in read_jsonl_store(metrics.path)):
        return  # a restart before the first checkpoint: step 0 was measured (and kept) already
    log.info("dpo: step %d: held-out preference accuracy %.3f, reward margin %.4f, loss %.4f (%d pairs)",
             step, result["accuracy"], result["margin"], result["loss"], result["pairs"])
    metrics.append({"step": step, "eval": True, **{f"eval/{k}": v for k, v in result.items()}, "run": run})
    if tb is not None:
        for key in ("accuracy", "margin", "loss"):
            tb.add_scalar(f"eval/{key}", result[key], step)


def _dpo_facts(p: Prepared, metrics_path: Path, run: str, ref) -> dict:
    """What the manifest and the model card say about a DPO run (rank 0), from its metrics."""
    cfg = p.cfg.dpo
    recs = [r for r in read_jsonl_store(metrics_path) if r.get("run") == run]
    evals = [{"step": r["step"], **{k[5:]: r[k] for k in r if k.startswith("eval/")}} for r in recs if r.get("eval")]
    steps = [r for r in recs if not r.get("eval")]
    tail = steps[-max(1, len(steps) // 10):]
    keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
    last = {k: sum(r[k] for r in tail) / len(tail) for k in keys} if tail else {}
    return {"beta": cfg.beta, "loss": cfg.loss, "label_smoothing": cfg.label_smoothing, "sft_weight": cfg.sft_weight,
            "pairs": {"train": len(p.pairs.ids), "heldout": len(p.pairs.heldout_ids), "path": str(p.pairs.path),
                      "fingerprint": p.pairs.fingerprint, "stats": p.pairs.stats,
                      "meta": {k: v for k, v in p.pairs.meta.items() if k != "reference"}},
            "reference": p.pairs.meta.get("reference", {}), "eval": evals, "train_last": last}


def train_step(model: torch.nn.Module, optimizer, micro: list[dict], tokens: float, layout: AttentionLayout,
               d: Dist, *, autocast=None, grad_clip: float | None = None) -> tuple[float, float, float, float]:
    """One optimiser step over this rank's collated micro-batches ``micro`` (``tokens``: the
    unpadded tokens they hold); every rank calls it with as many micro-batches.

    Returns ``(loss, grad_norm, supervised tokens, tokens)``, the last two summed over ranks.
    The scheduler is the caller's. `benchmarks/gpu_sft.py` times this very function.
    """
    fsdp = is_fsdp(model)
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    # The loss is the mean over the supervised tokens of the WHOLE global batch (all
    # micro-batches of all ranks), so long answers weigh what they weigh whatever the
    # batching, and however many micro-batches a step has: count first, then every
    # micro-batch adds sum(token losses) / count.
    counts = torch.tensor([sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in micro), tokens],
                          dtype=torch.float64)
    d.all_reduce_sum(counts)
    n_sup, n_tok = counts[0].item(), counts[1].item()
    loss_sum = torch.zeros((), dtype=torch.float64)
    for k, batch in enumerate(micro):
        labels = batch["labels"].to(d.device)
        if fsdp:  # reduce-scatter gradients once per step, on the last micro-batch
            model.set_requires_gradient_sync(k == len(micro) - 1)
        with autocast:
            # The example boundaries go to attention explicitly (mask or cu_seq_lens).
            logits = model(**layout.model_inputs(batch, d.device)).logits
        tok_loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        # FSDP averages gradients over ranks; x world size turns that average into the sum.
        (tok_loss * (d.world_size / max(n_sup, 1.0))).backward()
        loss_sum += tok_loss.detach().double().cpu()
        del logits, tok_loss
    loss = d.all_reduce_sum(loss_sum).item() / max(n_sup, 1.0)
    grad_norm = _clip(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, n_sup, n_tok


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm (FSDP2: a DTensor norm over all shards); returns the norm."""
    params = [q for q in model.parameters() if q.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def _open_metrics(path: Path, run_dir: Path, run: str, step: int) -> JsonlAppender:
    """``<out>/metrics.jsonl`` holding exactly this run's lines up to ``step`` (the checkpoint
    resumed; later lines were lost work). Another run's lines are parked in that run's
    checkpoint folder (when it still exists) and this run's parked lines come back, so the
    file always describes the run being trained and switching configs back and forth
    loses nothing."""
    records = read_jsonl_store(path) if path.exists() else []
    mine = [r for r in records if r.get("run") == run]
    others: dict[str, list[dict]] = {}
    for r in records:
        if r.get("run") != run:
            others.setdefault(str(r.get("run")), []).append(r)
    for other, recs in others.items():
        if (run_dir.parent / other).is_dir():
            write_jsonl(run_dir.parent / other / "metrics.jsonl", recs)
    parked = run_dir / "metrics.jsonl"
    if not mine and parked.is_file():
        mine = read_jsonl_store(parked)
    write_jsonl(path, [r for r in mine if r.get("step", 0) <= step])
    parked.unlink(missing_ok=True)
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
