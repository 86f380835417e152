"""The dataset card (README.md of a built dataset folder) and the contamination sentences that
every output shares."""

from __future__ import annotations

import copy

import pytest

from ja_instruct.data import build_dataset
from ja_instruct.data.card import dataset_card, describe_contamination, describe_filters, write_dataset_card
from ja_instruct.data.config import DataConfig
from ja_instruct.io import read_json


def _hit(q: str, ex: str, split: str = "train", dropped: bool = True, matched: str = "質問") -> dict:
    return {"benchmark": "rakuda", "question_id": q, "source": "alpaca", "id": ex, "split": split,
            "overlap": 0.9, "matched": matched, "dropped": dropped}


def _contamination(mode: str, hits: list[dict]) -> dict:
    qids = sorted({h["question_id"] for h in hits if h["benchmark"] == "rakuda"})
    return {"mode": mode, "ngram": 20, "min_overlap": 0.5,
            "benchmarks": {"rakuda": {"spec": "../rakuda/questions.jsonl", "questions": 40, "found": len(qids),
                                      "question_ids": qids},
                           "ja_mt_bench": {"spec": "x/ja_mt_bench/question.jsonl", "questions": 80, "found": 0,
                                           "question_ids": []}},
            "hits": hits}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real build (two licences, a held-out split): its folder, stats.json and config.yaml."""
    from pathlib import Path

    assets = Path(__file__).resolve().parents[1] / "assets" / "data"
    cfg = DataConfig(sources=[
        {"name": "alpaca", "path": str(assets / "alpaca.jsonl"), "format": "alpaca", "license": "CC-BY-SA-3.0"},
        {"name": "oasst", "path": str(assets / "oasst.jsonl"), "format": "oasst", "license": "Apache-2.0"}],
        heldout={"fraction": 0.3})
    out = tmp_path_factory.mktemp("card") / "data"
    build_dataset(cfg, out, seed=0, echo=lambda s: None)
    return out, read_json(out / "stats.json"), (out / "config.yaml").read_text(encoding="utf-8")


def test_contamination_sentences():
    assert describe_contamination({"total": 3}) == [
        "Not checked for benchmark contamination (data.contamination is null)."]
    assert "unknown" in describe_contamination({})[0]  # no stats at all: no claim either way
    # drop: two questions found, in three distinct examples (one example matched twice), all removed
    hits = [_hit(q, ex, split="removed") for q, ex in
            (("q1", "alpaca:1"), ("q1", "alpaca:2"), ("q2", "alpaca:2"), ("q2", "alpaca:3"))]
    lines = describe_contamination({"contamination": _contamination("drop", hits)})
    assert lines[0] == ("2 of 40 rakuda questions found in the data: 0 in the training data, 2 only in examples "
                        "removed before training (3 examples dropped as contaminated).")
    assert lines[1] == "0 of 80 ja_mt_bench questions found in the training data."
    assert "20-gram" in lines[2] and "50%" in lines[2] and "drop" in lines[2]
    flag = describe_contamination({"contamination": _contamination("flag", [_hit("q1", "a", dropped=False)])})
    assert flag[0] == "1 of 40 rakuda questions found in the training data (kept: data.contamination.mode is flag)."
    # a question met only in the held-out split is not claimed to be training data
    held = describe_contamination({"contamination": _contamination(
        "flag", [_hit("q1", "a", dropped=False), _hit("q2", "b", split="heldout", dropped=False)])})
    assert held[0] == ("2 of 40 rakuda questions found in the data: 1 in the training data, 1 only in the "
                       "held-out split (kept: data.contamination.mode is flag).")
    # flagged, then removed by a later filter (quality, a weight < 1): not training data either
    gone = describe_contamination({"contamination": _contamination("flag", [_hit("q1", "a", split="removed",
                                                                                  dropped=False)])})
    assert gone[0] == ("1 of 40 rakuda questions found in the data: 0 in the training data, 1 only in examples "
                       "removed before training.")


def test_card_of_a_real_build_parses_and_counts_every_filter(built):
    from huggingface_hub import DatasetCard

    out, stats, config_yaml = built
    write_dataset_card(out, stats, config_yaml)
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["language"] == ["ja"] and meta["task_categories"] == ["text-generation"]
    # two licences: `other`, and the list in the text
    assert meta["license"] == "other" and meta["license_name"] == "mixed"
    assert "CC-BY-SA-3.0" in card.text and "Apache-2.0" in card.text
    assert {f["split"] for f in meta["configs"][0]["data_files"]} == {"train", "heldout"}
    text = card.text
    for name, s in stats["sources"].items():  # each source's row: read, conversations, drops..., kept, held, sampled
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | {s['rows_read']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-3:] == [str(s["kept"]), str(s["heldout"]), str(s["sampled"])]
        assert sum(map(int, cells[3:-3])) == sum(s["dropped"].values())
    for reason in stats["dropped"]:
        assert f"dropped: {reason}" in text
    assert "Not checked for benchmark contamination (data.contamination is null)." in text  # an older stats.json
    assert "## Quality scores" not in text and "Near-duplicate" not in text
    assert f"{stats['heldout']['total']} example" in text and "`heldout/`" in text
    assert config_yaml.strip() in text  # the recipe


def test_card_folder_loads_with_its_configs(built, tmp_path):
    """The card's `configs` make the folder (as pushed with upload_folder) load as train + heldout."""
    import datasets

    out, stats, config_yaml = built
    write_dataset_card(out, stats, config_yaml)
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path))
    assert ds["train"].num_rows == stats["total"] and ds["heldout"].num_rows == stats["heldout"]["total"]


