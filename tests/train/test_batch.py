"""Batch semantics (``train.batch_unit``): a global batch in rows, examples or tokens; the steps it
makes, their split over ranks and micro-batches, exact resume, and what the run and the plan say."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from conftest_train import read_metrics, write_recipe
from ja_instruct.errors import UserError
from ja_instruct.manifest import read_manifest
from ja_instruct.recipe import load_recipe
from ja_instruct.train import hashed_config
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.identity import NOT_HASHED
from ja_instruct.train.packing import (ExampleSampler, StepSampler, count_steps, cut_steps, make_sampler,
                                      rank_micro_batches, split_rows)
from ja_instruct.train.prepare import check_batch


# --------------------------------------------------------------------------- cutting an epoch into steps

def test_cut_steps_hand_checked():
    # 20 in all, 4 steps -> thresholds 5, 10, 15 on the running totals 3 4 6 10 12 15 16 18 19 20:
    # the first boundaries reaching them are after items 3 (6), 4 (10) and 6 (15).
    sizes = [3, 1, 2, 4, 2, 3, 1, 2, 1, 1]
    cuts = cut_steps(sizes, 4)
    assert cuts == [0, 3, 4, 6, 10]
    totals = [sum(sizes[a:b]) for a, b in zip(cuts, cuts[1:])]
    assert totals == [6, 4, 5, 5] and all(abs(t - 5) < max(sizes) for t in totals)
    # tokens: 500 in 3 steps -> thresholds 167 and 334 on 100 160 250 280 400 500
    assert cut_steps([100, 60, 90, 30, 120, 100], 3) == [0, 3, 5, 6]
    # one item larger than a step's share makes a step of its own; no step is ever empty
    assert cut_steps([1, 1, 10, 1, 1, 1, 1], 4) == [0, 3, 4, 5, 7]
    with pytest.raises(ValueError):
        cut_steps([1, 1], 3)


def test_examples_unit_hand_checked_steps_and_counts():
    # 10 examples, 4 per step: round(10 / 4) = 3 steps (halves round up) of 10/3 examples, cut
    # at ceil(10/3) = 4 and ceil(20/3) = 7 -> 4, 3, 3 examples, every epoch, each example once.
    lengths = [30, 50, 20, 40, 60, 10, 70, 20, 35, 25]
    s = ExampleSampler(lengths, "examples", 4, 1, 1, 0, seed=7, max_length=100, packing=True)
    assert s.steps_per_epoch == 3
    for epoch in range(2):
        steps = [s.examples_of(3 * epoch + k) for k in range(3)]
        assert [len(x) for x in steps] == [4, 3, 3]
        assert sorted(i for x in steps for i in x) == list(range(10))
        for k in range(3):  # each step is packed on its own: its rows hold exactly its examples
            rows = s.rows_of(3 * epoch + k)
            assert sorted(i for r in rows for i in r) == sorted(steps[k])
            assert all(sum(lengths[i] for i in r) <= 100 for r in rows)
    # Alpaca: 52,002 examples, 128 per step -> 406 steps (round(406.27)); 52,002 - 406 x 128 = 34
    # of them hold 129 examples, the other 372 hold 128.
    alpaca = ExampleSampler([1] * 52002, "examples", 128, 1, 1, 0, seed=0, max_length=512, packing=False)
    assert alpaca.steps_per_epoch == 406
    sizes = [len(alpaca.examples_of(k)) for k in range(406)]
    assert (sizes.count(128), sizes.count(129)) == (372, 34)


def test_tokens_unit_steps_hold_the_target_within_one_example():
    lengths = [30, 50, 20, 40, 60, 10, 70, 20]  # 300 tokens, 100 per step -> 3 steps
    s = ExampleSampler(lengths, "tokens", 100, 1, 1, 0, seed=3, max_length=128, packing=True)
    assert s.steps_per_epoch == 3
    counts = count_steps(s, range(6))
    assert sum(counts.tokens[:3]) == sum(counts.tokens[3:]) == 300
    assert all(abs(t - 100) < max(lengths) for t in counts.tokens)
    assert counts.tokens[:3] != counts.tokens[3:] or s.examples_of(0) != s.examples_of(3)  # reshuffled
    with pytest.raises(ValueError, match="less than one example holds"):
        ExampleSampler(lengths, "tokens", 20, 1, 1, 0, seed=3, max_length=128, packing=True)


# --------------------------------------------------------------------------- determinism and resume

@pytest.mark.parametrize("unit", ["examples", "tokens"])
def test_step_batches_are_a_pure_function_of_seed_and_step(unit):
    lengths = [(i * 37) % 90 + 5 for i in range(60)]
    size = 8 if unit == "examples" else 400

    def make(seed=11, world=1):
        return ExampleSampler(lengths, unit, size, 1, world, 0, seed=seed, max_length=128, packing=True)

    a = make()
    run = [a.rows_of(k) for k in range(3 * a.steps_per_epoch)]
    # a restarted run (a fresh sampler), asked for steps out of order, sees the same batches
    b = make()
    for k in reversed(range(len(run))):
        assert b.rows_of(k) == run[k]
    # nor does the world size change which examples make a step (only how it is shared out)
    two = make(world=2)
    assert [two.examples_of(k) for k in range(len(run))] == [make().examples_of(k) for k in range(len(run))]
    n = a.steps_per_epoch
    assert run[:n] != run[n:2 * n]  # epochs are reshuffled
    assert make(seed=12).examples_of(0) != a.examples_of(0)


# --------------------------------------------------------------------------- sharing a step out

def test_world_size_two_every_rank_gets_work_and_every_example_once():
    # one packed row of three examples on two ranks: it is cut between examples where the
    # halves are closest in tokens (10+30 | 25), and each rank trains one piece
    assert split_rows([[0, 1, 2]], [10, 30, 25], 2) == [[0, 1], [2]]
    assert rank_micro_batches([[0, 1, 2]], [10, 30, 25], 2, 0, 1) == [[[0, 1]]]
    assert rank_micro_batches([[0, 1, 2]], [10, 30, 25], 2, 1, 1) == [[[2]]]
    # three rows that cannot be cut (one example each): 2 micro-batches per rank, one left empty
    assert rank_micro_batches([[0], [1], [2]], [5, 5, 5], 2, 0, 1) == [[[0]], [[2]]]
    assert rank_micro_batches([[0], [1], [2]], [5, 5, 5], 2, 1, 1) == [[[1]], []]

    lengths = [(i * 53) % 70 + 8 for i in range(80)]
    for unit, size in (("examples", 12), ("tokens", 700)):
        samplers = [ExampleSampler(lengths, unit, size, 1, 2, r, seed=5, max_length=128, packing=True)
                    for r in (0, 1)]
        counts = count_steps(samplers[0], range(samplers[0].steps_per_epoch))
        assert not any(counts.idle)
        for k in range(samplers[0].steps_per_epoch):
            shares = [s.micro_batch_rows(k) for s in samplers]
            assert len(shares[0]) == len(shares[1]) == counts.micro_batches[k]  # same number of passes
            assert all(mb for share in shares for mb in share)  # every micro-batch of every rank has a row
            got = sorted(i for share in shares for mb in share for row in mb for i in row)
            assert got == sorted(samplers[0].examples_of(k))


def test_rows_unit_keeps_the_old_order_and_the_old_run_identity():
    # The loop's path (rows_of + rank_micro_batches) gives each rank exactly the rows of the
    # pre-existing per-rank slicing (StepSampler.micro_batches), micro-batch by micro-batch.
    rows = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(21)]
    lengths = [10] * 63
    for world, micro, g in ((1, 1, 4), (2, 1, 4), (2, 2, 8), (4, 1, 8)):
        for rank in range(world):
            s = make_sampler(rows, lengths, "rows", g, micro, world, rank, 3, max_length=64, packing=True)
            assert isinstance(s, StepSampler) and s.steps_per_epoch == -(-21 // g)
            for step in range(2 * s.steps_per_epoch):
                assert s.micro_batch_rows(step) == [[rows[r] for r in mb] for mb in s.micro_batches(step)]
    # the default unit (and SFT's method) is left out of the hashed config: runs made before
    # batch_unit and DPO keep their id
    base = TrainConfig(model="m")
    assert set(hashed_config(base, 1)) == \
        (set(TrainConfig.model_fields) - set(NOT_HASHED) - {"batch_unit", "method", "dpo"}) | {"seed"}
    ex = base.model_copy(update={"batch_unit": "examples"})
    assert hashed_config(ex, 1)["batch_unit"] == "examples" and hashed_config(ex, 1) != hashed_config(base, 1)
    assert TrainConfig.model_validate(base.model_dump()).batch_unit == "rows"


def test_config_and_data_checks():
    with pytest.raises(ValidationError, match="grad_accum"):
        TrainConfig(model="m", batch_unit="examples", grad_accum=2)
    # no divisibility rule in examples: the rows of a step vary anyway
    TrainConfig(model="m", batch_unit="examples", global_batch_size=7, micro_batch_size=2)
    cfg = TrainConfig(model="m", batch_unit="tokens", global_batch_size=10, max_length=64)
    with pytest.raises(UserError) as e:
        check_batch(cfg, [[0], [1]], [40, 50], 1)
    assert e.value.field == "train.global_batch_size" and "tokens" in e.value.message


# --------------------------------------------------------------------------- the loop, the plan, resume

def _run(tmp_path, name, model, data, **train):
    from ja_instruct.train.stage import train as stage_train

    recipe = load_recipe(write_recipe(tmp_path / f"{name}.yaml", model, data, tmp_path / name, **train))
    return recipe, stage_train


EXAMPLES = dict(batch_unit="examples", global_batch_size=6, max_length=128, epochs=2, max_steps=10)


def test_examples_unit_trains_the_planned_steps_with_the_loss_over_the_global_batch(
        tmp_path, tiny_model_dir, toy_dataset_dir):
    from ja_instruct.train import run_training
    from ja_instruct.train.plan import PlanOptions, format_plan, plan_run

    # micro batch 1: as many passes as the step has rows (it varies); micro batch 4: mostly one.
    # The loss is per supervised token of the whole step either way.
    one = load_recipe(write_recipe(tmp_path / "one.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "one",
                                   micro_batch_size=1, **EXAMPLES))
    four = load_recipe(write_recipe(tmp_path / "four.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "four",
                                    micro_batch_size=4, **EXAMPLES))
    plan = plan_run(one, PlanOptions(gpus=1))
    # 48 examples (none over 128 tokens), 6 per step: 8 steps per epoch of exactly 6 examples
    assert plan.steps_per_epoch == 8 and plan.steps == 10 and set(plan.per_step.examples) == {6}
    assert len(set(plan.per_step.micro_batches)) > 1  # the number of passes does vary
    table = format_plan(plan, one.train)
    assert "per step    6 examples (each step 6) = " in table and "from the rows of each step" in table
    a, b = read_metrics(run_training(one).parent / "metrics.jsonl"), \
        read_metrics(run_training(four).parent / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert read_manifest(tmp_path / "one" / "train", "train").details["steps"] == plan.steps
    for step in range(1, 11):
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-5)
        assert a[step]["supervised_tokens"] == b[step]["supervised_tokens"]
        # the tokens of each step are the plan's (the log's) exact figures
        assert a[step]["tokens"] - a.get(step - 1, {"tokens": 0})["tokens"] == plan.per_step.tokens[step - 1]


def test_examples_unit_resumes_exactly(tmp_path, tiny_model_dir, toy_dataset_dir, caplog):
    import logging

    from ja_instruct.train.identity import resolved_seed
    from ja_instruct.train.stage import train as stage_train

    def run(name, **extra):
        r = load_recipe(write_recipe(tmp_path / f"{name}.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / name,
                                     micro_batch_size=1, **EXAMPLES, **extra))
        return r, dict(dataset_dir=toy_dataset_dir, out=tmp_path / name / "train", seed=resolved_seed(r.train, 1))

    ref, kw = run("ref")
    stage_train(ref.train, **kw)

    class Stop(Exception):
        pass

    def stop_at(step: int) -> None:
        if step == 7:
            raise Stop

    res, kw = run("res", save_every=3)  # checkpoints at 3 and 6; stopped after step 7
    with pytest.raises(Stop):
        stage_train(res.train, on_step=stop_at, **kw)
    assert max(read_metrics(tmp_path / "res" / "train" / "metrics.jsonl")) == 7
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ja_instruct"):
        stage_train(res.train, **kw)  # resumes from step 6, mid-epoch 2
    assert "resumed from step_00000006" in caplog.text
    a = read_metrics(tmp_path / "ref" / "train" / "metrics.jsonl")
    b = read_metrics(tmp_path / "res" / "train" / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for step in range(1, 11):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6), step
        assert b[step]["tokens"] == a[step]["tokens"]


@pytest.mark.slow
def test_two_ranks_train_the_same_steps_as_one_process(tmp_path, tiny_model_dir, toy_dataset_dir):
    """Under torchrun with 2 ranks (FSDP2, gloo), steps whose rows are cut between examples and
    steps with an empty micro-batch (rows of one example cannot be shared out) give the losses of
    one process: the ranks stay in step and the loss is over the whole global batch."""
    import os
    import subprocess
    import sys

    from ja_instruct.train import run_training
    from ja_instruct.train.plan import PlanOptions, plan_run

    # max_length 110: most rows hold one example, some two; 6 examples per step on 2 ranks
    train = dict(batch_unit="examples", global_batch_size=6, micro_batch_size=1, max_length=110, max_steps=6)
    one = load_recipe(write_recipe(tmp_path / "one.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "one", **train))
    two = write_recipe(tmp_path / "two.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "two", **train)
    steps = plan_run(one, PlanOptions(gpus=2)).per_step
    assert any(steps.idle), "no step exercises an empty micro-batch"
    # a step cuts a row when its rows are fewer than 2 ranks x its micro-batches, and not all slots stay empty
    assert any(r < 2 * m and 2 * m - r > i for r, m, i in zip(steps.rows, steps.micro_batches, steps.idle)), \
        "no step cuts a row for 2 ranks"
    a = read_metrics(run_training(one).parent / "metrics.jsonl")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "ja_instruct.cli", "train", str(two)], env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    b = read_metrics(tmp_path / "two" / "train" / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in range(1, 7):
        assert b[step]["supervised_tokens"] == a[step]["supervised_tokens"]
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-5), step
