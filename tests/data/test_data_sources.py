"""Source formats and file types: alpaca, oasst, messages, fastchat-answers; JSON, JSONL,
Parquet, dataset folders and the `datasets.load_dataset` (hub) code path, offline."""

from __future__ import annotations

import json

import pytest

from ja_instruct.data.config import SourceConfig
from ja_instruct.data.records import SourceStats
from ja_instruct.data.sources import read_source
from ja_instruct.errors import UserError


def read(on_error: str = "raise", **kw):
    stats = SourceStats()
    cfg = SourceConfig(**{"name": "s", "license": "Apache-2.0", **kw})
    return read_source(cfg, stats, on_error), stats


def roles(ex):
    return [m["role"] for m in ex["messages"]]


def test_alpaca_instruction_input_output_and_failed_translation(data_assets):
    exs, st = read(path=str(data_assets / "alpaca.jsonl"), format="alpaca")
    assert st.rows_read == 6
    assert st.dropped == {"failed_translation": 1}  # row 2 has ng_translation "1"
    assert len(exs) == 5
    by_id = {e["id"]: e for e in exs}
    assert roles(by_id["s:0"]) == ["user", "assistant"]  # empty input -> no input turn
    assert by_id["s:1"]["messages"] == [
        {"role": "user", "content": "次の文を要約してください。"},
        {"role": "input", "content": "富士山は日本で一番高い山で、標高は3776メートルです。"},
        {"role": "assistant", "content": "富士山は日本最高峰（3776m）です。"},
    ]
    assert roles(by_id["s:5"]) == ["user", "assistant"]  # no input key at all is fine


def test_alpaca_keeps_failed_translations_when_asked(data_assets):
    exs, st = read(path=str(data_assets / "alpaca.jsonl"), format="alpaca", drop_failed_translation=False)
    assert len(exs) == 6 and not st.dropped


def test_oasst_best_thread(data_assets):
    exs, st = read(path=str(data_assets / "oasst.jsonl"), format="oasst")
    assert st.rows_read == 10
    threads = {e["id"]: [m["content"] for m in e["messages"]] for e in exs}
    # best-ranked path: p1 -> a1 (rank 0) -> p2 -> a3 (a4 failed translation)
    assert threads["s:a3"] == ["おすすめの本を教えてください。", "『坊っちゃん』はいかがでしょう。",
                               "どんな話ですか？", "東京から四国の中学校に赴任した教師の話です。"]
    assert roles(exs[0]) == ["user", "assistant", "user", "assistant"]
    assert set(threads) == {"s:a3", "s:b1"}
    # a4 dropped; its reply a5 cannot be reached any more
    assert st.dropped == {"failed_translation": 1, "unreachable": 1}


def test_oasst_all_paths_and_lang_filter(data_assets):
    exs, st = read(path=str(data_assets / "oasst.jsonl"), format="oasst", thread_mode="all", lang=["ja"])
    ids = sorted(e["id"] for e in exs)
    # p1-a1-p2-a3 and p1-a2(-p3 trimmed: a thread ends on an assistant message)
    assert ids == ["s:a2", "s:a3"]
    assert st.dropped["lang"] == 2
    assert all(e["messages"][-1]["role"] == "assistant" for e in exs)


def test_oasst_text_field_and_exclude(tmp_path):
    rows = [{"message_id": "p", "parent_id": None, "role": "prompter", "text": "hello", "text_ja": "こんにちは"},
            {"message_id": "a", "parent_id": "p", "role": "assistant", "text": "hi", "text_ja": "やあ"},
            {"message_id": "p2", "parent_id": None, "role": "prompter", "text_ja": "英語に翻訳して"},
            {"message_id": "a2", "parent_id": "p2", "role": "assistant", "text_ja": "Sure."}]
    f = tmp_path / "o.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    exs, st = read(path=str(f), format="oasst", exclude={"text_ja": "翻訳"})
    assert [m["content"] for m in exs[0]["messages"]] == ["こんにちは", "やあ"]  # text_ja preferred
    assert len(exs) == 1 and st.dropped == {"filtered": 1, "unreachable": 1}
    exs, _ = read(path=str(f), format="oasst", text_field="text", max_rows=2)
    assert [m["content"] for m in exs[0]["messages"]] == ["hello", "hi"]


