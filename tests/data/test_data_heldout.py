"""The held-out split (``data.heldout``): chosen per cleaned example by a seeded hash, stable when
sources are added, disjoint from training (weight repeats included), capped, and recorded in the
manifest, stats.json, stats.md and the terminal table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ja_instruct.data import build_dataset, load_dataset_dir, load_heldout
from ja_instruct.data.build import fingerprint, is_complete
from ja_instruct.data.config import DataConfig
from ja_instruct.data.mix import heldout_key
from ja_instruct.errors import UserError
from ja_instruct.manifest import read_manifest


def _alpaca(path: Path, n: int, tag: str) -> Path:
    """``n`` distinct alpaca rows (ids ``0..n-1``) whose texts carry ``tag``."""
    rows = [{"index": str(i), "instruction": f"{tag}の質問{i}は？", "input": "",
             "output": f"{tag}の答え{i}です。"} for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    return {"a": _alpaca(tmp_path / "a.jsonl", 120, "甲"), "b": _alpaca(tmp_path / "b.jsonl", 80, "乙")}


def _cfg(source, files, names=("a",), fraction=0.2, max_examples=None, **kw) -> DataConfig:
    weights = kw.pop("weights", {})
    return DataConfig(sources=[source(n, files[n], "alpaca", weight=weights.get(n, 1.0)) for n in names],
                      heldout={"fraction": fraction, "max_examples": max_examples}, **kw)


def _ids(ds) -> list[str]:
    return list(ds["id"]) if ds is not None else []


def test_split_is_deterministic_follows_the_rule_and_is_disjoint(tmp_path, files, source, capsys):
    cfg = _cfg(source, files)
    stats = build_dataset(cfg, tmp_path / "x", seed=5)
    held, train = load_heldout(tmp_path / "x"), load_dataset_dir(tmp_path / "x")
    ids = set(_ids(held))
    # held out iff the hashed key is below the fraction, over every cleaned example
    expected = {f"a:{i}" for i in range(120) if heldout_key(5, "a", f"a:{i}") < 0.2}
    assert ids == expected and 0 < len(ids) < 120
    assert not ids & set(train["id"]) and len(ids) + len(train) == 120
    assert not {m[-1]["content"] for m in held["messages"]} & {m[-1]["content"] for m in train["messages"]}
    assert held.features == train.features
    keys = [heldout_key(5, "a", i) for i in held["id"]]
    assert keys == sorted(keys)  # ascending key order: any prefix is a seeded sample
    # counts everywhere: stats.json, manifest, stats.md, the terminal
    assert stats["total"] == len(train) and stats["sources"]["a"]["heldout"] == len(ids)
    assert stats["heldout"] == {"total": len(ids), "fraction": 0.2, "max_examples": None}
    assert json.loads((tmp_path / "x" / "stats.json").read_text(encoding="utf-8"))["heldout"] == stats["heldout"]
    m = read_manifest(tmp_path / "x", "data")
    assert m.outputs["heldout"] == "heldout" and m.details["heldout"] == len(ids)
    line = f"held out {len(ids)} examples for evaluation"
    assert line in capsys.readouterr().out and line in (tmp_path / "x" / "stats.md").read_text(encoding="utf-8")

    build_dataset(cfg, tmp_path / "y", seed=5)
    assert _ids(load_heldout(tmp_path / "y")) == _ids(held)  # same seed, same split, same order
    build_dataset(cfg, tmp_path / "z", seed=6)
    assert set(_ids(load_heldout(tmp_path / "z"))) != ids  # the seed is part of the key


def test_adding_a_source_keeps_the_first_sources_split(tmp_path, files, source):
    build_dataset(_cfg(source, files, ("a",)), tmp_path / "one", seed=1)
    stats = build_dataset(_cfg(source, files, ("a", "b")), tmp_path / "two", seed=1)
    one, two = load_heldout(tmp_path / "one"), load_heldout(tmp_path / "two")
    assert [i for i in two["id"] if i.startswith("a:")] == list(one["id"])
    assert stats["sources"]["b"]["heldout"] > 0
    assert stats["heldout"]["total"] == len(two) == stats["sources"]["a"]["heldout"] + stats["sources"]["b"]["heldout"]
    # a weight-0 source contributes nothing, held out or not
    off = build_dataset(_cfg(source, files, ("a", "b"), weights={"b": 0}), tmp_path / "off", seed=1)
    assert off["sources"]["b"]["heldout"] == 0 and _ids(load_heldout(tmp_path / "off")) == list(one["id"])


def test_max_examples_keeps_the_smallest_keys_and_the_rest_trains(tmp_path, files, source):
    full = build_dataset(_cfg(source, files, ("a", "b"), fraction=0.5), tmp_path / "full", seed=2)
    capped = build_dataset(_cfg(source, files, ("a", "b"), fraction=0.5, max_examples=7), tmp_path / "cap", seed=2)
    everything = _ids(load_heldout(tmp_path / "full"))
    assert full["heldout"]["total"] > 7
    assert _ids(load_heldout(tmp_path / "cap")) == everything[:7]  # over both sources
    assert capped["heldout"] == {"total": 7, "fraction": 0.5, "max_examples": 7}
    assert capped["total"] == 200 - 7 and full["total"] == 200 - full["heldout"]["total"]


def test_weight_repeats_never_bring_a_heldout_example_into_training(tmp_path, files, source):
    cfg = _cfg(source, files, ("a",), fraction=0.3, weights={"a": 2.5})
    stats = build_dataset(cfg, tmp_path / "w", seed=3)
    held = set(_ids(load_heldout(tmp_path / "w")))
    train = load_dataset_dir(tmp_path / "w")["id"]
    assert held and not held & {i.split("#")[0] for i in train}
    rest = 120 - len(held)
    assert stats["sources"]["a"]["sampled"] == len(train) == round(2.5 * rest)
    assert stats["sources"]["a"]["kept"] == 120


def test_no_split_by_default_and_the_manifest_contract_holds(tmp_path, files, source, capsys):
    out = tmp_path / "d"
    plain = DataConfig(sources=[source("a", files["a"], "alpaca")])
    stats = build_dataset(plain, out, seed=0)
    assert not (out / "heldout").exists() and load_heldout(out) is None
    assert "heldout" not in read_manifest(out, "data").outputs
    assert stats["heldout"]["total"] == 0 and stats["total"] == 120
    assert "held out" not in capsys.readouterr().out

    # turning the split on rebuilds, names the change, and the result is up to date afterwards
    split = _cfg(source, files, fraction=0.1)
    build_dataset(split, out, seed=0)
    assert "heldout.fraction 0.0 -> 0.1" in capsys.readouterr().out
    assert is_complete(out, fingerprint(split, 0)) and load_heldout(out / "dataset") is not None
    assert build_dataset(split, out, seed=0)["skipped"] is True
    # a build whose held-out folder went missing is not complete
    import shutil

    shutil.rmtree(out / "heldout")
    assert not is_complete(out, fingerprint(split, 0))


def test_load_heldout_refuses_what_is_not_a_built_dataset(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(UserError, match="no built dataset"):
        load_heldout(tmp_path / "junk")


def test_everything_held_out_is_a_clear_error(tmp_path, source):
    path = tmp_path / "one.jsonl"
    seed = next(s for s in range(100) if heldout_key(s, "a", "a:0") < 0.5)
    _alpaca(path, 1, "丙")
    cfg = DataConfig(sources=[source("a", path, "alpaca")], heldout={"fraction": 0.5})
    with pytest.raises(UserError, match="held out") as e:
        build_dataset(cfg, tmp_path / "d", seed=seed)
    assert e.value.field == "data.heldout" and not (tmp_path / "d").exists()


def test_heldout_config_limits(source, files):
    for bad in ({"fraction": 0.6}, {"fraction": -0.1}, {"fraction": 0.1, "max_examples": 0}, {"frac": 0.1}):
        with pytest.raises(ValidationError):
            DataConfig(sources=[source("a", files["a"], "alpaca")], heldout=bad)


# --------------------------------------------------------------------------- split groups

def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _oasst_trees(path: Path, trees: int) -> Path:
    """Per tree: a root prompt, one shared answer, then 3 branches (follow-up + answer): with
    ``thread_mode: all`` three threads per tree sharing the prompt and the first answer."""
    rows = []
    for t in range(trees):
        rows += [{"message_id": f"r{t}", "parent_id": None, "role": "prompter", "text": f"木{t}の質問です。"},
                 {"message_id": f"s{t}", "parent_id": f"r{t}", "role": "assistant",
                  "text": f"木{t}の共通の答え。"}]
        for b in range(3):
            rows += [{"message_id": f"p{t}_{b}", "parent_id": f"s{t}", "role": "prompter",
                      "text": f"木{t}の続き{b}は？"},
                     {"message_id": f"a{t}_{b}", "parent_id": f"p{t}_{b}", "role": "assistant",
                      "text": f"木{t}の枝{b}の答え。"}]
    return _jsonl(path, rows)


def _fastchat(tmp_path: Path, questions: int) -> tuple[Path, Path]:
    """``questions`` questions, each answered by two models (different answer texts)."""
    qs = _jsonl(tmp_path / "q.jsonl", [{"question_id": q, "category": "c", "turns": [f"問題{q}を解いて。"]}
                                       for q in range(questions)])
    folder = tmp_path / "answers"
    folder.mkdir()
    for model in ("m1", "m2"):
        _jsonl(folder / f"{model}.jsonl", [{"question_id": q, "model_id": model,
                                            "choices": [{"turns": [f"{model}による問題{q}の答え。"]}]}
                                           for q in range(questions)])
    return qs, folder


def _group_of(example_id: str) -> str:
    """The tree of an oasst thread id (``o:a<tree>_<branch>``), the question of a fastchat one (``f:<model>:<q>``)."""
    source, rest = example_id.split(":", 1)
    return f"o:{rest.split('_')[0]}" if source == "o" else f"f:{rest.split(':')[1]}"


def _texts(ds, roles=None) -> set[str]:
    return {m["content"] for conv in ds["messages"] for m in conv if roles is None or m["role"] in roles}


@pytest.fixture
def grouped(tmp_path, source):
    """A data config with an oasst (thread_mode all) and a two-model fastchat-answers source."""
    trees = _oasst_trees(tmp_path / "oasst.jsonl", 40)
    qs, answers = _fastchat(tmp_path, 40)

    def cfg(fraction=0.2, max_examples=None) -> DataConfig:
        return DataConfig(sources=[source("o", trees, "oasst", thread_mode="all"),
                                   source("f", qs, "fastchat-answers", answers=[str(answers)])],
                          heldout={"fraction": fraction, "max_examples": max_examples})
    return cfg


def test_shared_turns_never_cross_the_split(tmp_path, grouped):
    """Sibling oasst threads and two models' answers to one question go to one side, whole: no
    held-out assistant answer (nor prompt) appears in any training example."""
    stats = build_dataset(grouped(), tmp_path / "d", seed=0)
    held, train = load_heldout(tmp_path / "d"), load_dataset_dir(tmp_path / "d")
    assert stats["sources"]["o"]["kept"] == 120 and stats["sources"]["f"]["kept"] == 80
    for name in ("o", "f"):
        assert 0 < stats["sources"][name]["heldout"] < stats["sources"][name]["kept"]
    assert not _texts(held, {"assistant"}) & _texts(train, {"assistant"})
    assert not _texts(held) & _texts(train)  # the shared prompts / questions too
    # whole groups, chosen by the hash of (seed, source, group)
    held_ids = set(held["id"])
    trees = {t for t in range(40) if heldout_key(0, "o", f"o:r{t}") < 0.2}
    assert {i for i in held_ids if i.startswith("o:")} == {f"o:a{t}_{b}" for t in trees for b in range(3)}
    questions = {q for q in range(40) if heldout_key(0, "f", f"f:{q}") < 0.2}
    assert {i for i in held_ids if i.startswith("f:")} == {f"f:{m}:{q}" for q in questions for m in ("m1", "m2")}
    assert len(held) + len(train) == 200


def test_max_examples_takes_whole_groups_in_key_order(tmp_path, grouped):
    build_dataset(grouped(fraction=0.5), tmp_path / "full", seed=4)
    stats = build_dataset(grouped(fraction=0.5, max_examples=7), tmp_path / "cap", seed=4)
    full, capped = load_heldout(tmp_path / "full"), load_heldout(tmp_path / "cap")
    train = load_dataset_dir(tmp_path / "cap")
    # groups of 3 (oasst: one tree) and 2 (fastchat: one question), consecutive in the uncapped
    # split; the cap takes whole groups in that order, stopping before the first that would exceed it
    # (with seed 4 that stops at 5 where skipping on to a smaller group would have reached 7)
    sizes = [len(list(g)) for _, g in itertools.groupby(full["id"], key=_group_of)]
    assert set(sizes) == {2, 3}  # every group whole and contiguous, both kinds present
    n = 0
    for size in sizes:
        if n + size > 7:
            break
        n += size
    assert list(capped["id"]) == list(full["id"])[:n] and 0 < n <= 7
    assert stats["heldout"]["total"] == n and len(train) == 200 - n
    assert not _texts(capped) & _texts(train)


def test_an_empty_split_that_was_asked_for_stops_the_build(tmp_path, files, source):
    """A fraction no key falls under (or a cap below the first group) would otherwise surface as
    "no held-out split" in `generate`, after training."""
    lowest = min(heldout_key(5, "a", f"a:{i}") for i in range(120))
    with pytest.raises(UserError, match="came out empty") as err:
        build_dataset(_cfg(source, files, fraction=lowest / 2), tmp_path / "x", seed=5)
    assert err.value.field == "data.heldout" and not (tmp_path / "x").exists()
    build_dataset(_cfg(source, files, fraction=lowest * 1.0001), tmp_path / "y", seed=5)
    assert len(load_heldout(tmp_path / "y")) == 1