def test_card_states_the_new_checks_and_escapes_matched_text(built):
    from huggingface_hub import DatasetCard

    _, stats, _ = built
    st = copy.deepcopy(stats)
    hostile = "日本の|首都は<b>*どこ*</b>\n# 見出し"
    st["contamination"] = _contamination("drop", [_hit("q7", "alpaca:9", matched=hostile)])
    st["near_dedup"] = {"threshold": 0.8, "ngram": 5, "num_perm": 128, "removed": 4}
    st["quality"] = {"judge": {"backend": "fake", "model": "fake-judge"}, "prompt": "quality-ja@1", "threshold": 6.0,
                     "top_fraction": None, "scored": 9, "judged_now": 2, "cached": 7, "kept": 6, "dropped": 3,
                     "errors": 0, "histogram": {"alpaca": {"3": 2, "7": 4}}, "usage": {"prompt_tokens": 1200,
                                                                                     "completion_tokens": 30},
                     "cost": None}
    st["sources"]["alpaca"]["dropped"].update({"near_duplicate": 4, "contaminated": 1, "low_quality": 3})
    text = dataset_card(st, "sources: []\nnote: '```'\n")
    for line in describe_contamination(st) + describe_filters(st):
        assert line in text
    row = next(line for line in text.splitlines() if line.startswith("| rakuda | q7 |"))
    assert row.replace("\\|", "").count("|") == 9  # 8 cells: the matched text's "|" is not a column
    assert "\\<b\\>" in row and "<b>" not in row.replace("\\<b\\>", "") and "\n" not in row
    # late drops come last, in pipeline order
    head = next(line for line in text.splitlines() if line.startswith("| source | rows read"))
    assert head.index("dropped: duplicate") < head.index("dropped: near_duplicate") \
        < head.index("dropped: contaminated") < head.index("dropped: low_quality")
    hist = text.split("### alpaca")[1]
    assert "| 7 | 4 |" in hist and "| 3 | 2 |" in hist and "| 10 | 0 |" in hist
    # a backtick fence inside the recipe does not close the code block
    assert "````yaml" in text
    assert DatasetCard(text).data.to_dict()["language"] == ["ja"]


@pytest.mark.parametrize("licence,meta", [("Apache-2.0", {"license": "apache-2.0"}),
                                          ("CC-BY-NC-SA-4.0", {"license": "cc-by-nc-sa-4.0"}),
                                          ("LicenseRef-Foo_1",
                                           {"license": "other", "license_name": "licenseref-foo-1"})])
def test_single_licence_front_matter(licence, meta):
    from huggingface_hub import DatasetCard

    stats = {"total": 5, "licenses": {licence: 5},  # an older stats.json: no heldout, no hub commits
             "sources": {"s": {"license": licence, "rows_read": 5, "conversations": 5, "kept": 5, "sampled": 5,
                               "dropped": {}}}}
    got = DatasetCard(dataset_card(stats, "sources: []\n")).data.to_dict()
    assert {k: got.get(k) for k in meta} == meta
    assert got["size_categories"] == ["n<1K"]
