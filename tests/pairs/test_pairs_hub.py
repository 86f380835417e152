"""``pairs.input``: preference sets read as they are (plain, UltraFeedback, HH-RLHF JSONL, HF dataset
folders, hub ids), the held-out split they get, and errors that name the file, row and field."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from ja_instruct.errors import UserError
from ja_instruct.pairs import load_pairs, run_pairs
from ja_instruct.recipe import load_recipe

PLAIN = [{"prompt": f"質問{i}", "chosen": f"良い答え{i}", "rejected": f"悪い答え{i}"} for i in range(10)]
PLAIN[3]["split"] = "heldout"
PLAIN[4]["split"] = "train"
ULTRA = [{"prompt": "空はなぜ青い？", "prompt_id": "p1",
          "chosen": [{"role": "user", "content": "空はなぜ青い？"}, {"role": "assistant", "content": "散乱のためです。"}],
          "rejected": [{"role": "user", "content": "空はなぜ青い？"}, {"role": "assistant", "content": "知りません。"}],
          "score_chosen": 8.5, "score_rejected": 2.0}]
HH = [{"chosen": "\n\nHuman: こんにちは\n\nAssistant: こんにちは！\n\nHuman: 元気？\n\nAssistant: 元気です。",
       "rejected": "\n\nHuman: こんにちは\n\nAssistant: こんにちは！\n\nHuman: 元気？\n\nAssistant: さあ。"}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _recipe(tmp_path, **pairs):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "i", "seed": 0, "out_dir": str(tmp_path / "run"), "pairs": pairs},
                                   allow_unicode=True), encoding="utf-8")
    return load_recipe(path)


def test_plain_jsonl_keeps_given_splits_and_holds_out_the_rest(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    src = _jsonl(tmp_path / "plain.jsonl", PLAIN)
    out = run_pairs(_recipe(tmp_path, input=str(src), heldout_fraction=0.3, license="CC0-1.0", judge_terms="none"))
    pairs = load_pairs(out)
    by = {r.id: r for r in pairs.records}
    assert len(by) == 10 and by["1"].prompt == [{"role": "user", "content": "質問0"}]
    assert (by["1"].chosen, by["1"].rejected) == ("良い答え0", "悪い答え0")
    assert by["4"].split == "heldout" and by["5"].split == "train"  # their own splits win
    others = [r for r in pairs.records if r.id not in ("4", "5")]
    assert {r.split for r in others} == {"train", "heldout"}
    assert pairs.meta == {"path": str(out), "license": "CC0-1.0", "judge": None, "judge_terms": "none"}
    caplog.clear()
    run_pairs(_recipe(tmp_path, input=str(src), heldout_fraction=0.3, license="CC0-1.0", judge_terms="none"))
    assert "pairs: up to date" in caplog.text
    _jsonl(src, PLAIN[:5])  # the file changed: read again
    run_pairs(_recipe(tmp_path, input=str(src), heldout_fraction=0.3, license="CC0-1.0", judge_terms="none"))
    assert len(load_pairs(out).records) == 5 and "input 'input' changed" in caplog.text


def test_ultrafeedback_and_hh_rlhf_layouts(tmp_path):
    out = run_pairs(_recipe(tmp_path, input=str(_jsonl(tmp_path / "uf.jsonl", ULTRA)), heldout_fraction=0))
    r = load_pairs(out).records[0]
    assert r.prompt == [{"role": "user", "content": "空はなぜ青い？"}]
    assert (r.chosen, r.rejected, r.scores, r.margin) == ("散乱のためです。", "知りません。",
                                                         {"chosen": 8.5, "rejected": 2.0}, 6.5)
    out = run_pairs(_recipe(tmp_path, input=str(_jsonl(tmp_path / "hh.jsonl", HH)), heldout_fraction=0))
    r = load_pairs(out).records[0]
    assert r.prompt == [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "こんにちは！"},
                        {"role": "user", "content": "元気？"}]
    assert (r.chosen, r.rejected, r.split) == ("元気です。", "さあ。", "train")


def test_hf_dataset_folder(tmp_path):
    import datasets

    folder = tmp_path / "uf_disk"
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(ULTRA * 3),
                          "test_prefs": datasets.Dataset.from_list(ULTRA)}).save_to_disk(str(folder))
    out = run_pairs(_recipe(tmp_path, input=str(folder), split="train_prefs", heldout_fraction=0))
    pairs = load_pairs(out)
    assert [r.id for r in pairs.records] == ["1", "2", "3"] and pairs.records[0].chosen == "散乱のためです。"
    with pytest.raises(UserError, match="no split 'train'") as err:
        run_pairs(_recipe(tmp_path, input=str(folder)))
    assert "train_prefs" in str(err.value)
    single = tmp_path / "plain_disk"
    datasets.Dataset.from_list(PLAIN[:2]).save_to_disk(str(single))
    assert [r.rejected for r in load_pairs(single).records] == ["悪い答え0", "悪い答え1"]  # how DPO reads one


@pytest.mark.parametrize("rows,line,field,what", [
    ([PLAIN[0], {"prompt": "x", "chosen": "y"}], 2, "rejected", "missing 'rejected'"),
    ([PLAIN[0], PLAIN[1], dict(PLAIN[2], chosen="  ")], 3, "chosen", "non-empty string"),
    ([dict(HH[0], rejected="\n\nHuman: 別の話\n\nAssistant: さあ。")], 1, "chosen", "share everything but"),
    ([dict(ULTRA[0], rejected=ULTRA[0]["rejected"][:1])], 1, "rejected", "end with an assistant message"),
    ([dict(PLAIN[0], split="test")], 1, "split", "split must be one of"),
    ([dict(PLAIN[0], id="a"), dict(PLAIN[1], id="a")], 2, "id", "repeated"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, rows, line, field, what):
    src = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as err:
        run_pairs(_recipe(tmp_path, input=str(src)))
    assert (err.value.file, err.value.line, err.value.field) == (str(src), line, field)
    assert what in str(err.value)


def test_bad_json_and_bad_dataset_rows(tmp_path):
    import datasets

    src = tmp_path / "broken.jsonl"
    src.write_text(json.dumps(PLAIN[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        run_pairs(_recipe(tmp_path, input=str(src)))
    assert (err.value.file, err.value.line) == (str(src), 2)
    folder = tmp_path / "bad_disk"
    datasets.Dataset.from_list([PLAIN[0], dict(PLAIN[1], prompt=None, chosen="まとも")]).save_to_disk(str(folder))
    with pytest.raises(UserError) as err:
        run_pairs(_recipe(tmp_path, input=str(folder)))
    assert (err.value.file, err.value.line) == (str(folder), 2)  # HH layout tried: not a transcript


def test_missing_path_and_uncached_hub_id_offline(tmp_path):
    with pytest.raises(UserError, match="preference set not found"):
        run_pairs(_recipe(tmp_path, input=str(tmp_path / "nope.jsonl")))
    with pytest.raises(UserError, match="Offline") as err:
        run_pairs(_recipe(tmp_path, input="nobody-here/no-such-prefs"))
    assert err.value.field == "pairs.input"


def test_hub_id_is_read_with_load_dataset_and_its_split(tmp_path, monkeypatch):
    import datasets

    asked = []

    def fake_load_dataset(repo_id, split=None, **kw):  # what the local HF cache would serve offline
        asked.append((repo_id, split, kw))
        return datasets.Dataset.from_list(PLAIN[:1] + HH * 2)  # (from_list takes the columns of row 1)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = run_pairs(_recipe(tmp_path, input="someone/ja-prefs", split="train_prefs", heldout_fraction=0))
    assert asked == [("someone/ja-prefs", "train_prefs", {})]
    recs = load_pairs(out).records
    assert [r.chosen for r in recs] == ["良い答え0", "元気です。", "元気です。"]  # a null prompt: HH-RLHF's layout
    assert json.loads((out / "stats.json").read_text(encoding="utf-8"))["prompts"]["source"] == "someone/ja-prefs"
