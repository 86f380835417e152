"""run_generation + CLI: two-turn flow, resume after a kill, `path: trained`, bad input -> exit 2."""

from __future__ import annotations

import json
import shutil

import pytest

from ja_instruct import cli
from ja_instruct.errors import UserError
from ja_instruct.generate import backends
from ja_instruct.generate.backends import FakeBackend
from ja_instruct.generate.run import run_generation
from ja_instruct.io import read_jsonl_store
from ja_instruct.recipe import load_recipe

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["ハワイ旅行のブログ記事を書いてください。", "全ての文をAで始めて書き直してください。"]},
    {"question_id": 111, "category": "math", "turns": ["三角形の面積を求めてください。", "外接円の面積は？"]},
    {"question_id": 131, "category": "extraction", "turns": ["映画の評価を抽出してください。"]},
] + [{"question_id": 200 + i, "category": "地理", "turns": [f"日本の地理についての質問{i}です。"]} for i in range(5)]


@pytest.fixture
def recipe_file(tmp_path):
    q = tmp_path / "questions.jsonl"
    q.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in QUESTIONS), encoding="utf-8")

    def make(models="[{id: fake-a, backend: fake, batch_size: 3}]", extra=""):
        path = tmp_path / "recipe.yaml"
        path.write_text(f"name: t\nout_dir: {tmp_path / 'run'}\ngenerate:\n  questions: {q}\n"
                        f"  mt_bench_temperatures: true\n  models: {models}\n{extra}", encoding="utf-8")
        return path
    return make


@pytest.fixture
def recorded(monkeypatch):
    """Swap the registry's fake for one that keeps its instances (to look at the prompts it got)."""
    made: list[FakeBackend] = []

    class Recording(FakeBackend):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setitem(backends.BACKENDS, "fake", Recording)
    return made


def test_two_turn_flow_sees_own_first_answer(recipe_file, recorded):
    out = run_generation(load_recipe(recipe_file()))
    assert out.name == "answers" and (out / "config.yaml").is_file()
    recs = {r["question_id"]: r for r in read_jsonl_store(out / "fake-a.jsonl")}
    assert sorted(recs) == sorted(q["question_id"] for q in QUESTIONS)
    first, second = recs[81]["choices"][0]["turns"]
    assert "第1問" in first and "第2問" in second and len(recs[81]["health"]) == 2
    # The turn-2 prompt holds turn 1 and the model's own answer to it.
    turn2 = [c for call in recorded[0].calls for c in call if len(c) == 3 and c[0]["content"] == QUESTIONS[0]["turns"][0]]
    assert turn2 == [[{"role": "user", "content": QUESTIONS[0]["turns"][0]}, {"role": "assistant", "content": first},
                      {"role": "user", "content": QUESTIONS[0]["turns"][1]}]]
    # MT-Bench temperatures per category, recorded with the answer; FastChat keys present.
    assert recs[81]["generation"]["temperature"] == 0.7 and recs[111]["generation"]["temperature"] == 0.0
    assert recs[200]["generation"]["temperature"] == 1.0 and recs[200]["generation"]["top_k"] == 50
    assert all(r["model_id"] == "fake-a" and r["answer_id"] and r["tstamp"] for r in recs.values())
    assert json.loads((out / "health.json").read_text())["fake-a"]["turns"] == 10
    # One call = one set of params: no call mixes temperatures.
    assert all(len({json.dumps(c[0]) for c in call}) == len(call) for call in recorded[0].calls)


def test_resume_after_kill_keeps_answers_and_adds_no_duplicates(recipe_file, monkeypatch):
    class Dying(FakeBackend):
        def generate(self, conversations, params):
            if getattr(self, "n", 0) >= 2:
                raise KeyboardInterrupt  # killed mid-run
            self.n = getattr(self, "n", 0) + 1
            return super().generate(conversations, params)

    recipe = load_recipe(recipe_file())
    monkeypatch.setitem(backends.BACKENDS, "fake", Dying)
    with pytest.raises(KeyboardInterrupt):
        run_generation(recipe)
    path = recipe.root / "answers" / "fake-a.jsonl"
    before = read_jsonl_store(path)
    assert 0 < len(before) < len(QUESTIONS)
    with open(path, "a", encoding="utf-8") as f:  # the kill tore the line being written
        f.write('{"question_id": 999, "answer_id": "torn", "model_id": "fa')
    monkeypatch.setitem(backends.BACKENDS, "fake", FakeBackend)
    run_generation(recipe)
    after = read_jsonl_store(path)
    ids = [r["question_id"] for r in after]
    assert sorted(ids) == sorted(q["question_id"] for q in QUESTIONS)  # all there, once each
    assert after[:len(before)] == before  # finished answers kept as they were
    assert "torn" not in path.read_text(encoding="utf-8")
    run_generation(recipe)  # a finished run re-run is a no-op
    assert read_jsonl_store(path) == after


