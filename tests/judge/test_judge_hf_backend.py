"""The hf judge: logprob-weighted score on the tiny local Llama (never unparseable)."""

from __future__ import annotations

import asyncio

import pytest

from ja_instruct.judge.backends import HFBackend, JudgeRequest
from ja_instruct.judge.config import JudgeBackendConfig
from ja_instruct.judge.prompt import PromptSet, build_context


@pytest.mark.slow
def test_hf_logprob_score_and_verdict(tiny_model_dir):
    backend = HFBackend(JudgeBackendConfig(backend="hf", model=str(tiny_model_dir), device="cpu"))
    ps = PromptSet()
    single = ps.get("single", False, False)
    req = JudgeRequest("k", single.system, single.render(build_context(["日本の首都は？"], ["東京です。"])), single,
                       ["東京です。"])
    reply = asyncio.run(backend.judge(req))
    assert 1.0 <= reply.score <= 10.0
    assert abs(sum(reply.extra["dist"].values()) - 1.0) < 1e-3 and set(reply.extra["dist"]) == {str(i) for i in range(1, 11)}
    assert reply.text.startswith("評価：[[")
    # the expected value is what the distribution says
    assert reply.score == pytest.approx(sum(int(k) * v for k, v in reply.extra["dist"].items()), abs=0.01)
    pair = ps.get("pairwise", False, False)
    req = JudgeRequest("k2", pair.system, pair.render(build_context(["Q"], ["a"], ["b"])), pair, ["a", "b"])
    reply = asyncio.run(backend.judge(req))
    assert reply.verdict in ("A", "B", "tie") and set(reply.extra["dist"]) == {"A", "B", "C"}


@pytest.mark.slow
def test_hf_backend_in_a_run(make_recipe, tiny_model_dir, tmp_path):
    from ja_instruct.io import read_jsonl
    from ja_instruct.judge.run import run_judging

    recipe = make_recipe(models=["model-a"], backend={"backend": "hf", "model": str(tiny_model_dir), "device": "cpu"})
    out = run_judging(recipe, tmp_path / "j", progress=False)
    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == 6 and all(r["status"] == "ok" and 1 <= r["score"] <= 10 for r in recs)


@pytest.mark.slow
def test_cached_prefix_logprobs_equal_full_sequences(tiny_model_dir):
    import torch

    backend = HFBackend(JudgeBackendConfig(backend="hf", model=str(tiny_model_dir), device="cpu"))
    backend._load()
    tok = backend.tokenizer
    prompt = tok("日本の首都はどこですか？ 評価：[[", add_special_tokens=True)["input_ids"]
    conts = [tok(f"{s}]]", add_special_tokens=False)["input_ids"] for s in (1, 7, 10)]  # 10 may be 2 tokens
    fast = backend.continuation_logprobs(prompt, conts)
    with torch.no_grad():
        for c, got in zip(conts, fast):
            lp = torch.log_softmax(backend.model(input_ids=torch.tensor([prompt + c])).logits[0].float(), -1)
            want = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(c))
            assert got == pytest.approx(want, abs=1e-4)
