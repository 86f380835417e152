"""`ja-instruct data build` / `build_dataset`: output layout, cleaning, mixture, licences,
skip-when-complete, atomic writes."""

from __future__ import annotations

import json

import pytest
import yaml

from ja_instruct.cli import main
from ja_instruct.data import build_dataset, load_dataset_dir
from ja_instruct.data.clean import dedup_key, normalize_text
from ja_instruct.data.config import DataConfig
from ja_instruct.errors import UserError


@pytest.fixture
def mixed(data_assets, source):
    """Three local sources of different formats."""
    return [source("alpaca", data_assets / "alpaca.jsonl", "alpaca", "CC-BY-SA-3.0"),
            source("oasst", data_assets / "oasst.jsonl", "oasst"),
            source("msgs", data_assets / "messages.jsonl", "messages", "MIT")]


def test_cli_build_writes_dataset_dir(tmp_path, write_recipe, mixed, capsys):
    out = tmp_path / "out"
    assert main(["data", "build", str(write_recipe(mixed)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # per-source counts and drop reasons on the terminal
    assert "alpaca" in printed and "failed_translation 1" in printed and "duplicate 1" in printed
    assert "empty 1" in printed and "unreachable 1" in printed and "total: 7 examples" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "dataset", "manifest.json", "stats.json",
                                                     "stats.md"]
    ds = load_dataset_dir(out)
    assert ds.column_names == ["id", "source", "license", "commercial", "messages"]
    assert len(ds) == 7 and len(set(ds["id"])) == 7
    row = next(r for r in ds if r["id"] == "msgs:sharegpt-1")
    assert row["source"] == "msgs" and row["license"] == "MIT" and row["commercial"] is True
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert load_dataset_dir(out / "dataset").num_rows == 7  # the subfolder works too
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    a = stats["sources"]["alpaca"]
    assert (a["rows_read"], a["conversations"], a["kept"], a["sampled"]) == (6, 5, 3, 3)
    assert a["dropped"] == {"duplicate": 1, "empty": 1, "failed_translation": 1}
    assert stats["licenses"] == {"Apache-2.0": 2, "CC-BY-SA-3.0": 3, "MIT": 2}
    assert stats["total"] == 7 and stats["commercial_use_ok"] is True
    md = (out / "stats.md").read_text(encoding="utf-8")
    assert "| alpaca | alpaca | CC-BY-SA-3.0 |" in md and "| duplicate | 1 |" in md
    cfg = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert [s["name"] for s in cfg["sources"]] == ["alpaca", "oasst", "msgs"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dirs left


def test_second_build_skips_and_changed_config_rebuilds(tmp_path, data_assets, source, capsys):
    cfg = DataConfig(sources=[source("a", data_assets / "alpaca.jsonl", "alpaca")])
    out = tmp_path / "d"
    first = build_dataset(cfg, out, seed=1)
    assert "skipped" not in first
    again = build_dataset(cfg, out, seed=1)
    assert again["skipped"] is True and "already built" in capsys.readouterr().out
    changed = build_dataset(cfg.model_copy(update={"shuffle": False}), out, seed=1)
    assert "skipped" not in changed
    assert "skipped" not in build_dataset(cfg, out, seed=2)  # the seed is part of the fingerprint
    assert load_dataset_dir(out).num_rows == 3


def test_dedup_exact_vs_normalized_and_across_sources(tmp_path, data_assets, source):
    a = source("a", data_assets / "alpaca.jsonl", "alpaca")
    # the same file again as a second source: every row is a duplicate of the first source
    b = source("b", data_assets / "alpaca.jsonl", "alpaca")
    s = build_dataset(DataConfig(sources=[a, b]), tmp_path / "n")
    assert s["sources"]["a"]["kept"] == 3 and s["sources"]["b"]["kept"] == 0
    assert s["sources"]["b"]["dropped"]["duplicate"] == 4
    s = build_dataset(DataConfig(sources=[a], clean={"dedup": "exact"}), tmp_path / "e")
    assert s["sources"]["a"]["kept"] == 4  # "？" vs "?" differ without NFKC
    s = build_dataset(DataConfig(sources=[a], clean={"dedup": "none", "strip": False}), tmp_path / "x")
    assert s["sources"]["a"]["kept"] == 4 and s["sources"]["a"]["dropped"]["empty"] == 1


def test_normalisation_and_dedup_key():
    assert normalize_text("  ＡＢＣ　ｶﾀｶﾅ \n\t です？ ") == "abc カタカナ です?"
    alpaca = [{"role": "user", "content": "要約して"}, {"role": "input", "content": "本文"},
              {"role": "assistant", "content": "答え"}]
    merged = [{"role": "user", "content": "要約して\n\n本文"}, {"role": "assistant", "content": "答え"}]
    assert dedup_key(alpaca, "normalized", "conversation") == dedup_key(merged, "normalized", "conversation")
    assert dedup_key(alpaca, "exact", "conversation") == dedup_key(merged, "exact", "conversation")
    other = [merged[0], {"role": "assistant", "content": "別の答え"}]
    assert dedup_key(other, "normalized", "conversation") != dedup_key(merged, "normalized", "conversation")
    assert dedup_key(other, "normalized", "prompt") == dedup_key(merged, "normalized", "prompt")


def test_length_filters(tmp_path, data_assets, source):
    a = source("a", data_assets / "alpaca.jsonl", "alpaca")
    s = build_dataset(DataConfig(sources=[a], clean={"min_chars": 12, "max_chars": 40}), tmp_path / "o")
    d = s["sources"]["a"]["dropped"]
    assert d["too_short"] == 2 and d["too_long"] == 1 and s["sources"]["a"]["kept"] == 1
    s = build_dataset(DataConfig(sources=[source("m", data_assets / "messages.jsonl", "messages")],
                                 clean={"max_turns": 1}), tmp_path / "t")
    assert s["sources"]["m"]["dropped"]["too_many_turns"] == 1


def test_weights_up_and_down_sample_deterministically(tmp_path, data_assets, source):
    fq = data_assets / "fastchat/questions.jsonl"
    fa = [str(data_assets / "fastchat/answers")]
    up = source("up", data_assets / "alpaca.jsonl", "alpaca", weight=2.5)        # 4 kept -> 10
    down = source("down", fq, "fastchat-answers", answers=fa, weight=0.4)        # 5 kept -> 2
    off = source("off", data_assets / "messages.jsonl", "messages", weight=0)    # left out
    cfg = DataConfig(sources=[up, down, off], clean={"dedup": "none"})
    s = build_dataset(cfg, tmp_path / "a", seed=3)
    assert s["sources"]["up"]["sampled"] == 10 and s["sources"]["down"]["sampled"] == 2
    assert s["sources"]["off"]["rows_read"] == 0 and s["sources"]["off"]["sampled"] == 0
    ids = load_dataset_dir(tmp_path / "a")["id"]
    assert len(ids) == len(set(ids)) == 12 and "up:0#1" in ids
    assert sum(i.startswith("up:") and "#2" in i for i in ids) == 2  # the seeded remainder
    again = load_dataset_dir(build_dataset(cfg, tmp_path / "b", seed=3) and tmp_path / "b")["id"]
    assert again == ids  # same seed, same mixture and order
    other = load_dataset_dir(build_dataset(cfg, tmp_path / "c", seed=4) and tmp_path / "c")["id"]
    assert other != ids


def test_licence_policy(tmp_path, data_assets, source):
    nc = source("alpaca-ja", data_assets / "alpaca.jsonl", "alpaca", "CC-BY-NC-4.0")
    ok = source("msgs", data_assets / "messages.jsonl", "messages", "Apache-2.0")
    with pytest.raises(UserError) as e:
        build_dataset(DataConfig(sources=[ok, nc]), tmp_path / "c")
    assert "'alpaca-ja'" in str(e.value) and "CC-BY-NC-4.0" in str(e.value)
    assert not (tmp_path / "c").exists()
    flagged = source("own", data_assets / "messages.jsonl", "messages", "LicenseRef-internal", commercial=False)
    with pytest.raises(UserError, match="commercial: false"):
        build_dataset(DataConfig(sources=[flagged]), tmp_path / "c")
    s = build_dataset(DataConfig(sources=[ok, nc], licence_policy="noncommercial"), tmp_path / "nc")
    assert s["licenses"] == {"Apache-2.0": 2, "CC-BY-NC-4.0": 3} and s["commercial_use_ok"] is False
    ds = load_dataset_dir(tmp_path / "nc")
    assert {(r["source"], r["license"], r["commercial"]) for r in ds} == {
        ("msgs", "Apache-2.0", True), ("alpaca-ja", "CC-BY-NC-4.0", False)}


def test_empty_mixture_writes_nothing(tmp_path, data_assets, source):
    a = source("a", data_assets / "alpaca.jsonl", "alpaca", where={"instruction": "^存在しない"})
    with pytest.raises(UserError, match="mixture is empty"):
        build_dataset(DataConfig(sources=[a]), tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_folder(tmp_path, data_assets, source):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(UserError, match="not a dataset directory"):
        build_dataset(DataConfig(sources=[source("a", data_assets / "alpaca.jsonl", "alpaca")]), out)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_unknown_licence_needs_explicit_commercial_flag(tmp_path, data_assets, source):
    unknown = source("u", data_assets / "alpaca.jsonl", "alpaca", "unknown")
    with pytest.raises(UserError, match="does not say it allows commercial use"):
        build_dataset(DataConfig(sources=[unknown]), tmp_path / "o")
    s = build_dataset(DataConfig(sources=[{**unknown, "commercial": True}]), tmp_path / "o")
    assert s["commercial_use_ok"] is True


def test_fingerprint_of_an_old_recipe_is_what_the_previous_release_computed(tmp_path, monkeypatch):
    # A recipe that does not use near_dedup / contamination / quality must keep its fingerprint,
    # or every model trained on its data would look stale. The literal is what the code before
    # these sections computed (git 59e85b0) for this very config and file.
    from ja_instruct.data.build import data_manifest

    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "日本の首都はどこですか？", "input": "",
                                                  "output": "東京です。"}, ensure_ascii=False) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(sources=[{"name": "a", "path": "a.jsonl", "format": "alpaca", "license": "Apache-2.0",
                               "weight": 1.5}], heldout={"fraction": 0.1, "max_examples": 4},
                     clean={"dedup": "exact", "max_chars": 9000})
    assert data_manifest(cfg, 7, {}).fingerprint == "25e750f66de537e0"


def test_fingerprint_ignores_new_sections_while_off(data_assets, source):
    from ja_instruct.data.build import data_manifest

    cfg = DataConfig(sources=[source("a", data_assets / "alpaca.jsonl", "alpaca")], clean={"dedup": "exact"})
    m = data_manifest(cfg, 3, {})
    assert "near_dedup" not in m.config["data"]["clean"]
    assert "contamination" not in m.config["data"] and "quality" not in m.config["data"]
    assert m.inputs == {"source:a": m.inputs["source:a"]}
    fingerprints = {m.fingerprint}
    judge = {"backend": "fake", "model": "fake-judge"}
    for update in ({"clean": {"dedup": "exact", "near_dedup": {}}}, {"contamination": {}},
                   {"contamination": {"mode": "drop"}}, {"quality": {"judge": judge, "threshold": 6}},
                   {"quality": {"judge": judge, "threshold": 7}},
                   {"quality": {"judge": {**judge, "model": "other"}, "threshold": 7}}):
        fp = data_manifest(DataConfig(**{**cfg.model_dump(), **update}), 3, {}).fingerprint
        assert fp not in fingerprints, update
        fingerprints.add(fp)
    # what does not change a score does not change the data
    q = DataConfig(**{**cfg.model_dump(), "quality": {"judge": judge, "threshold": 6}})
    slow = DataConfig(**{**cfg.model_dump(), "quality": {"judge": {**judge, "concurrency": 1, "max_retries": 0},
                                                          "threshold": 6, "cache": "/tmp/elsewhere.jsonl"}})
    assert data_manifest(q, 3, {}).fingerprint == data_manifest(slow, 3, {}).fingerprint
    assert data_manifest(q, 3, {}).config["data"]["quality"]["judge"]["backend"] == "fake"


def test_benchmark_file_is_an_input(tmp_path, data_assets, source):
    bench = tmp_path / "elyza" / "tasks.jsonl"
    bench.parent.mkdir()
    bench.write_text(json.dumps({"question_id": 1, "turns": ["富士山の高さは何メートルですか？"]}, ensure_ascii=False)
                     + "\n", encoding="utf-8")
    cfg = DataConfig(sources=[source("a", data_assets / "alpaca.jsonl", "alpaca")],
                     contamination={"benchmarks": [str(bench), "embedded:questions_ja.jsonl"]})
    from ja_instruct.data.build import data_manifest

    inputs = data_manifest(cfg, 0, {}).inputs
    assert set(inputs) == {"source:a", "benchmark:tasks", "benchmark:embedded:questions_ja"}
    lines: list[str] = []
    build_dataset(cfg, tmp_path / "out", echo=lines.append)
    assert build_dataset(cfg, tmp_path / "out", echo=lines.append)["skipped"] is True
    bench.write_text(bench.read_text(encoding="utf-8").replace("富士山", "浅間山"), encoding="utf-8")
    assert data_manifest(cfg, 0, {}).inputs["benchmark:tasks"] != inputs["benchmark:tasks"]
    assert "skipped" not in build_dataset(cfg, tmp_path / "out", echo=lines.append)
    assert any("input 'benchmark:tasks' changed" in line for line in lines)
