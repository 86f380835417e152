"""Exact resume under torchrun: 2 ranks on gloo, SIGKILL after step 7, resume, same losses."""

from __future__ import annotations


import pytest
import torch

from conftest_train import read_metrics, torchrun_train, write_recipe
from ja_instruct.errors import UserError
from ja_instruct.recipe import load_recipe
from ja_instruct.train import find_trained_model
from tiny import build_tiny_llama as build_llama





@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_losses(tmp_path, tiny_tokenizer, toy_dataset_dir):
    # Dropout on, so the restored RNG state matters too; tied embeddings, so the FSDP export of a
    # shared weight is exercised.
    model = build_llama(tmp_path / "model", tiny_tokenizer, attention_dropout=0.1, tie_word_embeddings=True)
    # 30 rows / global batch 4 -> 8 steps per epoch; 12 steps cross the epoch boundary.
    # Checkpoints at 3, 6, 9, 12; the kill after step 7 resumes from step 6 (mid-epoch).
    train = dict(epochs=2, max_steps=12, save_every=3, keep_last=2)
    ref = write_recipe(tmp_path / "ref.yaml", model, toy_dataset_dir, tmp_path / "ref", **train)
    res = write_recipe(tmp_path / "res.yaml", model, toy_dataset_dir, tmp_path / "res", **train)

    r = torchrun_train(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun_train(res, {"JA_INSTRUCT_TRAIN_FAIL_AT_STEP": "7"})
    assert r.returncode != 0  # killed
    (ckpts,) = (tmp_path / "res" / "train" / "checkpoints").iterdir()  # one run
    assert (ckpts / "latest").read_text().strip() == "step_00000006"
    assert not (tmp_path / "res" / "train" / "final").exists()
    assert not (tmp_path / "res" / "train" / "manifest.json").exists()
    with pytest.raises(UserError, match="no complete trained model"):
        find_trained_model(load_recipe(res))
    killed = read_metrics(tmp_path / "res" / "train" / "metrics.jsonl")
    assert max(killed) == 7
    r = torchrun_train(res)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step_00000006" in r.stderr
    assert find_trained_model(load_recipe(res))[0] == tmp_path / "res" / "train" / "final"

    a = read_metrics(tmp_path / "ref" / "train" / "metrics.jsonl")
    b = read_metrics(tmp_path / "res" / "train" / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in range(1, 13):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6), step
        assert b[step]["supervised_tokens"] == a[step]["supervised_tokens"]
        assert b[step]["lr"] == pytest.approx(a[step]["lr"], rel=1e-9)
    # keep_last=2: only the last two checkpoints remain; the final model was exported
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000009", "step_00000012"]
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "res" / "train" / "final")
    ref_m = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / "train" / "final")
    for (name, p), q in zip(m.named_parameters(), ref_m.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
