"""What identifies a training run, cheaply: hashed config, data and base-model fingerprints."""

from __future__ import annotations

import shutil

import pytest

from ja_instruct.errors import UserError
from ja_instruct.io import write_json
from ja_instruct.manifest import make_manifest, write_manifest
from ja_instruct.recipe import Recipe
from ja_instruct.train import find_trained_model, hashed_config
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.identity import base_model_fingerprint, data_fingerprint, run_id


def test_hashed_config_ignores_logging_and_memory_keys_but_not_the_math():
    base = TrainConfig(model="m", lr=1e-4)
    same = base.model_copy(update={"save_every": 7, "keep_last": 9, "log_every": 3, "tensorboard": False,
                                   "activation_checkpointing": True, "dataset_dir": "elsewhere",
                                   "micro_batch_size": 1, "grad_accum": 8})
    assert hashed_config(same, 1) == hashed_config(base, 1)
    assert hashed_config(base.model_copy(update={"lr": 2e-4}), 1) != hashed_config(base, 1)
    # the global batch is the math; its split into micro-batches is not
    assert hashed_config(base.model_copy(update={"global_batch_size": 16}), 1) != hashed_config(base, 1)
    assert hashed_config(base, 2) != hashed_config(base, 1)  # the resolved seed is part of it
    assert hashed_config(base, 1)["seed"] == 1
    # export-only keys change the manifest's config but not the run (the weights being trained)
    gen = base.model_copy(update={"save_dtype": "bf16"})
    inputs = {"data": "d", "base_model": "b"}
    assert hashed_config(gen, 1) != hashed_config(base, 1)
    assert run_id(hashed_config(gen, 1), inputs) == run_id(hashed_config(base, 1), inputs)
    assert run_id(hashed_config(base, 1), {**inputs, "data": "d2"}) != run_id(hashed_config(base, 1), inputs)


def test_data_fingerprint_prefers_the_data_manifest_then_stats_then_content(tmp_path, toy_dataset_dir):
    d = tmp_path / "data"
    shutil.copytree(toy_dataset_dir, d)
    by_content = data_fingerprint(d)
    (d / "dataset" / "extra.txt").write_text("x")  # the saved dataset's content changed
    assert data_fingerprint(d) != by_content
    write_json(d / "stats.json", {"fingerprint": "abc"})
    assert data_fingerprint(d) == "abc"
    m = make_manifest("data", {"k": 1}, {"src": "f"})
    write_manifest(d, m)
    assert data_fingerprint(d) == m.fingerprint
    with pytest.raises(UserError, match="does not exist"):
        data_fingerprint(tmp_path / "nowhere")


def test_base_model_fingerprint_local_dir_and_cached_hub_commit(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    local = tmp_path / "m"
    local.mkdir()
    (local / "config.json").write_text("{}")
    fp = base_model_fingerprint(str(local), str(local))
    (local / "config.json").write_text('{"hidden_size": 8}')
    assert base_model_fingerprint(str(local), str(local)) != fp
    # a hub id: the commit its cache resolves "main" to
    cache = tmp_path / "hub"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    uncached = base_model_fingerprint("own/model", "own/model")
    repo = cache / "models--own--model"

    def cache_commit(sha):
        (repo / "snapshots" / sha).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(sha)

    cache_commit("a" * 40)
    first = base_model_fingerprint("own/model", "own/model")
    cache_commit("b" * 40)
    second = base_model_fingerprint("own/model", "own/model")
    assert len({uncached, first, second}) == 3


def test_find_trained_model_without_a_train_manifest_says_to_train(tmp_path):
    recipe = Recipe(name="r", out_dir=tmp_path, train=TrainConfig(model="m"))
    (tmp_path / "train" / "final").mkdir(parents=True)
    (tmp_path / "train" / "final" / "config.json").write_text("{}")  # an old final without a manifest
    with pytest.raises(UserError) as e:
        find_trained_model(recipe)
    assert e.value.field == "generate.models" and "ja-instruct train" in e.value.hint