def test_trained_path_uses_find_trained_model_and_model_filter(recipe_file, tiny_model_dir, tmp_path, monkeypatch):
    import ja_instruct.train as train

    models = "[{id: sft, backend: hf, path: trained, template: plamo, device: cpu, batch_size: 4}, {id: fake-b, backend: fake}]"
    recipe = load_recipe(recipe_file(models, "  max_new_tokens: 4\n  limit: 3\n"))

    def untrained(r):
        raise UserError("no complete trained model", field="generate.models", hint="Run `ja-instruct train RECIPE`.")

    monkeypatch.setattr(train, "find_trained_model", untrained, raising=False)
    with pytest.raises(UserError, match="no complete trained model"):
        run_generation(recipe)
    assert not (recipe.root / "answers").exists()  # refused before anything was written
    # A leftover <root>/train/final is NOT what `trained` means: the train stage says where its model is.
    shutil.copytree(tiny_model_dir, recipe.root / "train" / "final")
    with pytest.raises(UserError, match="no complete trained model"):
        run_generation(recipe)
    elsewhere = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "final")
    monkeypatch.setattr(train, "find_trained_model", lambda r: (elsewhere, "train-fp-1"), raising=False)
    with pytest.raises(UserError, match="unknown model id"):
        run_generation(recipe, models=["nope"])
    out = run_generation(recipe, models=["sft"])
    recs = read_jsonl_store(out / "sft.jsonl")
    assert len(recs) == 3 and not (out / "fake-b.jsonl").exists()
    assert {r["generation"]["model"] for r in recs} == {str(elsewhere)}
    assert {r["fingerprint"]["model"] for r in recs} == {"train-fp-1"}
    assert all(h["n_tokens"] <= 5 for r in recs for h in r["health"])
    assert not (out / "manifest.json").exists()  # fake-b has no answers yet: the stage is not complete


def run_cli(monkeypatch, *argv):
    # Only our subcommand: the test must not depend on the other stages' CLIs.
    monkeypatch.setattr(cli, "COMMANDS", {"generate": "ja_instruct.generate.cli"})
    return cli.main(["generate", *map(str, argv)])


def test_cli_runs_and_bad_input_exits_2(recipe_file, monkeypatch, capsys, tmp_path):
    assert run_cli(monkeypatch, recipe_file(), "--out", tmp_path / "o", "--set", "generate.limit=2") == 0
    assert len(read_jsonl_store(tmp_path / "o" / "fake-a.jsonl")) == 2
    capsys.readouterr()
    assert run_cli(monkeypatch, recipe_file("[{id: x, backend: gpt}]")) == 2
    err = capsys.readouterr().err
    assert "backend" in err and "'hf'" in err and "Traceback" not in err
    assert run_cli(monkeypatch, recipe_file(), "--set", f"generate.questions={tmp_path}/missing.jsonl") == 2
    assert "question set not found" in capsys.readouterr().err
    assert run_cli(monkeypatch, recipe_file(), "--model", "other") == 2
    assert "unknown model id" in capsys.readouterr().err
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    bad = "[{id: x, backend: openai, base_url: 'https://api.example.com/v1', api_key_env: NO_SUCH_KEY_VAR}]"
    assert run_cli(monkeypatch, recipe_file(bad)) == 2
    assert "NO_SUCH_KEY_VAR" in capsys.readouterr().err


def test_vllm_backend_is_optional():
    import importlib.util

    from ja_instruct.generate.backends import VLLMBackend
    from ja_instruct.generate.config import ModelSpec

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(UserError, match="'vllm', which is not installed"):
        VLLMBackend.check(ModelSpec(id="v", backend="vllm"), None)


def test_package_exports_entry_points_lazily():
    import ja_instruct.generate as gen

    assert gen.run_generation is run_generation and callable(gen.load_questions)
