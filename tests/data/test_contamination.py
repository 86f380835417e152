"""Benchmark contamination check (`data.contamination`): hits in stats.json, ``flag`` keeps them,
``drop`` removes them before the held-out split; the split of every hit is recorded."""

from __future__ import annotations

import json

import pytest

from ja_instruct.data import build_dataset, load_dataset_dir, load_heldout
from ja_instruct.data.build import fingerprint
from ja_instruct.data.config import DataConfig
from ja_instruct.data.contamination import benchmark_labels, comparable_text
from ja_instruct.errors import UserError
from ja_instruct.generate.questions import load_questions

# the n docs/data.md measures and recommends for Japanese (one edited character in a 50-character
# question leaves ~80% of its 10-grams intact)
NGRAM = 10
CLEAN = [("日本の首都はどこですか？", "日本の首都は東京です。"),
         ("おすすめの本を一冊教えてください。", "夏目漱石の『こころ』はいかがでしょうか。人間の心の動きが丁寧に描かれています。"),
         ("カレーの作り方を簡単に説明してください。", "玉ねぎ、にんじん、じゃがいも、肉を炒めて煮込み、ルウを溶かして仕上げます。")]


def alpaca(path, pairs: list[tuple[str, str]]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i, (q, a) in enumerate(pairs):
            f.write(json.dumps({"index": str(i), "instruction": q, "input": "", "output": a}, ensure_ascii=False) + "\n")
    return str(path)


def lightly_edited(question: str) -> str:
    """One character dropped in the middle, a politer ending, other punctuation, and a wrapper."""
    mid = len(question) // 2
    q = (question[:mid] + question[mid + 1:]).replace("ください", "下さい").replace("、", ",")
    return f"次の質問に日本語で答えてください。\n{q}\nできるだけ詳しくお願いします。"


def config(src: dict, **contamination) -> DataConfig:
    return DataConfig(sources=[src], clean={"dedup": "none"}, contamination={"ngram": NGRAM, **contamination})


def test_comparable_text_and_labels():
    assert comparable_text("Ｒａｋｕｄａ、　です。\n(テスト)!") == "rakudaですテスト"
    assert benchmark_labels(["../shared/data/rakuda/questions.jsonl", "/x/ja_mt_bench/question.jsonl",
                             "embedded:questions_ja.jsonl", "/y/elyza_tasks_100.jsonl", "yuzuai/rakuda-questions",
                             "/z/questions.jsonl", "/w/z/questions.jsonl"]) == [
        "rakuda", "ja_mt_bench", "embedded:questions_ja", "elyza_tasks_100", "rakuda-questions", "z", "z-2"]


@pytest.mark.shared_data
def test_edited_rakuda_question_is_flagged_then_dropped(tmp_path, shared_data):
    qfile = shared_data / "rakuda" / "questions.jsonl"
    records = [json.loads(line) for line in qfile.read_text(encoding="utf-8").splitlines() if line.strip()]
    target = records[2]
    question = target["turns"][0]
    edited = lightly_edited(question)
    assert question not in edited and comparable_text(question) not in comparable_text(edited)
    path = alpaca(tmp_path / "train.jsonl", [*CLEAN, (edited, "信濃川は長野県と新潟県を流れています。")])
    src = {"name": "mix", "path": path, "format": "alpaca", "license": "Apache-2.0"}

    lines: list[str] = []
    s = build_dataset(config(src, benchmarks=[str(qfile)]), tmp_path / "flag", echo=lines.append)
    c = s["contamination"]
    assert (c["mode"], c["ngram"], c["min_overlap"]) == ("flag", NGRAM, 0.5)
    assert c["benchmarks"] == {"rakuda": {"spec": str(qfile), "questions": len(records), "found": 1,
                                          "question_ids": [target["question_id"]]}}
    [hit] = c["hits"]
    assert hit["benchmark"] == "rakuda" and hit["question_id"] == target["question_id"]
    assert (hit["source"], hit["id"], hit["split"], hit["dropped"]) == ("mix", "mix:3", "train", False)
    assert 0.5 <= hit["overlap"] < 1.0 and hit["matched"] == question[:200]
    assert "mix:3" in load_dataset_dir(tmp_path / "flag")["id"]  # flag keeps it
    assert s["sources"]["mix"]["kept"] == 4 and "contaminated" not in s["sources"]["mix"]["dropped"]
    assert any(f"1 of {len(records)} rakuda questions found in the training data (kept" in line for line in lines)

    s = build_dataset(config(src, benchmarks=[str(qfile)], mode="drop"), tmp_path / "drop", echo=lines.append)
    assert s["contamination"]["hits"][0]["dropped"] is True
    assert s["sources"]["mix"]["dropped"] == {"contaminated": 1} and s["sources"]["mix"]["kept"] == 3
    assert sorted(load_dataset_dir(tmp_path / "drop")["id"]) == ["mix:0", "mix:1", "mix:2"]
    said = (f"1 of {len(records)} rakuda questions found in the data: 0 in the training data, 1 only in examples "
            "removed before training (1 example dropped as contaminated).")
    assert any(said in line for line in lines)
    # the dataset card (README.md) and stats.md say so in the same words
    assert said in (tmp_path / "drop" / "README.md").read_text(encoding="utf-8")
    assert said in (tmp_path / "drop" / "stats.md").read_text(encoding="utf-8")


def test_clean_mixture_has_no_hits(tmp_path, data_assets, source):
    sources = [source("alpaca", data_assets / "alpaca.jsonl", "alpaca", "CC-BY-SA-3.0"),
               source("oasst", data_assets / "oasst.jsonl", "oasst"),
               source("msgs", data_assets / "messages.jsonl", "messages", "MIT"),
               source("own", alpaca(tmp_path / "own.jsonl", CLEAN), "alpaca")]
    for n in (NGRAM, 20):
        s = build_dataset(DataConfig(sources=sources, contamination={"ngram": n}), tmp_path / str(n),
                          echo=lambda _: None)
        c = s["contamination"]
        assert c["hits"] == [] and c["benchmarks"]["embedded:questions_ja"]["found"] == 0
        assert c["benchmarks"]["embedded:questions_ja"]["questions"] == 48
        assert s["sources"]["alpaca"]["kept"] == 3  # nothing dropped by the check


def test_embedded_questions_found_in_train_and_heldout(tmp_path):
    questions = load_questions("embedded:questions_ja.jsonl")
    # 12 planted questions (every 4th), each in its own example, among clean ones; half held out
    planted = {f"mix:{i}": q for i, q in enumerate(questions[::4])}
    pairs = [(lightly_edited(q.turns[0]), "はい、説明します。") for q in planted.values()] + CLEAN * 4
    src = {"name": "mix", "path": alpaca(tmp_path / "m.jsonl", pairs), "format": "alpaca", "license": "MIT"}
    cfg = DataConfig(sources=[src], clean={"dedup": "none"}, heldout={"fraction": 0.5},
                     contamination={"ngram": NGRAM, "benchmarks": ["embedded:questions_ja.jsonl"]})
    s = build_dataset(cfg, tmp_path / "out", echo=lambda _: None)
    hits = s["contamination"]["hits"]
    assert {h["id"]: h["question_id"] for h in hits} == {i: q.key for i, q in planted.items()}
    assert s["contamination"]["benchmarks"]["embedded:questions_ja"]["found"] == len(planted)
    held = set(load_heldout(tmp_path / "out")["id"])
    assert {h["id"] for h in hits if h["split"] == "heldout"} == held & set(planted)
    assert {h["id"] for h in hits if h["split"] == "train"} == set(planted) - held
    assert held & set(planted) and set(planted) - held  # both sides are exercised
    # drop: removed before the split, so none reaches either side
    s = build_dataset(cfg.model_copy(update={"contamination": cfg.contamination.model_copy(update={"mode": "drop"})}),
                      tmp_path / "drop", echo=lambda _: None)
    kept = set(load_dataset_dir(tmp_path / "drop")["id"]) | set(load_heldout(tmp_path / "drop")["id"])
    assert not kept & set(planted) and s["sources"]["mix"]["dropped"] == {"contaminated": len(planted)}
    assert {h["split"] for h in s["contamination"]["hits"]} == {"removed"}  # where they ended: nowhere


def test_drop_removes_only_the_contaminated_example_when_ids_repeat(tmp_path):
    question = load_questions("embedded:questions_ja.jsonl")[0].turns[0]
    path = tmp_path / "dup.jsonl"
    rows = [{"id": "same", "instruction": lightly_edited(question), "input": "", "output": "はい。"},
            {"id": "same", "instruction": CLEAN[0][0], "input": "", "output": CLEAN[0][1]}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(sources=[{"name": "d", "path": str(path), "format": "alpaca", "license": "MIT"}],
                     contamination={"mode": "drop"})
    s = build_dataset(cfg, tmp_path / "out", echo=lambda _: None)
    assert s["sources"]["d"]["dropped"] == {"contaminated": 1} and s["total"] == 1
    [msgs] = load_dataset_dir(tmp_path / "out")["messages"]
    assert msgs[-1]["content"] == CLEAN[0][1]  # the innocent one with the same id is kept


def test_a_flagged_example_removed_later_is_not_called_training_data(tmp_path):
    # flag mode, and the example is then left out by its source's weight (0 of 1 sampled)
    question = load_questions("embedded:questions_ja.jsonl")[0].turns[0]
    src = {"name": "m", "path": alpaca(tmp_path / "m.jsonl", [(lightly_edited(question), "はい。")]),
           "format": "alpaca", "license": "MIT", "weight": 0.4}
    other = {"name": "o", "path": alpaca(tmp_path / "o.jsonl", CLEAN), "format": "alpaca", "license": "MIT"}
    lines: list[str] = []
    s = build_dataset(DataConfig(sources=[src, other], contamination={}), tmp_path / "out", echo=lines.append)
    assert s["sources"]["m"]["sampled"] == 0
    [hit] = s["contamination"]["hits"]
    assert hit["split"] == "removed" and hit["dropped"] is False
    assert any("0 in the training data, 1 only in examples removed before training" in line for line in lines)


def test_bad_benchmark_is_one_user_error_naming_the_field(tmp_path, data_assets, source):
    src = source("a", data_assets / "alpaca.jsonl", "alpaca")
    missing = DataConfig(sources=[src], contamination={"benchmarks": ["embedded:questions_ja.jsonl",
                                                                      str(tmp_path / "nope.jsonl")]})
    for call in (lambda: build_dataset(missing, tmp_path / "out"), lambda: fingerprint(missing, 0)):
        with pytest.raises(UserError) as e:
            call()
        assert e.value.field == "data.contamination.benchmarks[1]" and "not found" in str(e.value)
    assert not (tmp_path / "out").exists()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question_id": 1, "turns": ["ok"]}\n{"question_id": 2}\n', encoding="utf-8")
    bad = DataConfig(sources=[src], contamination={"benchmarks": [str(broken)]})
    with pytest.raises(UserError) as e:
        build_dataset(bad, tmp_path / "out")
    assert e.value.field == "data.contamination.benchmarks[0]" and e.value.line == 2
