"""Rows, micro-batches and the deterministic distributed order of training.

A *row* is one sequence of at most ``max_length`` tokens fed to the model. With
packing, a row holds several whole examples (best-fit decreasing bin packing, so
rows are nearly full and padding is rare); each example keeps its own position ids
(0, 1, 2, ... restarting at every example). Transformers turns position ids that
restart into a block-diagonal causal mask (``find_packed_sequence_indices`` in
``masking_utils``) when no attention mask is given and no KV cache is used, so no
example attends to another. Without packing a row is one example and a micro-batch
is padded to its longest row.

Labels are shifted *per example* before the examples are concatenated (label of
token t = token t+1 of the same example; the last token of an example predicts
nothing), so the loss never asks an example to predict the start of the next one.

The order is a pure function of (seed, epoch, step): every rank computes the same
permutation of rows and takes its own slice, and a resumed run starting at step s
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class Example:
    """One tokenised conversation: ids and its (unshifted) labels, -100 on prompt tokens."""

    input_ids: list[int]
    labels: list[int]

    @property
    def shifted_labels(self) -> list[int]:
        """Labels aligned with the logits: position t is trained to predict token t+1."""
        return self.labels[1:] + [IGNORE_INDEX]


def pack_best_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_length`` tokens (best-fit decreasing).

    The longest examples are placed first, each into the row whose free space is the
    smallest that still fits it. Deterministic: ties break on the example index.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, row id) of rows that still have room
    for i in order:
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens > max_length {max_length}")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            space, r = max_length, len(rows)
            rows.append([])
        rows[r].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, r))
    # Keep a stable, length-independent order of examples inside each row.
    return [sorted(r) for r in rows]


def build_rows(examples: list[Example], max_length: int, packing: bool) -> list[list[int]]:
    """The training rows as lists of example indices (one example per row without packing)."""
    if not packing:
        return [[i] for i in range(len(examples))]
    return pack_best_fit([len(e.input_ids) for e in examples], max_length)


def collate(examples: list[Example], rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors of one micro-batch: ``input_ids``, ``labels`` (already shifted), ``position_ids``.

    Rows are right-padded to the longest row of the micro-batch. Padding gets label -100 and
    position ids that restart at 0, so it forms its own block that no real token attends to.
    """
    ids, labels, pos = [], [], []
    for row in rows:
        r_ids, r_lab, r_pos = [], [], []
        for i in row:
            ex = examples[i]
            r_ids += ex.input_ids
            r_lab += ex.shifted_labels
            r_pos += list(range(len(ex.input_ids)))
        ids.append(r_ids)
        labels.append(r_lab)
        pos.append(r_pos)
    width = max(len(r) for r in ids)
    for r_ids, r_lab, r_pos in zip(ids, labels, pos):
        n = width - len(r_ids)
        r_ids += [pad_id] * n
        r_lab += [IGNORE_INDEX] * n
        r_pos += list(range(n))
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
    }


class StepSampler:
    """Which rows each rank trains on at each optimiser step (deterministic, resumable).

    Every epoch the rows are shuffled with ``seed + epoch``. The permutation is extended
    by wrapping around to a whole number of global batches (so every row is seen every
    epoch; a few rows of the last step are seen twice, as with DistributedSampler's
    padding). Global batch k of the epoch is rows ``perm[k*G:(k+1)*G]``; rank r takes
    every world-th of them, then splits its share into ``grad_accum`` micro-batches.
    """

    def __init__(self, num_rows: int, global_batch_size: int, micro_batch_size: int,
                 world_size: int, rank: int, seed: int) -> None:
        if num_rows == 0:
            raise ValueError("no rows to train on")
        self.num_rows = num_rows
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.steps_per_epoch = math.ceil(num_rows / global_batch_size)
        self._perm_epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_rows, generator=g).tolist()
            need = self.steps_per_epoch * self.global_batch_size
            while len(perm) < need:  # wrap around to fill the last global batch
                perm += perm[: need - len(perm)]
            self._perm, self._perm_epoch = perm, epoch
        return self._perm

    def micro_batches(self, step: int) -> list[list[int]]:
        """Row ids of this rank's micro-batches for global optimiser step ``step`` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        mine = perm[k * self.global_batch_size:(k + 1) * self.global_batch_size][self.rank::self.world_size]
        m = self.micro_batch_size
        return [mine[i:i + m] for i in range(0, len(mine), m)]

    def epoch_of(self, step: int) -> float:
        """Fractional epoch reached after ``step`` steps (for logging)."""
        return step / self.steps_per_epoch