def test_messages_openai_and_sharegpt(data_assets):
    exs, st = read(path=str(data_assets / "messages.jsonl"), format="messages")
    assert [e["id"] for e in exs] == ["s:openai-1", "s:sharegpt-1"]
    assert roles(exs[0]) == ["system", "user", "assistant"]
    assert roles(exs[1]) == ["user", "assistant", "user", "assistant"]
    assert exs[1]["messages"][1]["content"] == "古池や蛙飛び込む水の音"
    assert st.dropped == {"no_response": 1}


def test_fastchat_answers_join_multi_turn(data_assets):
    exs, st = read(path=str(data_assets / "fastchat/questions.jsonl"), format="fastchat-answers",
                   answers=[str(data_assets / "fastchat/answers")])
    assert st.rows_read == 6
    assert st.dropped == {"unknown_question": 1}  # model-b answered question 99
    by_id = {e["id"]: e for e in exs}
    two = by_id["s:model-a:1"]["messages"]
    assert [m["role"] for m in two] == ["user", "assistant", "user", "assistant"]
    assert two[2]["content"] == "それを三行に要約してください。"
    assert two[3]["content"] == "京都へ。\nお寺。\n美しい。"
    assert by_id["s:model-a:v1"]["messages"][0]["content"] == "鎌倉幕府を開いたのは誰ですか？"  # v1 "text"
    exs, st = read(path=str(data_assets / "fastchat/questions.jsonl"), format="fastchat-answers",
                   answers=[str(data_assets / "fastchat/answers/*.jsonl")], models=["model-b"])
    assert {e["id"] for e in exs} == {"s:model-b:1", "s:model-b:2"} and st.dropped["filtered"] == 3


def test_json_list_and_data_key(tmp_path):
    recs = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    (tmp_path / "l.json").write_text(json.dumps(recs), encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps({"data": recs}), encoding="utf-8")
    for name in ("l.json", "d.json"):
        exs, _ = read(path=str(tmp_path / name), format="alpaca")
        assert [e["messages"][0]["content"] for e in exs] == ["a", "c"]


def _write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def test_parquet_file_and_dataset_folder(tmp_path):
    rows = [{"instruction": f"質問{i}", "input": None, "output": f"回答{i}"} for i in range(3)]
    _write_parquet(tmp_path / "a.parquet", rows)
    exs, st = read(path=str(tmp_path / "a.parquet"), format="alpaca")
    assert len(exs) == 3 and st.rows_read == 3
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    exs, _ = read(path=str(tmp_path / "saved"), format="alpaca")
    assert [e["messages"][1]["content"] for e in exs] == ["回答0", "回答1", "回答2"]
    (tmp_path / "files").mkdir()  # a folder of data files goes through datasets.load_dataset
    _write_parquet(tmp_path / "files" / "train.parquet", rows[:2])
    exs, _ = read(path=str(tmp_path / "files"), format="alpaca")
    assert len(exs) == 2


def test_load_dataset_code_path_offline(tmp_path):
    """The hub code path (`datasets.load_dataset`) on local Parquet files via the parquet builder."""
    rows = [{"instruction": "東京の人口は？", "output": "約1400万人です。", "ng_translation": "0"},
            {"instruction": "x", "output": "y", "ng_translation": "1"}]
    _write_parquet(tmp_path / "train.parquet", rows)
    exs, st = read(path="parquet", data_files=[str(tmp_path / "train.parquet")], format="alpaca")
    assert len(exs) == 1 and st.dropped == {"failed_translation": 1}
    assert exs[0]["messages"][1]["content"] == "約1400万人です。"


def test_unknown_hub_id_offline_is_a_clear_user_error():
    with pytest.raises(UserError) as e:
        read(path="nobody-xyz/no-such-dataset-ja", format="alpaca")
    msg = str(e.value)
    assert "cannot load dataset 'nobody-xyz/no-such-dataset-ja'" in msg and "source 's'" in msg
    assert "HF_HUB_OFFLINE" in msg or "local" in msg
