"""``ja-instruct train RECIPE --plan``: the arithmetic against a case computed by hand, and the
plan of a tiny recipe against what training really does."""

from __future__ import annotations

import json
import math

import pytest

from conftest_train import make_conversations, write_recipe
from ja_instruct.cli import main
from ja_instruct.data.tokenize import tokenize_conversation
from ja_instruct.errors import UserError
from ja_instruct.manifest import read_manifest
from ja_instruct.recipe import load_recipe
from ja_instruct.train import budget
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.packing import pack_best_fit
from ja_instruct.train.plan import PlanOptions, assumed_lengths, count_parameters, model_shape, plan_run

GIB = 1024 ** 3

# The hand-computed model: vocab V=100, hidden h=8, MLP I=16, L=2 layers, 2 heads of 4 (q=8),
# 1 key/value head (k=4), untied head.
TINY = dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64)
# embedding V*h = 800; a layer: q 8*8=64, k 8*4=32, v 32, o 64, gate 8*16=128, up 128, down 128,
# two RMSNorms 2*8=16 -> 592; final norm 8; head 800.
EMB, LAYER, FINAL_NORM, HEAD = 800, 592, 8, 800


def _tiny(**over):
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY, "tie_word_embeddings": False, **over})


def test_parameters_by_unit_tied_or_not_and_lora():
    cfg = TrainConfig(model="m")
    p = count_parameters(_tiny(), cfg)
    assert (p.embedding, p.layers, p.lm_head, p.tied) == (EMB, [LAYER, LAYER], HEAD, False)
    assert p.total == p.trainable == EMB + 2 * LAYER + FINAL_NORM + HEAD == 2792
    assert p.root == EMB + FINAL_NORM + HEAD

    tied = count_parameters(_tiny(tie_word_embeddings=True), cfg)
    assert (tied.total, tied.lm_head, tied.tied) == (EMB + 2 * LAYER + FINAL_NORM, 0, True)

    # LoRA r=2 on every linear of a layer adds r*(in+out) each: q 2*(8+8)=32, k 2*(8+4)=24, v 24,
    # o 32, gate 2*(8+16)=48, up 48, down 2*(16+8)=48 -> 256 per layer; only those train.
    lora = count_parameters(_tiny(), TrainConfig(model="m", lora={"enabled": True, "r": 2}))
    assert lora.trainable == 2 * 256 and lora.total == 2792 + 512
    assert lora.trainable_layers == [256, 256] and lora.layers == [LAYER + 256] * 2


def test_memory_per_gpu_by_part_matches_the_hand_computation():
    p = count_parameters(_tiny(), TrainConfig(model="m"))
    shape = model_shape(_tiny())
    assert (shape.hidden, shape.q_width, shape.kv_width, shape.intermediate) == (8, 8, 4, 16)
    cfg = TrainConfig(model="m", dtype="bf16", micro_batch_size=1, global_batch_size=2, packing=True)
    mem = {k: v for k, (_, v) in budget.memory_per_gpu(p, shape, cfg, gpus=2, seq=10).items()}
    # 2 GPUs, bf16 (2 bytes), one row of 10 tokens, sdpa (a dense mask), no checkpointing.
    assert mem["weights"] == 4 * 2792 / 2 == 5584
    assert mem["gradients"] == 5584
    assert mem["optimiser state"] == 8 * 2792 / 2 == 11168
    # a layer keeps 2 bytes x 10 tokens x (4h + 2q + 2k + 4I = 32 + 16 + 8 + 64 = 120) = 2400
    assert mem["activations"] == 2 * 2400
    # final norm 2 x 2 x 10 x 8 = 320; logits 10 x 100 x (2 + 12) = 14000
    assert mem["logits and loss"] == 320 + 14000
    # two layers gathered in bf16 2*592*2 = 2368; the largest layer's bf16 gradient and fp32 copy
    # 592*(2+4) = 3552; the root unit (800 + 8 + 800 = 1608) gathered with its gradient (1608+1608)*2
    # = 6432; the 4-D mask 10*10 = 100
    assert mem["buffers"] == 2368 + 3552 + 6432 + 100
    assert mem["runtime"] == 2 * GIB
    # Checkpointing keeps each layer's input (2 x 10 x 8 = 160 per layer) plus one recomputed layer.
    ckpt = budget.memory_per_gpu(p, shape, cfg, gpus=2, seq=10, checkpointing=True)
    assert ckpt["activations"][1] == 2 * 160 + 2400
    # flash attention takes boundaries, not a mask; fp32 doubles every activation byte
    flash = budget.memory_per_gpu(p, shape, cfg.model_copy(update={"attn_implementation": "flash_attention_2"}),
                                  gpus=2, seq=10)
    assert flash["buffers"][1] == 2368 + 3552 + 6432
    fp32 = budget.memory_per_gpu(p, shape, cfg.model_copy(update={"dtype": "fp32"}), gpus=2, seq=10)
    assert fp32["activations"][1] == 2 * 4 * 10 * 120


def test_flops_and_wall_time_match_the_hand_computation():
    p = count_parameters(_tiny(), TrainConfig(model="m"))
    assert budget.flops_per_token(p, checkpointing=False)[0] == 6 * 2792
    assert budget.flops_per_token(p, checkpointing=True)[0] == 8 * 2792  # + one recomputed forward
    # 13e9 parameters x 1e9 tokens x 6 = 7.8e19 FLOPs on 8 GPUs x 312 TFLOP/s x 0.4 = 9.984e14 FLOP/s
    assert budget.wall_seconds(6 * 13e9 * 1e9, 8, 312, 0.4) == pytest.approx(78125.0)


