"""Exact DPO resume under torchrun: 2 ranks on gloo, SIGKILL after step 7, resume; every step's
loss and rewards, every held-out evaluation and the final weights equal an uninterrupted run's,
and the resumed run reads the reference log-probabilities its killed attempt cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest_train import make_pairs, torchrun_train, write_pairs, write_recipe
from tiny import build_tiny_llama as build_llama

STEP_KEYS = ("loss", "lr", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins",
             "rewards/accuracies", "logps/chosen", "logps/rejected", "pairs", "tokens", "supervised_tokens")




def _dpo_recipe(path: Path, model: Path, pairs: Path, out: Path, **train) -> Path:
    write_recipe(path, model, Path("unused"), out, method="dpo", **train,
                 dpo={"pairs": str(pairs), "beta": 0.1, "sft_weight": 0.1, "eval_every": 4})
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["train"].pop("dataset_dir")  # DPO reads train.dpo.pairs
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _lines(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """metrics.jsonl as ({step: training line}, {step: held-out evaluation line})."""
    recs = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    return ({r["step"]: r for r in recs if not r.get("eval")}, {r["step"]: r for r in recs if r.get("eval")})


@pytest.mark.slow
def test_sigkill_mid_dpo_resumes_with_identical_losses(tmp_path, tiny_tokenizer):
    # Dropout on, so the restored RNG state matters too.
    model = build_llama(tmp_path / "model", tiny_tokenizer, attention_dropout=0.1)
    # Each run reads its own copy of the same pairs, so each caches its own reference: the
    # resumed run can only reuse what its killed attempt wrote.
    rows = make_pairs(40, seed=3, heldout=6)
    pairs = {}
    for name in ("ref_pairs", "res_pairs"):
        (tmp_path / name).mkdir()
        pairs[name] = write_pairs(tmp_path / name / "pairs.jsonl", rows)
    # Packed pairs, 4 rows of pairs per step, 2 micro-batches per rank; checkpoints at 3, 6, 9, 10.
    # The kill after step 7 resumes from step 6.
    train = dict(epochs=2, max_steps=10, save_every=3, keep_last=2, lr=5e-3, micro_batch_size=1, global_batch_size=4)
    ref = _dpo_recipe(tmp_path / "ref.yaml", model, pairs["ref_pairs"], tmp_path / "ref", **train)
    res = _dpo_recipe(tmp_path / "res.yaml", model, pairs["res_pairs"], tmp_path / "res", **train)

    r = torchrun_train(ref)
    assert r.returncode == 0, r.stderr[-6000:]
    r = torchrun_train(res, {"JA_INSTRUCT_TRAIN_FAIL_AT_STEP": "7"})
    assert r.returncode != 0  # killed
    assert "reference log-probabilities of 34 pairs (+6 held out) computed and cached" in r.stderr
    (ckpts,) = (tmp_path / "res" / "train" / "checkpoints").iterdir()
    assert (ckpts / "latest").read_text().strip() == "step_00000006"
    assert not (tmp_path / "res" / "train" / "manifest.json").exists()
    killed, _ = _lines(tmp_path / "res" / "train" / "metrics.jsonl")
    assert max(killed) == 7
    cached = list((tmp_path / "res_pairs" / "pairs.jsonl.reference").glob("*.json"))
    assert len(cached) == 1

    r = torchrun_train(res)
    assert r.returncode == 0, r.stderr[-6000:]
    assert "resumed from step_00000006" in r.stderr
    assert f"reference log-probabilities read from {cached[0]}" in r.stderr
    assert "computed and cached" not in r.stderr
    details = json.loads((tmp_path / "res" / "train" / "manifest.json").read_text())["details"]
    assert details["method"] == "dpo"
    assert details["dpo"]["reference"] == {"cache": str(cached[0]), "reused": True}
    ref_details = json.loads((tmp_path / "ref" / "train" / "manifest.json").read_text())["details"]
    assert ref_details["dpo"]["reference"]["reused"] is False

    a, a_eval = _lines(tmp_path / "ref" / "train" / "metrics.jsonl")
    b, b_eval = _lines(tmp_path / "res" / "train" / "metrics.jsonl")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    # Not a trivial run: the policy moves away from the reference and prefers the chosen answers.
    assert a[1]["rewards/margins"] != 0 and a[10]["rewards/margins"] > a[1]["rewards/margins"]
    # Exactly equal: the same weights, optimiser state, RNG and data order after the resume, the
    # reference log-probabilities read back bit for bit (float64 through JSON), gloo's
    # 2-rank sums in a fixed order.
    for step in range(1, 11):
        for key in STEP_KEYS:
            assert b[step][key] == a[step][key], (step, key, b[step][key], a[step][key])
    assert sorted(a_eval) == sorted(b_eval) == [0, 4, 8, 10]
    for step in a_eval:
        for key in ("eval/accuracy", "eval/margin", "eval/loss", "eval/pairs"):
            assert b_eval[step][key] == a_eval[step][key], (step, key)
    assert details["dpo"]["eval"] == ref_details["dpo"]["eval"]
    assert details["dpo"]["train_last"] == ref_details["dpo"]["train_last"]

    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "res" / "train" / "final")
    ref_m = AutoModelForCausalLM.from_pretrained(tmp_path / "ref" / "train" / "final")
    moved = 0.0
    base = AutoModelForCausalLM.from_pretrained(model)
    for (name, p), q, p0 in zip(m.named_parameters(), ref_m.parameters(), base.parameters()):
        assert torch.equal(p, q), name
        moved = max(moved, (p - p0).abs().max().item())
    assert moved > 1e-3  # the weights did train
