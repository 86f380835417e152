"""The learning-rate schedule: linear warm-up, then cosine down to exactly lr * min_lr_ratio."""

from __future__ import annotations

import math

import pytest
import torch

from ja_instruct.train.optim import cosine_schedule


def _lrs(total: int, warmup_ratio: float, min_lr_ratio: float, lr: float = 3e-4) -> list[float]:
    """The lr each optimiser step uses, read the way the loop reads it (before ``scheduler.step``)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = cosine_schedule(opt, total, warmup_ratio, min_lr_ratio)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total, warmup_ratio, min_lr_ratio", [
    (10, 0.1, 0.1), (100, 0.03, 0.0), (7, 0.3, 0.25), (2, 0.1, 0.5), (5, 0.0, 0.2), (1, 0.5, 0.3),
])
def test_last_step_uses_exactly_the_minimum_lr(total, warmup_ratio, min_lr_ratio):
    lr = 3e-4
    lrs = _lrs(total, warmup_ratio, min_lr_ratio, lr)
    assert len(lrs) == total
    assert abs(lrs[-1] - lr * min_lr_ratio) <= 1e-12
    assert all(x >= lr * min_lr_ratio - 1e-12 for x in lrs)  # never below the floor


def test_warmup_is_linear_then_the_cosine_starts_at_the_peak_and_decreases():
    lr, total = 1.0, 20
    lrs = _lrs(total, 0.1, 0.1, lr)
    warmup = math.ceil(0.1 * total)  # 2 warm-up steps: 1/3, 2/3 of the peak, then the peak
    assert lrs[:warmup] == pytest.approx([(s + 1) / (warmup + 1) for s in range(warmup)], abs=1e-12)
    assert lrs[warmup] == pytest.approx(lr, abs=1e-12)
    decay = lrs[warmup:]
    assert all(a > b for a, b in zip(decay, decay[1:]))  # strictly down to the last step
    # halfway through the decay the cosine is halfway between peak and floor
    mid = warmup + (total - 1 - warmup) / 2
    if mid == int(mid):
        assert lrs[int(mid)] == pytest.approx((1 + 0.1) / 2, abs=1e-12)
