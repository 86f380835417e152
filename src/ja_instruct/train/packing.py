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
global batch of each step, then takes its own share (`rank_micro_batches`), so a resumed
run starting at step s sees exactly the batches an uninterrupted run would have seen. A
global batch is counted in rows (`StepSampler`: the dataset is packed once, the rows are
shuffled) or in examples or tokens (`ExampleSampler`: the examples are shuffled, cut into
steps, and each step is packed on its own). It never depends on the world size or the
micro batch size, which only decide how a step is shared out.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
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


BATCH_UNITS = ("rows", "examples", "tokens")


def cut_steps(sizes: Sequence[int], steps: int) -> list[int]:
    """Cut a sequence of items of ``sizes`` into ``steps`` runs of consecutive items of about
    equal total: returns the ``steps + 1`` boundaries (0 first, ``len(sizes)`` last).

    Step k ends at the first boundary where the running total reaches (k+1) x total / steps,
    so each step holds total / steps give or take one item (an item larger than that makes a
    step of its own: the cuts are kept strictly increasing, which needs ``steps <= len(sizes)``).
    """
    n = len(sizes)
    if not 1 <= steps <= n:
        raise ValueError(f"cannot cut {n} items into {steps} non-empty steps")
    total = sum(sizes)
    cum = list(itertools.accumulate(sizes, initial=0))
    # -(-a // b) is ceil(a / b): running totals are integers, so "reaches k x total / steps"
    # is ">= ceil(k x total / steps)", with no float rounding.
    cuts = [0] + [bisect.bisect_left(cum, -(-k * total // steps)) for k in range(1, steps)] + [n]
    for k in range(1, steps):
        cuts[k] = max(cuts[k], cuts[k - 1] + 1)
    for k in range(steps - 1, 0, -1):
        cuts[k] = min(cuts[k], cuts[k + 1] - 1)
    return cuts


def split_rows(rows: list[list[int]], lengths: Sequence[int], n: int) -> list[list[int]]:
    """``rows`` (lists of example indices) with rows cut between two examples until there are
    ``n`` of them, or no row holds two examples. The row with the most tokens is cut first, where
    its halves' tokens are closest; the pieces stay in place. Cutting a packed row between
    examples changes nothing the model computes: packed examples never attend to each other
    (`ja_instruct.train.isolation` checks it), and the loss is per supervised token."""
    rows = [list(r) for r in rows]
    while len(rows) < n:
        cand = [k for k, r in enumerate(rows) if len(r) > 1]
        if not cand:
            break
        k = max(cand, key=lambda j: (sum(lengths[i] for i in rows[j]), -j))
        row = rows[k]
        prefix = list(itertools.accumulate(lengths[i] for i in row))
        cut = min(range(1, len(row)), key=lambda c: (abs(2 * prefix[c - 1] - prefix[-1]), c))
        rows[k:k + 1] = [row[:cut], row[cut:]]
    return rows


def rank_micro_batches(rows: list[list[int]], lengths: Sequence[int], world_size: int, rank: int,
                       micro_batch_size: int) -> list[list[list[int]]]:
    """This rank's share of one global batch ``rows`` (lists of example indices), as micro-batches
    of at most ``micro_batch_size`` rows.

    Every rank gets the same number M = ceil(rows / (world_size x micro_batch_size)) of
    micro-batches: under FSDP each forward and backward is a collective, so the ranks must run
    as many. When there are fewer than world_size x M rows, rows are cut between examples
    (`split_rows`) so that every micro-batch of every rank gets a row. Rows are dealt round
    robin (rank r takes rows r, r + world_size, ...) and each rank's rows split into M
    consecutive micro-batches. Only when no row can be cut (one example per row) is a
    micro-batch left empty; the loop runs it as one token without a label. With
    ``batch_unit: rows`` the global batch is a multiple of world_size x micro_batch_size: this
    is then exactly "every world_size-th row, in chunks of micro_batch_size".
    """
    m = max(1, math.ceil(len(rows) / (world_size * micro_batch_size)))
    mine = split_rows(rows, lengths, world_size * m)[rank::world_size]
    sizes = [len(mine) // m + (j < len(mine) % m) for j in range(m)]
    bounds = list(itertools.accumulate(sizes, initial=0))
    return [mine[a:b] for a, b in zip(bounds, bounds[1:])]


class _Order:
    """What both samplers offer the loop: ``steps_per_epoch``, `rows_of` a step (all ranks) and
    this rank's `micro_batch_rows`."""

    steps_per_epoch: int
    world_size: int
    rank: int
    micro_batch_size: int
    lengths: Sequence[int]

    def rows_of(self, step: int) -> list[list[int]]:
        """The global batch of step ``step`` (0-based) as rows of example indices, all ranks."""
        raise NotImplementedError

    def micro_batch_rows(self, step: int) -> list[list[list[int]]]:
        """This rank's micro-batches of step ``step``, as rows of example indices (`rank_micro_batches`)."""
        return rank_micro_batches(self.rows_of(step), self.lengths, self.world_size, self.rank,
                                  self.micro_batch_size)

    def epoch_of(self, step: int) -> float:
        """Fractional epoch reached after ``step`` steps (for logging)."""
        return step / self.steps_per_epoch


class StepSampler(_Order):
    """``batch_unit: rows``: which packed rows make each optimiser step.

    Every epoch the rows are shuffled with ``seed + epoch``. The permutation is extended
    by wrapping around to a whole number of global batches (so every row is seen every
    epoch; a few rows of the last step are seen twice, as with DistributedSampler's
    padding). Global batch k of the epoch is rows ``perm[k*G:(k+1)*G]``; rank r takes
    every world-th of them, then splits its share into ``grad_accum`` micro-batches.
    ``rows`` (example indices of each row) and ``lengths`` (tokens of each example) are only
    needed for `rows_of` / `micro_batch_rows`.
    """

    def __init__(self, num_rows: int, global_batch_size: int, micro_batch_size: int,
                 world_size: int, rank: int, seed: int, *, rows: list[list[int]] | None = None,
                 lengths: Sequence[int] = ()) -> None:
        if num_rows == 0:
            raise ValueError("no rows to train on")
        self.num_rows = num_rows
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.rows, self.lengths = rows, lengths
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

    def global_batch(self, step: int) -> list[int]:
        """Row ids of global optimiser step ``step`` (0-based), all ranks together."""
        epoch, k = divmod(step, self.steps_per_epoch)
        return self._permutation(epoch)[k * self.global_batch_size:(k + 1) * self.global_batch_size]

    def rows_of(self, step: int) -> list[list[int]]:
        if self.rows is None:
            raise ValueError("StepSampler was made without its rows")
        return [self.rows[r] for r in self.global_batch(step)]

    def micro_batches(self, step: int) -> list[list[int]]:
        """Row ids of this rank's micro-batches for global optimiser step ``step`` (0-based)."""
        mine = self.global_batch(step)[self.rank::self.world_size]
        m = self.micro_batch_size
        return [mine[i:i + m] for i in range(0, len(mine), m)]


class ExampleSampler(_Order):
    """``batch_unit: examples`` or ``tokens``: which examples make each optimiser step, packed per step.

    Every epoch the EXAMPLES are shuffled with ``seed + epoch`` and cut into S = round(E / G)
    steps of consecutive examples (E: examples, or tokens, in the epoch; `cut_steps`): each
    step holds E / S, that is about G, give or take one example; every example is trained
    exactly once per epoch, and S is the same every epoch. Each step's examples are then
    packed into rows of at most ``max_length`` tokens (`pack_best_fit`; one per row without
    ``packing``). Packing per step, not the dataset once, is what makes "128 examples" mean
    128: rows packed over the whole dataset hold from one long example to hundreds of short
    ones, so whole rows could not make steps of even size.
    """

    def __init__(self, lengths: Sequence[int], unit: str, global_batch_size: int, micro_batch_size: int,
                 world_size: int, rank: int, seed: int, *, max_length: int, packing: bool) -> None:
        if unit not in ("examples", "tokens"):
            raise ValueError(f"ExampleSampler counts examples or tokens, not {unit!r}")
        if not lengths:
            raise ValueError("no examples to train on")
        self.lengths = list(lengths)
        self.unit = unit
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.max_length = max_length
        self.packing = packing
        self.sizes = [1] * len(self.lengths) if unit == "examples" else self.lengths
        self.epoch_total = sum(self.sizes)
        # round(E / G), halves up, in integers; at least one step
        self.steps_per_epoch = max(1, (2 * self.epoch_total + global_batch_size) // (2 * global_batch_size))
        if self.steps_per_epoch > len(self.lengths):
            raise ValueError(f"a global batch of {global_batch_size:,} {unit} is less than one example holds on "
                             f"average ({self.epoch_total / len(self.lengths):,.1f} {unit})")
        self._epoch = -1
        self._perm: list[int] = []
        self._cuts: list[int] = []

    def examples_of(self, step: int) -> list[int]:
        """Example indices of step ``step`` (0-based), all ranks, in the epoch's shuffled order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(len(self.lengths), generator=g).tolist()
            self._cuts = cut_steps([self.sizes[i] for i in self._perm], self.steps_per_epoch)
            self._epoch = epoch
        return self._perm[self._cuts[k]:self._cuts[k + 1]]

    def rows_of(self, step: int) -> list[list[int]]:
        ex = self.examples_of(step)
        if not self.packing:
            return [[i] for i in ex]
        return [[ex[j] for j in row] for row in pack_best_fit([self.lengths[i] for i in ex], self.max_length)]


def make_sampler(rows: list[list[int]], lengths: Sequence[int], unit: str, global_batch_size: int,
                 micro_batch_size: int, world_size: int, rank: int, seed: int, *, max_length: int,
                 packing: bool) -> StepSampler | ExampleSampler:
    """The order of a run whose examples have ``lengths`` tokens, for a global batch of
    ``global_batch_size`` ``unit`` (``train.batch_unit``): `StepSampler` over the packed
    ``rows`` (rows), else `ExampleSampler` (examples, tokens; ``rows`` unused)."""
    if unit == "rows":
        return StepSampler(len(rows), global_batch_size, micro_batch_size, world_size, rank, seed, rows=rows,
                           lengths=lengths)
    if unit not in BATCH_UNITS:
        raise ValueError(f"unknown batch unit {unit!r} (one of {', '.join(BATCH_UNITS)})")
    return ExampleSampler(lengths, unit, global_batch_size, micro_batch_size, world_size, rank, seed,
                          max_length=max_length, packing=packing)


@dataclass
class StepCounts:
    """What each optimiser step holds over all ranks (one entry per step)."""

    rows: list[int]
    examples: list[int]
    tokens: list[int]
    micro_batches: list[int]
    """Micro-batches (forward/backward passes) per rank."""
    idle: list[int]
    """Micro-batches, over all ranks, that got no row (run empty to keep the ranks in step)."""
    longest_row: int = 0
    """Tokens of the longest row any rank runs in these steps, after `split_rows` (it sizes the
    activation peak)."""

    def of(self, unit: str) -> list[int]:
        """The counts in ``unit`` (``rows``, ``examples`` or ``tokens``)."""
        return getattr(self, unit)


def count_steps(sampler: StepSampler | ExampleSampler, steps: Iterable[int]) -> StepCounts:
    """Rows, examples, tokens, micro-batches per rank and empty micro-batches of each of ``steps``,
    exactly as the loop takes them (`_Order.rows_of`, `rank_micro_batches`)."""
    out = StepCounts([], [], [], [], [])
    w, mbs, lengths = sampler.world_size, sampler.micro_batch_size, sampler.lengths
    for step in steps:
        rows = sampler.rows_of(step)
        m = max(1, math.ceil(len(rows) / (w * mbs)))
        pieces = split_rows(rows, lengths, w * m)
        out.rows.append(len(rows))
        out.examples.append(sum(len(r) for r in rows))
        out.tokens.append(sum(lengths[i] for r in rows for i in r))
        out.micro_batches.append(m)
        out.idle.append(max(0, w * m - len(pieces)))
        out.longest_row = max(out.longest_row, max(sum(lengths[i] for i in r) for r in pieces))
    return out
