"""In-process training runs: export round-trip, loss normalisation, LoRA, skip when complete."""

from __future__ import annotations

import json

import pytest
import torch

from conftest_train import read_metrics, write_recipe
from tiny import build_tiny_llama as build_llama
from ja_instruct.recipe import load_recipe
from ja_instruct.train import run_training


def _train(tmp_path, name, model, data, **train):
    recipe = load_recipe(write_recipe(tmp_path / f"{name}.yaml", model, data, tmp_path / name, **train))
    return recipe, run_training(recipe)


def test_export_round_trip_loads_generates_and_carries_the_template(tmp_path, tiny_tokenizer, toy_dataset_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ja_instruct.data.templates import get_template

    model_dir = build_llama(tmp_path / "model", tiny_tokenizer, tie_word_embeddings=True)
    recipe, final = _train(tmp_path, "run", model_dir, toy_dataset_dir, max_steps=3, tensorboard=True,
                           save_every=2)
    out = final.parent
    assert final == tmp_path / "run" / "train" / "final"
    m = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.equal(m.model.embed_tokens.weight, base.model.embed_tokens.weight)  # trained
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # still tied
    tok = AutoTokenizer.from_pretrained(final)
    msgs = [{"role": "user", "content": "日本の首都はどこですか？"}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt == get_template("plamo", tok).render(msgs, add_generation_prompt=True)
    full = msgs + [{"role": "assistant", "content": "東京です。"}]
    assert tok.apply_chat_template(full, tokenize=False) == get_template("plamo", tok).render(full)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    gen = m.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5 or gen[0, -1] == tok.eos_token_id
    gc = GenerationConfig.from_pretrained(final)
    assert (gc.do_sample, gc.temperature, gc.top_p, gc.top_k) == (True, 1.0, 0.95, 50)
    card = (final / "README.md").read_text()
    assert "CC-BY-NC-4.0" in card and "CC-BY-4.0" in card and "learning rate" in card
    # metrics, TensorBoard, checkpoints
    rec = read_metrics(out / "metrics.jsonl")
    assert sorted(rec) == [1, 2, 3]
    assert set(rec[3]) >= {"step", "epoch", "loss", "lr", "tokens", "supervised_tokens", "tokens_per_s",
                           "grad_norm"}
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    (run_dir,) = (out / "checkpoints").iterdir()
    assert (run_dir / "latest").read_text().strip() == "step_00000003"
    # Running again with the same config is a no-op (the complete final is reused).
    before = (out / "metrics.jsonl").read_text()
    assert run_training(recipe) == final
    assert (out / "metrics.jsonl").read_text() == before


def test_loss_is_per_supervised_token_of_the_global_batch(tmp_path, tiny_model_dir, toy_dataset_dir):
    # Same global batch of 4 rows as 4 micro-batches of 1 or 1 micro-batch of 4: same losses and
    # updates. A per-micro-batch mean would weigh the micro-batches equally and differ.
    # (Activation checkpointing on one side: recomputation must not change the result.)
    _, a = _train(tmp_path, "accum", tiny_model_dir, toy_dataset_dir, max_steps=3, micro_batch_size=1,
                  grad_accum=4, activation_checkpointing=True)
    _, b = _train(tmp_path, "micro", tiny_model_dir, toy_dataset_dir, max_steps=3, micro_batch_size=4)
    ma, mb = read_metrics(a.parent / "metrics.jsonl"), read_metrics(b.parent / "metrics.jsonl")
    for step in (1, 2, 3):
        assert ma[step]["supervised_tokens"] == mb[step]["supervised_tokens"]
        assert ma[step]["loss"] == pytest.approx(mb[step]["loss"], abs=1e-5)
        assert ma[step]["grad_norm"] == pytest.approx(mb[step]["grad_norm"], rel=1e-4)
    assert ma[3]["loss"] != ma[1]["loss"]


@pytest.mark.parametrize("export", ["merged", "adapter"])
def test_lora_exports_load_and_generate(tmp_path, tiny_model_dir, toy_dataset_dir, export):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "export": export}
    _, final = _train(tmp_path, "lora", tiny_model_dir, toy_dataset_dir, max_steps=2, lr=1e-2, lora=lora)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q0 = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    if export == "merged":
        assert not (final / "adapter_config.json").exists()
        m = AutoModelForCausalLM.from_pretrained(final)
        assert not torch.allclose(m.model.layers[0].self_attn.q_proj.weight, q0)  # adapter folded in
        assert torch.equal(m.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    else:
        cfg = json.loads((final / "adapter_config.json").read_text())
        assert cfg["r"] == 4 and sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
        m = PeftModel.from_pretrained(base, final)
        b = m.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
        assert b.abs().sum() > 0  # trained (LoRA B starts at zero)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok("### 指示:\n日本", return_tensors="pt", add_special_tokens=False)
    assert m.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] >= ids["input_ids"].shape[1] + 1
