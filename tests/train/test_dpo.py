"""DPO in the training loop: config, pairs -> examples, the loss, a whole run, its identity and cache.

The equality with TRL's DPOTrainer is in test_dpo_trl.py; the SIGKILL resume under torchrun
in test_dpo_resume.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest_train import make_pairs, write_pairs, write_recipe
from ja_instruct.errors import UserError
from ja_instruct.train.config import DpoConfig, TrainConfig
from ja_instruct.train.dpo import expand_rows, pair_losses
from ja_instruct.train.dpo_data import last_answer_only, tokenize_pairs


def test_config_dpo_defaults_and_hash_of_sft_unchanged():
    sft = TrainConfig(model="m")
    assert "method" not in sft.model_dump() and "dpo" not in sft.model_dump()  # SFT identities stay as they were
    dpo = TrainConfig(model="m", method="dpo")
    assert dpo.dpo == DpoConfig() and dpo.model_dump()["method"] == "dpo"
    with pytest.raises(ValueError, match="method is sft"):
        TrainConfig(model="m", dpo={"beta": 0.5})
    with pytest.raises(ValueError, match="whole answers"):
        TrainConfig(model="m", method="dpo", overlong="truncate")
    with pytest.raises(ValueError):
        TrainConfig(model="m", method="dpo", dpo={"betta": 0.5})  # unknown keys are errors


def test_expand_rows_keeps_both_halves_of_a_pair_together():
    assert expand_rows([[0, 3], [1]], packing=True) == [[0, 1, 6, 7], [2, 3]]
    assert expand_rows([[0], [3]], packing=False) == [[0], [1], [6], [7]]


def test_last_answer_only():
    x = -100
    assert last_answer_only([x, 5, 6, x, x, 7, 8, x]) == [x, x, x, x, x, 7, 8, x]
    assert last_answer_only([x, x]) == [x, x]


def test_pair_losses_match_the_formulas():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.5, -2.0])
    nc, nr = torch.tensor([5.0, 2.0]), torch.tensor([4.0, 3.0])
    t = pair_losses(pc, pr, rc, rr, nc, nr, DpoConfig(beta=0.5))
    for k in range(2):
        m = (pc[k] - rc[k]) - (pr[k] - rr[k])
        assert t.loss[k].item() == pytest.approx(math.log1p(math.exp(-0.5 * m.item())), rel=1e-6)
    assert t.chosen_rewards.tolist() == pytest.approx([0.5, 0.5])
    assert t.rejected_rewards.tolist() == pytest.approx([-0.25, -0.5])
    ls = pair_losses(pc, pr, rc, rr, nc, nr, DpoConfig(beta=0.5, label_smoothing=0.2))
    m0 = 0.5 * ((pc[0] - rc[0]) - (pr[0] - rr[0])).item()
    want = -0.8 * math.log(1 / (1 + math.exp(-m0))) - 0.2 * math.log(1 / (1 + math.exp(m0)))
    assert ls.loss[0].item() == pytest.approx(want, rel=1e-6)
    ipo = pair_losses(pc, pr, rc, rr, nc, nr, DpoConfig(beta=0.5, loss="ipo"))
    m1 = ((pc[1] - rc[1]) / 2 - (pr[1] - rr[1]) / 3).item()
    assert ipo.loss[1].item() == pytest.approx((m1 - 1.0) ** 2, rel=1e-6)


def test_tokenize_pairs_labels_the_answer_only_and_drops_whole_pairs(tiny_tokenizer):
    from ja_instruct.pairs.records import PairRecord

    history = [{"role": "user", "content": "日本の首都は？"}, {"role": "assistant", "content": "東京です。"},
               {"role": "user", "content": "富士山は？"}]
    recs = [PairRecord("a", history, "富士山は日本で一番高い山です。", "知りません。"),
            PairRecord("b", [{"role": "user", "content": "こんにちは"}], "こんにちは。" * 40, "はい。")]
    ex, ids, stats = tokenize_pairs(recs, tiny_tokenizer, "plamo", max_length=160, packing=True)
    assert ids == ["a"] and stats["dropped_overlong"] == 1 and len(ex) == 2
    chosen = ex[0]
    trained = [t for t, lab in zip(chosen.input_ids, chosen.labels) if lab != -100]
    text = tiny_tokenizer.decode(trained)
    assert "富士山は日本で一番高い山です。" in text and "東京" not in text  # the earlier answer is context
    assert chosen.input_ids[: chosen.labels.index(next(x for x in chosen.labels if x != -100))] == \
        ex[1].input_ids[: ex[1].labels.index(next(x for x in ex[1].labels if x != -100))]  # same prompt


def _dpo_recipe(tmp: Path, model_dir: Path, pairs: Path, **train) -> Path:
    section = dict(method="dpo", dpo={"pairs": str(pairs), "beta": 0.1}, epochs=3, lr=1e-3)
    section.update(train)
    r = write_recipe(tmp / "recipe.yaml", model_dir, tmp / "unused", tmp / "out", **section)
    d = yaml.safe_load(r.read_text(encoding="utf-8"))
    d["train"].pop("dataset_dir")
    r.write_text(yaml.safe_dump(d, allow_unicode=True), encoding="utf-8")
    return r


def _train(recipe: Path, caplog) -> tuple[dict, str]:
    from ja_instruct.recipe import load_recipe
    from ja_instruct.train.stage import run_training

    caplog.clear()
    with caplog.at_level("INFO"):
        final = run_training(load_recipe(recipe))
    m = json.loads((final.parent / "manifest.json").read_text())
    return m, caplog.text


@pytest.mark.slow
def test_dpo_run_learns_the_preferences_and_reuses_what_it_can(tmp_path, tiny_model_dir, caplog):
    pairs = write_pairs(tmp_path / "pairs.jsonl", make_pairs(24, heldout=6))
    recipe = _dpo_recipe(tmp_path, tiny_model_dir, pairs)
    m, log = _train(recipe, caplog)
    dpo = m["details"]["dpo"]
    assert m["details"]["method"] == "dpo" and set(m["inputs"]) == {"pairs", "base_model"}
    assert dpo["pairs"]["train"] == 18 and dpo["pairs"]["heldout"] == 6
    first, last = dpo["eval"][0], dpo["eval"][-1]
    assert first["step"] == 0 and first["margin"] == 0 and first["loss"] == pytest.approx(math.log(2))
    assert last["step"] == m["details"]["steps"] and last["margin"] > 0.05 and last["accuracy"] > 0.5
    assert dpo["reference"]["reused"] is False and Path(dpo["reference"]["cache"]).parent == tmp_path / "pairs.jsonl.reference"
    lines = [json.loads(x) for x in (tmp_path / "out" / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if not x.get("eval")]
    assert len(steps) == m["details"]["steps"] and all("rewards/accuracies" in x for x in steps)
    card = (tmp_path / "out" / "train" / "final" / "README.md").read_text()
    assert "DPO preference tune" in card and "## Stages" in card and "Held-out preference accuracy" in card

    # Up to date: nothing is loaded or trained.
    _, log = _train(recipe, caplog)
    assert "up to date" in log and "reference" not in log

    # Another beta: a new run, but the reference log-probabilities are read back, not recomputed.
    d = yaml.safe_load(recipe.read_text())
    d["train"]["dpo"]["beta"] = 0.5
    recipe.write_text(yaml.safe_dump(d, allow_unicode=True))
    m2, log = _train(recipe, caplog)
    assert "dpo.beta" in log and "read from" in log and m2["details"]["dpo"]["reference"]["reused"] is True

    # When held-out pairs are measured, or how prompts sit in rows, cannot change the weights.
    d["train"]["dpo"].update(eval_every=2, share_prompt=False)
    recipe.write_text(yaml.safe_dump(d, allow_unicode=True))
    _, log = _train(recipe, caplog)
    assert "up to date" in log

    # Changed pairs: retrained, and the log says the pairs changed.
    write_pairs(pairs, make_pairs(24, seed=1, heldout=6))
    m3, log = _train(recipe, caplog)
    assert "input 'pairs' changed" in log and m3["inputs"]["pairs"] != m2["inputs"]["pairs"]
    assert m3["details"]["dpo"]["reference"]["reused"] is False


def test_lora_reference_is_the_adapter_free_model(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from ja_instruct.train.dpo import reference_context
    from ja_instruct.train.model import apply_lora

    cfg = TrainConfig(model=str(tiny_model_dir), method="dpo", lora={"enabled": True, "r": 4, "alpha": 8})
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # adapters that change the output
    ids = torch.tensor([tiny_tokenizer("日本の首都は東京です。")["input_ids"]])
    model.eval()
    with torch.no_grad():
        want = base(input_ids=ids).logits
        assert (model(input_ids=ids).logits - want).abs().max() > 1e-3
        with reference_context(model):
            got = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_missing_pairs_is_one_clear_error(tmp_path, tiny_model_dir):
    from ja_instruct.recipe import load_recipe
    from ja_instruct.train.stage import run_training

    recipe = _dpo_recipe(tmp_path, tiny_model_dir, tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="do not exist"):
        run_training(load_recipe(recipe))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "y"}\n', encoding="utf-8")
    recipe = _dpo_recipe(tmp_path, tiny_model_dir, bad)
    with pytest.raises(UserError) as e:
        run_training(load_recipe(recipe))
    assert e.value.line == 1 and e.value.field == "rejected"


@pytest.mark.slow
def test_two_ranks_give_the_losses_of_one_process(tmp_path, tiny_model_dir):
    """Under torchrun with 2 ranks (FSDP2, gloo) the DPO loss, rewards and held-out figures are
    those of one process: pairs are never split across ranks, the loss is the mean over the pairs
    of the whole global batch, and steps whose pairs are fewer than the micro-batches of the
    ranks (an empty micro-batch) keep the ranks in step."""
    import os
    import subprocess
    import sys

    from ja_instruct.recipe import load_recipe
    from ja_instruct.train.stage import run_training

    pairs = write_pairs(tmp_path / "pairs.jsonl", make_pairs(21, heldout=5))
    train = dict(batch_unit="examples", global_batch_size=3, micro_batch_size=1, max_length=128, epochs=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _dpo_recipe(tmp_path / "a", tiny_model_dir, pairs, **train)
    two = _dpo_recipe(tmp_path / "b", tiny_model_dir, pairs, **train)
    steps = json.loads((run_training(load_recipe(one)).parent / "manifest.json").read_text())["details"]["steps"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "ja_instruct.cli", "train", str(two)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    def lines(root: Path) -> tuple[dict, dict]:
        recs = [json.loads(x) for x in (root / "out" / "train" / "metrics.jsonl").read_text().splitlines()]
        return ({x["step"]: x for x in recs if not x.get("eval")}, {x["step"]: x for x in recs if x.get("eval")})

    (a, ea), (b, eb) = lines(tmp_path / "a"), lines(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1)) and sorted(ea) == sorted(eb) == [0, steps]
    for step in a:
        assert b[step]["pairs"] == a[step]["pairs"]
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"):
            assert b[step][key] == pytest.approx(a[step][key], abs=1e-5), (step, key)
    for step in ea:
        for key in ("eval/accuracy", "eval/margin", "eval/loss"):
            assert eb[step][key] == pytest.approx(ea[step][key], abs=1e-5), (step, key)


def _pair_examples(tok, n=6):
    from ja_instruct.pairs.records import record_from_json

    recs = [record_from_json(r, file=Path("x"), line=1, default_id=str(i)) for i, r in enumerate(make_pairs(n))]
    return recs


def test_shared_prompts_give_the_log_probs_and_steps_of_whole_sequences(tiny_model_dir, tiny_tokenizer):
    """`collate_shared` (prompt once, rejected masked from chosen) gives every answer the summed
    log-probability of its own sequence, and `dpo_step` the same loss, rewards and gradients."""
    import copy

    from transformers import AutoModelForCausalLM

    from ja_instruct.train.distributed import Dist
    from ja_instruct.train.dpo import all_logps, dpo_step, pair_batch
    from ja_instruct.train.isolation import attention_layout

    d = Dist()
    examples, ids, stats = tokenize_pairs(_pair_examples(tiny_tokenizer), tiny_tokenizer, "plamo", 512, True, share=True)
    shared = stats["shared"]
    assert all(s > 5 for s in shared)  # the plamo preamble and the question are shared
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    layout = attention_layout(model, True, torch.float32, "tiny")
    n = len(ids)
    rows = expand_rows([[0, 1, 2], [3, 4, 5]], True)
    alone, ntok = all_logps(model, examples, expand_rows([[p] for p in range(n)], False),
                            attention_layout(model, False, torch.float32, "tiny"), d, 0, 4)
    got, ntok_shared = all_logps(model, examples, rows, layout, d, 0, 1, shared=shared)
    assert torch.equal(ntok, ntok_shared)
    assert torch.allclose(got, alone, atol=1e-4, rtol=0)
    batch = pair_batch(examples, rows, layout, 0, shared)
    assert batch["input_ids"].ne(0).sum() < sum(len(e.input_ids) for e in examples)  # the prompt is there once

    class Keep:  # records the gradients; the weights stay put
        def __init__(self, m):
            self.m, self.grads = m, None

        def step(self):
            self.grads = {k: p.grad.clone() for k, p in self.m.named_parameters() if p.grad is not None}

        def zero_grad(self, set_to_none=True):
            self.m.zero_grad(set_to_none=True)

    policy = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    out = {}
    for name, sh in (("shared", shared), ("whole", None)):
        opt = Keep(policy)
        micro = [(pair_batch(examples, r, layout, 0, sh), r) for r in ([rows[0]], [rows[1]])]
        out[name] = (dpo_step(policy, opt, micro, examples, alone.float(), layout, d, DpoConfig(beta=0.5)), opt.grads)
    (a, ga), (b, gb) = out["shared"], out["whole"]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "grad_norm"):
        assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert all(torch.allclose(ga[k], gb[k], atol=1e-5) for k in gb)


def test_shared_prompt_check_refuses_a_layout_that_lets_answers_see_each_other(tiny_model_dir, tiny_tokenizer):
    from dataclasses import dataclass

    from transformers import AutoModelForCausalLM

    from ja_instruct.train.distributed import Dist
    from ja_instruct.train.dpo import check_shared_prompt
    from ja_instruct.train.isolation import AttentionLayout, attention_layout

    examples, _, stats = tokenize_pairs(_pair_examples(tiny_tokenizer), tiny_tokenizer, "plamo", 512, True, share=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    good = attention_layout(model, True, torch.float32, "tiny")
    kw = dict(name="tiny", pad_id=0, autocast=torch.autocast("cpu", enabled=False), d=Dist())
    assert check_shared_prompt(model, good, examples, stats["shared"], **kw) < 1e-4

    @dataclass(frozen=True)
    class Blind(AttentionLayout):  # a model that ignores the branch mask: the rejected answer sees the chosen one
        def model_inputs(self, batch, device):
            return super().model_inputs({k: v for k, v in batch.items() if k != "branch_ids"}, device)

    with pytest.raises(UserError, match="shared prompts are not safe"):
        check_shared_prompt(model, Blind("mask", "sdpa", torch.float32), examples, stats["shared"], **kw)
    with pytest.raises(UserError, match="needs a full-attention mask"):
        check_shared_prompt(model, AttentionLayout("varlen", "flash_attention_2", torch.float32), examples,
                            stats["shared"], **kw)