def test_assumed_lengths_have_the_stated_mean_and_follow_the_overlong_policy():
    lengths, dropped, cut = assumed_lengths(4000, 300, 10_000, "drop")
    assert (len(lengths), dropped, cut) == (4000, 0, 0)
    assert sum(lengths) / len(lengths) == pytest.approx(300, rel=0.02)
    kept, dropped, _ = assumed_lengths(4000, 300, 400, "drop")
    assert dropped == sum(x > 400 for x in lengths) > 0 and len(kept) == 4000 - dropped
    cut_lengths, _, cut = assumed_lengths(4000, 300, 400, "truncate")
    assert cut == dropped and max(cut_lengths) == 400 and len(cut_lengths) == 4000


@pytest.fixture(scope="module")
def toy_lengths(tiny_tokenizer) -> list[int]:
    return [len(tokenize_conversation(tiny_tokenizer, "plamo", r["messages"], None)["input_ids"])
            for r in make_conversations(48)]


def test_plan_of_a_tiny_recipe_reads_the_dataset_and_its_steps_are_the_real_ones(
        tmp_path, tiny_model_dir, toy_dataset_dir, toy_lengths):
    limit = 96
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "run", max_length=limit)
    recipe = load_recipe(path)
    plan = plan_run(recipe, PlanOptions(gpus=2))
    kept = [n for n in toy_lengths if n <= limit]
    assert sorted(plan.data.lengths) == sorted(kept) and plan.data.dropped == len(toy_lengths) - len(kept)
    rows = pack_best_fit(kept, limit)
    assert plan.steps_per_epoch == plan.steps == math.ceil(len(rows) / 4)
    assert plan.grad_accum == 1  # 4 rows = micro batch 2 x 2 GPUs
    assert plan.data.source.startswith("read from")
    # Training the same recipe takes exactly the planned number of steps.
    from ja_instruct.train import run_training

    final = run_training(recipe)
    assert read_manifest(final.parent, "train").details["steps"] == plan.steps


def test_cli_prints_the_table_and_says_whether_it_fits(tmp_path, tiny_model_dir, toy_dataset_dir, capsys):
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "run", max_length=96,
                        dtype="bf16")
    assert main(["train", str(path), "--plan", "--gpus", "2", "--gpu-mem", "80"]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "gradients", "optimiser state", "activations", "logits and loss", "buffers"):
        assert f"\n  {part} " in out
    assert "fits in 80 GiB" in out and "per step    4 rows = " in out and "nothing is trained" in out
    assert not (tmp_path / "run" / "train").exists()  # nothing was trained
    # 0.001 GiB is less than the runtime alone: the plan says so, and what to change, and still exits 0
    assert main(["train", str(path), "--plan", "--gpus", "2", "--gpu-mem", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "does not fit in 0.001 GiB" in out and "turn on activation_checkpointing" in out
    assert main(["train", str(path), "--plan", "--mfu", "1.5"]) == 2
    assert "--mfu" in capsys.readouterr().err


def test_unloadable_model_config_asks_for_model_config_and_it_then_plans(tmp_path, toy_dataset_dir, capsys):
    path = write_recipe(tmp_path / "r.yaml", "no-such-org/no-such-model", toy_dataset_dir, tmp_path / "run",
                        max_length=64, global_batch_size=8)
    assert main(["train", str(path), "--plan", "--gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the config of model 'no-such-org/no-such-model'" in err and "--model-config" in err
    arch = json.dumps({"model_type": "llama", **TINY})
    assert main(["train", str(path), "--plan", "--gpus", "2", "--model-config", arch]) == 0
    out = capsys.readouterr().out
    # the dataset is built but its tokenizer cannot load: its examples, with assumed lengths
    assert "2.79 K parameters" in out and "ASSUMED" in out and "48 examples of 300 tokens" in out
    (tmp_path / "plamo.json").write_text(json.dumps({"model_type": "plamo", "hidden_size": 8}))
    assert main(["train", str(path), "--plan", "--gpus", "2", "--model-config", str(tmp_path / "plamo.json")]) == 2
    assert "model_type 'plamo'" in capsys.readouterr().err


def test_unbuilt_dataset_is_estimated_from_the_stated_assumption(tmp_path, tiny_model_dir):
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "nowhere", tmp_path / "run",
                        max_length=512, micro_batch_size=1, global_batch_size=8)
    plan = plan_run(load_recipe(path), PlanOptions(gpus=2, examples=1000, mean_tokens=100))
    assert plan.data.source.startswith("ASSUMED") and "1,000 examples of 100 tokens" in plan.data.source
    assert len(plan.data.lengths) + plan.data.dropped == 1000 and plan.data.dropped > 0  # the tail over 512
    assert sum(plan.data.row_tokens) == sum(plan.data.lengths) and max(plan.data.row_tokens) <= 512
    assert plan.steps == math.ceil(len(plan.data.row_tokens) / 8)
    assert plan.tokens == pytest.approx(plan.steps * 8 * sum(plan.data.lengths) / len(plan.data.row_tokens))
    with pytest.raises(UserError, match="not a multiple"):
        plan_run(load_recipe(path), PlanOptions(gpus=3, examples=10, mean_tokens=10))
