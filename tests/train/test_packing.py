"""Packing: rows, the distributed order, collation, and the loss equivalence of packed vs one-by-one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ja_instruct.train.isolation import attention_layout
from ja_instruct.train.packing import (IGNORE_INDEX, Example, StepSampler, build_rows, collate, collate_flat,
                                      example_spans, pack_best_fit)


def test_best_fit_places_every_example_once_within_the_limit():
    lengths = [50, 30, 70, 20, 90, 10, 60, 40, 100, 5]
    rows = pack_best_fit(lengths, 100)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    assert len(rows) == 5  # 475 tokens -> 5 rows of 100 is optimal here
    with pytest.raises(ValueError):
        pack_best_fit([101], 100)


def test_sampler_is_deterministic_disjoint_and_resumable():
    def take(rank, steps):
        s = StepSampler(num_rows=10, global_batch_size=4, micro_batch_size=1, world_size=2, rank=rank, seed=3)
        return {step: s.micro_batches(step) for step in steps}

    a0, a1 = take(0, range(9)), take(1, range(9))
    for step in range(9):
        r0 = [r for mb in a0[step] for r in mb]
        r1 = [r for mb in a1[step] for r in mb]
        assert len(r0) == len(r1) == 2 and not set(r0) & set(r1)
    # an epoch (3 steps, wrapped to 12 rows) covers every row
    epoch0 = {r for st in range(3) for d in (a0, a1) for mb in d[st] for r in mb}
    assert epoch0 == set(range(10))
    # epochs are shuffled differently, and a fresh sampler (a resumed run) sees the same batches
    assert [a0[s] for s in range(3)] != [a0[s] for s in range(3, 6)]
    assert take(0, [7])[7] == a0[7]


def _examples(tokenizer):
    from ja_instruct.data.tokenize import tokenize_conversation
    from conftest_train import make_conversations

    out = []
    for conv in make_conversations(6, seed=5):
        t = tokenize_conversation(tokenizer, "plamo", conv["messages"], max_length=None)
        out.append(Example(t["input_ids"], t["labels"]))
    return out


def _model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    m.eval()
    return m


def _loss_sum(model, batch, layout):
    """Summed token loss of ``batch`` through the training loop's model inputs."""
    with torch.no_grad():
        logits = model(**layout.model_inputs(batch, torch.device("cpu"))).logits
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum").item()


@pytest.mark.parametrize("packing", [True, False])
def test_packed_loss_equals_token_weighted_loss_one_by_one(tiny_model_dir, tiny_tokenizer, packing):
    model = _model(tiny_model_dir)
    ex = _examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    layout = attention_layout(model, packing, torch.float32, "tiny")
    # one by one: the token-weighted mean over all supervised tokens
    total, count = 0.0, 0
    for i in range(len(ex)):
        b = collate(ex, [[i]], pad)
        total += _loss_sum(model, b, layout)
        count += int((b["labels"] != IGNORE_INDEX).sum())
    rows = build_rows(ex, max_length=10_000, packing=packing)
    assert len(rows) == (1 if packing else len(ex))
    batch = collate(ex, rows, pad)  # packing: one row of six examples; padding: six padded rows
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == count
    assert abs(_loss_sum(model, batch, layout) / count - total / count) < 1e-5
    if packing:
        # The test can fail: with all examples in one segment they attend to each other.
        leaky = dict(batch, segment_ids=torch.zeros_like(batch["segment_ids"]))
        assert abs(_loss_sum(model, leaky, layout) / count - total / count) > 1e-3


def test_collate_shifts_labels_within_each_example():
    ex = [Example([1, 2, 3], [-100, 2, 3]), Example([4, 5], [-100, 5])]
    b = collate(ex, [[0, 1]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    # token 3 (last of example 0) must not be trained to predict token 4 (first of example 1)
    assert b["labels"].tolist() == [[2, 3, -100, 5, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["segment_ids"].tolist() == [[0, 0, 0, 1, 1]]
    b = collate(ex, [[0], [1]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert b["labels"].tolist() == [[2, 3, -100], [5, -100, -100]]
    assert b["segment_ids"].tolist() == [[0, 0, 0], [0, 0, 1]]  # padding: a segment of its own
    assert example_spans(ex, [[0], [1]], flat=False) == [(0, 0, 0, 3), (1, 1, 0, 2)]


def test_collate_flat_makes_one_row_with_flash_attention_boundaries():
    ex = [Example([1, 2, 3], [-100, 2, 3]), Example([4, 5], [-100, 5]), Example([6, 7, 8, 9], [-100, -100, 8, 9])]
    b = collate_flat(ex, [[0, 2], [1]])  # a micro-batch of two rows becomes one row, in row order
    assert b["input_ids"].tolist() == [[1, 2, 3, 6, 7, 8, 9, 4, 5]]
    assert b["labels"].tolist() == [[2, 3, -100, -100, 8, 9, -100, 5, -100]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1]]
    assert b["cu_seq_lens_q"].tolist() == b["cu_seq_lens_k"].tolist() == [0, 3, 7, 9]
    assert b["cu_seq_lens_q"].dtype == torch.int32
    assert b["max_length_q"] == b["max_length_k"] == 4
    assert example_spans(ex, [[0, 2], [1]], flat=True) == [(0, 0, 0, 3), (2, 0, 3, 4), (1, 0, 7, 2)]
