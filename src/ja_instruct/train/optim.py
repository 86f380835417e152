"""AdamW and the learning-rate schedule (linear warm-up, cosine decay to ``lr * min_lr_ratio``)."""

from __future__ import annotations

import math

import torch

from ja_instruct.train.config import TrainConfig


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


def lr_factor(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """The multiplier of the peak lr used by optimiser step ``step`` (0-based, of ``total_steps``).

    Warm-up: steps ``0 .. W-1`` with ``W = ceil(warmup_ratio * total)`` ramp linearly
    (``(s+1)/(W+1)``); then the cosine runs from the peak at step ``W`` to exactly
    ``min_lr_ratio`` at the LAST step used, ``total - 1`` (not ``total``, which is never
    taken). The warm-up always leaves the last step to the decay, so a run ends at the
    minimum whatever its length.
    """
    last = total_steps - 1
    warmup = min(math.ceil(warmup_ratio * total_steps), max(last, 0))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= last:
        return min_lr_ratio
    progress = (step - warmup) / (last - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                    min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` as a ``LambdaLR`` (its ``last_epoch`` counts optimiser steps already taken)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_ratio, min_lr_ratio))
