"""Generate config (defaults, temperatures, strictness) and the question-set loaders."""

from __future__ import annotations

import json
import typing

import pytest

from ja_instruct.config import load_config
from ja_instruct.errors import UserError
from ja_instruct.generate.backends import BACKENDS
from ja_instruct.generate.config import MT_BENCH_TEMPERATURES, BackendName, GenerateConfig
from ja_instruct.generate.questions import Question, load_questions
from ja_instruct.recipe import Recipe

MODELS = [{"id": "m", "backend": "fake"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_defaults_follow_the_plamo_card():
    cfg = GenerateConfig(models=MODELS)
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (1.0, 0.95, 50)
    assert cfg.questions == "embedded:questions_ja.jsonl"
    assert cfg.temperature_for("writing") == 1.0


def test_category_temperatures_and_mt_bench_preset():
    cfg = GenerateConfig(models=MODELS, mt_bench_temperatures=True, category_temperature={"writing": 0.3})
    assert cfg.temperature_for("writing") == 0.3  # explicit entry beats the preset
    assert cfg.temperature_for("math") == 0.0 == MT_BENCH_TEMPERATURES["math"]
    assert cfg.temperature_for("humanities") == 0.1
    assert cfg.temperature_for("地理") == 1.0  # not in the preset: the default
    assert GenerateConfig(models=MODELS).temperature_for("math") == 1.0  # preset off by default


def test_every_field_is_documented_and_backends_match_registry():
    from ja_instruct.generate.config import ModelSpec

    for model in (GenerateConfig, ModelSpec):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no docstring"
    assert set(typing.get_args(BackendName)) == set(BACKENDS)


def test_recipe_errors_name_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("generate:\n  models:\n    - id: a\n      backend: hff\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_config(Recipe, recipe)
    assert e.value.line == 4 and "backend" in str(e.value) and "'hf'" in str(e.value)
    recipe.write_text("generate:\n  models: [{id: a, backend: fake}, {id: a, backend: fake}]\n", encoding="utf-8")
    with pytest.raises(UserError, match="unique"):
        load_config(Recipe, recipe)
    recipe.write_text("generate:\n  temprature: 0.5\n  models: [{id: a}]\n", encoding="utf-8")
    with pytest.raises(UserError, match="temperature"):
        load_config(Recipe, recipe)


def test_fastchat_rakuda_v1_and_references(tmp_path):
    qs = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "writing", "turns": ["一つ目", "二つ目"]},
        {"question_id": "abc", "category": "地理", "text": "Rakuda v1 形式の質問"},  # v1: text
        {"question_id": 3, "turns": ["カテゴリなし"], "reference": "参考"},
    ])
    refs = write_jsonl(tmp_path / "ref.jsonl", [
        {"question_id": 1, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["参考1", "参考2"]}]},
        {"question_id": 3, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["無視される"]}]},
    ])
    out = load_questions(qs, references=refs)
    assert out[0] == Question(1, "writing", ["一つ目", "二つ目"], ["参考1", "参考2"])
    assert out[1] == Question("abc", "地理", ["Rakuda v1 形式の質問"], None)
    assert out[2].category == "general" and out[2].reference == ["参考"]  # its own reference wins
    assert [q.question_id for q in load_questions(qs, limit=2)] == [1, "abc"]


@pytest.mark.parametrize("rows,match", [
    ([{"question_id": 1, "turns": ["a"]}, {"question_id": 1, "turns": ["b"]}], "duplicate question_id"),
    ([{"turns": ["a"]}], "no 'question_id'"),
    ([{"question_id": 1, "turns": []}], "no usable 'turns'"),
])
def test_bad_question_files(tmp_path, rows, match):
    with pytest.raises(UserError, match=match) as e:
        load_questions(write_jsonl(tmp_path / "q.jsonl", rows))
    assert e.value.file and e.value.line


def test_missing_file_and_offline_hub_id(tmp_path):
    with pytest.raises(UserError, match="question set not found"):
        load_questions(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="question set not found"):
        load_questions("embedded:no_such_set.jsonl")
    # A hub id goes through datasets.load_dataset; offline (conftest) it must fail clearly.
    with pytest.raises(UserError, match="cannot load question set from the HF hub dataset 'yuzuai/rakuda-questions'") as e:
        load_questions("yuzuai/rakuda-questions")
    assert "offline" in e.value.hint.lower()


def test_local_parquet_json_and_dataset_dir_go_through_datasets(tmp_path):
    import datasets

    rows = [{"question_id": f"q{i}", "category": "政治", "text": f"質問{i}です"} for i in range(3)]  # hub v1 style
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "q.parquet"))
    ds.to_json(str(tmp_path / "q.json"), force_ascii=False, lines=False)
    ds.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "repo" / "data").mkdir(parents=True)  # laid out like a hub dataset repo: the hub-id code path
    ds.to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
    for source in (tmp_path / "q.parquet", tmp_path / "q.json", tmp_path / "saved", tmp_path / "repo"):
        out = load_questions(source)
        assert [q.question_id for q in out] == ["q0", "q1", "q2"], source
        assert out[2].turns == ["質問2です"] and out[0].category == "政治"


def test_real_rakuda_questions(shared_data):
    qs = load_questions(shared_data / "rakuda" / "questions.jsonl")
    assert len(qs) == 40 and {q.category for q in qs} == {"地理", "政治", "歴史", "社会"}
    assert all(len(q.turns) == 1 and isinstance(q.question_id, str) for q in qs)


def test_real_japanese_mt_bench_with_references(shared_data):
    mt = shared_data / "ja_mt_bench"
    qs = load_questions(mt / "question_full.jsonl", references=mt / "reference_answer" / "gpt-4.jsonl")
    assert len(qs) == 80 and all(len(q.turns) == 2 for q in qs)
    with_ref = {q.category for q in qs if q.reference}
    assert {"math", "reasoning", "coding"} <= with_ref
    assert len(load_questions(mt / "question.jsonl")) == 60
