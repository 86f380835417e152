"""Rows, micro-batches and the deterministic distributed order of training.

A *row* is one sequence of at most ``max_length`` tokens fed to the model. With
packing, a row holds several whole examples (best-fit decreasing bin packing, so
rows are nearly full and padding is rare); each example keeps its own position ids
(0, 1, 2, ... restarting at every example) and its own *segment id* (its index in
the row; padding is one more segment). The segment ids are what keeps examples
apart: `ja_instruct.train.isolation` turns them into an explicit block-causal mask,
or into flash-attention sequence boundaries (`collate_flat`), and checks on the
real model that no example sees another. Without packing a row is one example and
a micro-batch is padded to its longest row.

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
    """Tensors of one micro-batch: ``input_ids``, ``labels`` (already shifted), ``position_ids``,
    ``segment_ids``.

    Rows are right-padded to the longest row of the micro-batch. ``segment_ids`` numbers the
    examples of each row 0, 1, ...; padding gets the next number, label -100 and position ids
    that restart at 0, so it forms its own segment that no real token attends to.
    """
    ids, labels, pos, seg = [], [], [], []
    for row in rows:
        r_ids, r_lab, r_pos, r_seg = [], [], [], []
        for k, i in enumerate(row):
            ex = examples[i]
            r_ids += ex.input_ids
            r_lab += ex.shifted_labels
            r_pos += list(range(len(ex.input_ids)))
            r_seg += [k] * len(ex.input_ids)
        ids.append(r_ids)
        labels.append(r_lab)
        pos.append(r_pos)
        seg.append(r_seg)
    width = max(len(r) for r in ids)
    for row, r_ids, r_lab, r_pos, r_seg in zip(rows, ids, labels, pos, seg):
        n = width - len(r_ids)
        r_ids += [pad_id] * n
        r_lab += [IGNORE_INDEX] * n
        r_pos += list(range(n))
        r_seg += [len(row)] * n
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
        "segment_ids": torch.tensor(seg, dtype=torch.long),
    }


def collate_flat(examples: list[Example], rows: list[list[int]]) -> dict:
    """One micro-batch flattened into a single row without padding, for flash-attention varlen.

    Every example of every row is concatenated, in row order, into a ``[1, total]`` row with
    restarting ``position_ids`` and the sequence boundaries ``cu_seq_lens_q/k`` (int32) and
    ``max_length_q/k`` (int): exactly what transformers' ``DataCollatorWithFlattening(
    return_flash_attn_kwargs=True)`` produces (it is used here), which transformers passes to
    ``flash_attn_varlen_func``. ``labels`` are this module's per-example shifted labels.
    """
    from transformers import DataCollatorWithFlattening

    order = [examples[i] for row in rows for i in row]
    flat = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": ex.input_ids} for ex in order], return_tensors="pt")
    # The collator's labels assume the model shifts them itself; this loop's loss does not.
    flat["labels"] = torch.tensor([[t for ex in order for t in ex.shifted_labels]], dtype=torch.long)
    return flat


def example_spans(examples: list[Example], rows: list[list[int]], flat: bool) -> list[tuple[int, int, int, int]]:
    """Where each example of a micro-batch lies in the collated tensors: ``(example, row, start,
    length)``, for `collate` (``flat=False``) or `collate_flat` (``flat=True``: all in row 0)."""
    spans, start = [], 0
    for r, row in enumerate(rows):
        start = start if flat else 0
        for i in row:
            n = len(examples[i].input_ids)
            spans.append((i, 0 if flat else r, start, n))
            start += n
    return spans


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
