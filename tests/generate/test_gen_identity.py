"""Answers are a function of their inputs: kept when current, regenerated with a reason otherwise."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from ja_instruct.errors import UserError
from ja_instruct.generate import backends
from ja_instruct.generate.backends import FakeBackend, HFBackend
from ja_instruct.generate.run import run_generation
from ja_instruct.io import read_jsonl_store
from ja_instruct.manifest import read_manifest
from ja_instruct.recipe import load_recipe

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["ハワイ旅行のブログ記事を書いてください。", "全ての文をAで始めてください。"]},
    {"question_id": 2, "category": "math", "turns": ["三角形の面積を求めてください。"]},
    {"question_id": 3, "category": "地理", "turns": ["日本で一番高い山は？"]},
]
TWO_FAKES = "[{id: fake-a, backend: fake}, {id: fake-b, backend: fake}]"


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_recipe(tmp_path):
    qpath = tmp_path / "questions.jsonl"

    def make(models=TWO_FAKES, questions=QUESTIONS, overrides=(), **generate):
        qpath.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
        section = {"questions": str(qpath), "max_new_tokens": 200, "mt_bench_temperatures": True, **generate}
        body = "".join(f"  {k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in section.items())
        path = tmp_path / "recipe.yaml"
        path.write_text(f"name: t\nout_dir: {tmp_path / 'run'}\ngenerate:\n{body}  models: {models}\n",
                        encoding="utf-8")
        return load_recipe(path, list(overrides))
    return make


@pytest.fixture
def built(monkeypatch):
    """Count backend constructions (a model load, for real backends)."""
    made: list[str] = []

    class CountingFake(FakeBackend):
        def __init__(self, spec, path):
            made.append(spec.id)
            super().__init__(spec, path)

    class CountingHF(HFBackend):
        def __init__(self, spec, path):
            made.append(spec.id)
            super().__init__(spec, path)

    monkeypatch.setitem(backends.BACKENDS, "fake", CountingFake)
    monkeypatch.setitem(backends.BACKENDS, "hf", CountingHF)
    return made


def mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def model_lines(caplog, model_id):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{model_id}: ")
            and "turns; empty" not in r.getMessage()]


def test_changed_setting_regenerates_every_answer_and_says_why(make_recipe, built, caplog):
    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    out = run_generation(make_recipe())
    first = {m: read_jsonl_store(out / f"{m}.jsonl") for m in ("fake-a", "fake-b")}
    assert all(r["generation"]["max_new_tokens"] == 200 for rs in first.values() for r in rs)
    assert read_manifest(out, "generate") is not None and built == ["fake-a", "fake-b"]

    caplog.clear()
    out = run_generation(make_recipe(overrides=["generate.max_new_tokens=5"]))
    for m in ("fake-a", "fake-b"):
        recs = read_jsonl_store(out / f"{m}.jsonl")
        assert sorted(r["question_id"] for r in recs) == [1, 2, 3]  # each once: the stale ones left the file
        assert all(r["generation"]["max_new_tokens"] == 5 for r in recs)
        assert all(len(t) <= 5 for r in recs for t in r["choices"][0]["turns"])
        assert {r["answer_id"] for r in recs}.isdisjoint(r["answer_id"] for r in first[m])
        assert model_lines(caplog, m) == [f"{m}: 3 regenerated: generation settings changed "
                                          "(max_new_tokens 200 -> 5)"]
    m = read_manifest(out, "generate")
    assert m.config["max_new_tokens"] == 5 and set(m.inputs) == {"model:fake-a", "model:fake-b", "questions"}

    # No change: no backend built, no file written, one line.
    built.clear()
    caplog.clear()
    before = mtimes(out)
    run_generation(make_recipe(overrides=["generate.max_new_tokens=5"]))
    assert built == [] and mtimes(out) == before
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("generate: up to date")]


def test_a_setting_that_changes_no_answer_keeps_them_all(make_recipe, built, caplog):
    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    out = run_generation(make_recipe())
    before = read_jsonl_store(out / "fake-a.jsonl")
    built.clear()
    # batch size is a performance knob: the stage's config changed, no answer did
    run_generation(make_recipe(models="[{id: fake-a, backend: fake, batch_size: 1}, {id: fake-b, backend: fake}]"))
    assert built == [] and read_jsonl_store(out / "fake-a.jsonl") == before
    assert model_lines(caplog, "fake-a")[-1] == "fake-a: 3 up to date"
    assert read_manifest(out, "generate").config["models"][0]["batch_size"] == 1


def test_changed_model_dir_regenerates_only_that_model(make_recipe, tiny_model_dir, tmp_path, built, caplog):
    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    models = f"[{{id: sft, backend: hf, path: '{model}', template: plamo, device: cpu}}, {{id: fake-b, backend: fake}}]"
    recipe = make_recipe(models=models, max_new_tokens=3, temperature=0.0, mt_bench_temperatures=False)
    out = run_generation(recipe)
    sft, fake = read_jsonl_store(out / "sft.jsonl"), read_jsonl_store(out / "fake-b.jsonl")
    weights = next(model.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten weights (same bytes here)
    built.clear()
    caplog.clear()
    run_generation(recipe)
    assert built == ["sft"]
    again = read_jsonl_store(out / "sft.jsonl")
    assert len(again) == 3 and {r["answer_id"] for r in again}.isdisjoint(r["answer_id"] for r in sft)
    assert {r["fingerprint"]["model"] for r in again}.isdisjoint(r["fingerprint"]["model"] for r in sft)
    assert read_jsonl_store(out / "fake-b.jsonl") == fake
    assert model_lines(caplog, "sft") == ["sft: 3 regenerated: model changed"]
    assert model_lines(caplog, "fake-b") == ["fake-b: 3 up to date"]
    assert read_manifest(out, "generate") is not None


def test_greedy_answers_survive_a_new_seed_sampled_ones_do_not(make_recipe, tiny_model_dir, built, caplog):
    # A new recipe seed (to retrain) must not regenerate greedy answers: the seed, top_p and top_k
    # cannot change them. With mt_bench_temperatures, "writing" samples (0.7), "math" is greedy.
    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    models = f"[{{id: sft, backend: hf, path: '{tiny_model_dir}', template: plamo, device: cpu}}]"
    out = run_generation(make_recipe(models=models, max_new_tokens=2))
    before = {r["question_id"]: r for r in read_jsonl_store(out / "sft.jsonl")}
    caplog.clear()
    run_generation(make_recipe(models=models, max_new_tokens=2, overrides=["generate.seed=7", "generate.top_p=0.5"]))
    after = {r["question_id"]: r for r in read_jsonl_store(out / "sft.jsonl")}
    assert after[2] == before[2] and after[3]["answer_id"] != before[3]["answer_id"]  # math kept, 地理 redone
    assert after[1]["answer_id"] != before[1]["answer_id"]  # writing samples: the seed matters
    line = model_lines(caplog, "sft")[-1]
    assert line.startswith("sft: 1 up to date; 2 regenerated: generation settings changed (") and "seed" in line


def test_changed_question_set(make_recipe, built, caplog):
    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    out = run_generation(make_recipe(models="[{id: fake-a, backend: fake}]"))
    before = {r["question_id"]: r for r in read_jsonl_store(out / "fake-a.jsonl")}
    edited = [QUESTIONS[0], {**QUESTIONS[1], "turns": ["円の面積を求めてください。"]},
              {"question_id": 4, "category": "地理", "turns": ["日本の首都は？"]}]
    caplog.clear()
    run_generation(make_recipe(models="[{id: fake-a, backend: fake}]", questions=edited))
    after = {r["question_id"]: r for r in read_jsonl_store(out / "fake-a.jsonl")}
    assert sorted(after) == [1, 2, 4] and after[1] == before[1]
    assert "円の面積" in after[2]["choices"][0]["turns"][0]
    assert model_lines(caplog, "fake-a") == ["fake-a: 1 up to date; 1 regenerated: question changed; 1 new question; "
                                             "1 answer dropped: question no longer in the set"]


def test_answers_of_an_older_version_are_regenerated(make_recipe, built, caplog):
    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    recipe = make_recipe(models="[{id: fake-a, backend: fake}]")
    out = recipe.stage_dir("generate")
    out.mkdir(parents=True)
    old = {"question_id": 1, "answer_id": "x", "model_id": "fake-a", "choices": [{"index": 0, "turns": ["古い", "答え"]}],
           "generation": {"backend": "fake", "max_new_tokens": 200}}
    (out / "fake-a.jsonl").write_text(json.dumps(old, ensure_ascii=False) + "\n", encoding="utf-8")
    run_generation(recipe)
    recs = read_jsonl_store(out / "fake-a.jsonl")
    assert sorted(r["question_id"] for r in recs) == [1, 2, 3] and "x" not in {r["answer_id"] for r in recs}
    assert model_lines(caplog, "fake-a") == ["fake-a: 1 regenerated: no fingerprint (written by an older version); "
                                             "2 new questions"]


def test_model_subset_writes_the_manifest_only_when_every_model_is_complete(make_recipe, built, tmp_path):
    recipe = make_recipe()
    out = run_generation(recipe, models=["fake-a"])
    assert (out / "fake-a.jsonl").is_file() and read_manifest(out, "generate") is None
    run_generation(recipe, models=["fake-b"])
    assert read_manifest(out, "generate") is not None
    built.clear()
    before = mtimes(out)
    run_generation(recipe)
    assert built == [] and mtimes(out) == before
    # A subset run after a change makes the folder incomplete until the other model catches up.
    changed = make_recipe(overrides=["generate.seed=7"])
    run_generation(changed, models=["fake-a"])
    assert read_manifest(out, "generate") is None
    run_generation(changed)
    assert read_manifest(out, "generate") is not None and built == ["fake-a", "fake-b"]


def test_explicit_out_is_registered_for_later_stages(make_recipe, built, tmp_path):
    recipe = make_recipe()
    elsewhere = tmp_path / "answers-elsewhere"
    assert run_generation(recipe, out_dir=elsewhere) == elsewhere
    assert recipe.stage_dir("generate") == elsewhere and not (recipe.root / "answers").exists()
    built.clear()
    assert run_generation(make_recipe()) == elsewhere and built == []


def test_trained_model_fingerprint_drives_regeneration(make_recipe, tiny_model_dir, tmp_path, monkeypatch, caplog):
    import ja_instruct.train as train

    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    final = shutil.copytree(tiny_model_dir, tmp_path / "train-out" / "final")
    fp = {"value": "run-1"}
    monkeypatch.setattr(train, "find_trained_model", lambda r: (final, fp["value"]))
    models = "[{id: sft, backend: hf, path: trained, template: plamo, device: cpu}]"
    recipe = make_recipe(models=models, max_new_tokens=2, temperature=0.0, limit=2)
    out = run_generation(recipe)
    assert {r["generation"]["model"] for r in read_jsonl_store(out / "sft.jsonl")} == {str(final)}
    fp["value"] = "run-2"  # retrained
    caplog.clear()
    run_generation(recipe)
    assert {r["fingerprint"]["model"] for r in read_jsonl_store(out / "sft.jsonl")} == {"run-2"}
    assert model_lines(caplog, "sft") == ["sft: 2 regenerated: model changed"]


def test_api_key_env_refuses_a_literal_key(make_recipe):
    with pytest.raises(UserError) as e:
        make_recipe(models="[{id: o, backend: openai, api_key_env: sk-abcdefghijklmnopqrstuvwxyz012345}]")
    assert "sk-abc" not in str(e.value) and "NAME of an environment variable" in str(e.value)
    assert make_recipe(models="[{id: o, backend: openai, api_key_env: MY_KEY}]").generate.models[0].api_key_env == "MY_KEY"


def test_trained_is_the_train_stages_registered_model(tmp_path, tiny_model_dir, caplog):
    """The real `find_trained_model`: `train --out X` -> generate answers with X/final; a changed
    train section is refused (naming the change) instead of answering with the old model."""
    import datasets
    import yaml

    from ja_instruct.train import run_training

    caplog.set_level(logging.INFO, logger="ja_instruct.generate")
    rows = [{"id": f"ex{i}", "source": "toy", "license": "CC-BY-4.0", "commercial": True,
             "messages": [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": "はい、答えます。"}]}
            for i, q in enumerate(QUESTIONS * 4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "data" / "dataset"))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS),
                                      encoding="utf-8")
    recipe = {"name": "t", "out_dir": str(tmp_path / "run"), "seed": 1,
              "train": {"model": str(tiny_model_dir), "dataset_dir": str(tmp_path / "data"), "template": "plamo",
                        "max_length": 64, "micro_batch_size": 2, "global_batch_size": 2, "max_steps": 2,
                        "lr": 1e-3, "save_every": 0, "tensorboard": False},
              "generate": {"questions": str(tmp_path / "q.jsonl"), "max_new_tokens": 2, "temperature": 0.0,
                           "models": [{"id": "sft", "path": "trained", "template": "plamo", "device": "cpu"}]}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    run_training(load_recipe(path), elsewhere)
    out = run_generation(load_recipe(path))
    recs = read_jsonl_store(out / "sft.jsonl")
    assert {r["generation"]["model"] for r in recs} == {str(elsewhere / "final")}
    assert {r["fingerprint"]["model"] for r in recs} == {read_manifest(elsewhere, "train").fingerprint}
    with pytest.raises(UserError, match="lr") as e:
        run_generation(load_recipe(path, ["train.lr=0.01"]))
    assert "ja-instruct train" in (e.value.hint or "")
    assert read_jsonl_store(out / "sft.jsonl") == recs  # nothing touched by the refused run


def test_vllm_engine_args_that_change_answers_are_settings():
    from ja_instruct.generate.backends import SamplingParams
    from ja_instruct.generate.config import ModelSpec
    from ja_instruct.generate.identity import generation_settings

    params = SamplingParams(temperature=0.0)
    plain = generation_settings(ModelSpec(id="m", backend="vllm"), params)
    quant = generation_settings(ModelSpec(id="m", backend="vllm", vllm_args={"quantization": "fp8"}), params)
    speed = generation_settings(ModelSpec(id="m", backend="vllm", vllm_args={"gpu_memory_utilization": 0.5}), params)
    assert quant != plain and quant["vllm_args"] == {"quantization": "fp8"} and speed == plain
