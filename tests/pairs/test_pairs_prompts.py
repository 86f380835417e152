"""Prompts from the data stage: the training split only, single-turn prompts, licences recorded."""

from __future__ import annotations

import json

import pytest

from ja_instruct.pairs import load_pairs, run_pairs
from ja_instruct.pairs.prompts import prompt_of
from ja_instruct.recipe import load_recipe


def _m(*turns):
    return [{"role": r, "content": c} for r, c in turns]


@pytest.mark.parametrize("messages,expected", [
    (_m(("user", "質問"), ("assistant", "答え")), ("質問", None)),
    (_m(("user", "訳して"), ("input", "Hello"), ("assistant", "こんにちは")), ("訳して\n\nHello", None)),
    (_m(("user", "一つ目"), ("user", "二つ目"), ("assistant", "答え")), ("一つ目\n\n二つ目", None)),
    (_m(("user", "質問"),), ("質問", None)),
    (_m(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")), (None, "multi_turn")),
    (_m(("system", "丁寧に"), ("user", "質問"), ("assistant", "答え")), (None, "has_system")),
    (_m(("user", "  "), ("assistant", "答え")), (None, "no_prompt")),
])
def test_prompt_of_a_conversation(messages, expected):
    assert prompt_of(messages) == expected


def test_data_prompts_come_from_the_training_split_only(tmp_path, judge_calls, generations):
    from ja_instruct.data import load_dataset_dir, load_heldout

    rows = [{"id": f"single-{i}", "messages": _m(("user", f"質問その{i}を説明してください。"), ("assistant", f"答え{i}です。"))}
            for i in range(16)]
    rows += [{"id": f"multi-{i}", "messages": _m(("user", f"前の質問{i}"), ("assistant", "はい"), ("user", f"続き{i}"),
                                                  ("assistant", "以上です。"))} for i in range(3)]
    rows += [{"id": "sys-0", "messages": _m(("system", "丁寧に"), ("user", "システム付きの質問"), ("assistant", "はい。"))}]
    src = tmp_path / "toy.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = {"name": "d", "seed": 0, "out_dir": str(tmp_path / "run"),
              "data": {"sources": [{"name": "toy", "path": str(src), "format": "messages", "license": "CC-BY-4.0",
                                    "weight": 2}], "heldout": {"fraction": 0.3}},
              "pairs": {"samples": 2, "margin": 0, "model": {"id": "pol", "backend": "fake"},
                        "judge": {"backend": {"backend": "fake"}}}}
    path = tmp_path / "d.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    out = run_pairs(load_recipe(path))  # builds the data stage first

    data_dir = tmp_path / "run" / "data"
    def row_id(data_id: str) -> str:  # the data stage's "toy:single-3#1" (source, row id, weight repeat)
        return data_id.split(":", 1)[1].split("#")[0]

    train_ids = {row_id(r["id"]) for r in load_dataset_dir(data_dir)}
    held_ids = {row_id(r["id"]) for r in load_heldout(data_dir)}
    assert any(i.startswith("single") for i in held_ids) and any(i.startswith("single") for i in train_ids)
    asked = {q for q, _, _ in generations}
    by_id = {r["id"]: r["messages"][0]["content"] for r in rows}
    assert asked == {by_id[i] for i in train_ids if i.startswith("single")}
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    n_single = sum(i.startswith("single") for i in train_ids)
    dropped = {"multi_turn": 2 * sum(i.startswith("multi") for i in train_ids),
               "has_system": 2 * ("sys-0" in train_ids), "duplicate_prompt": n_single}  # weight 2: each row twice
    assert {k: stats["dropped"].get(k, 0) for k in dropped} == dropped
    assert stats["prompts"] == {"source": "data", "available": 2 * len(train_ids), "used": n_single}
    pairs = load_pairs(out)
    assert pairs.meta["license"] == "CC-BY-4.0" == stats["licence"]["prompts"]
    assert {r.source for r in pairs.records} == {"data:toy"}
    assert {row_id(r.id) for r in pairs.records} <= {i for i in train_ids if i.startswith("single")}
