"""The data stage's manifest: written last, up to date when nothing changed, rebuilt with a
reason when a local file, the config or a hub commit changes; hub commits resolved offline
from a fake HF cache folder (no network)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

import ja_instruct.data.build as build_mod
import ja_instruct.data.hub as hub
import ja_instruct.data.records as records
from ja_instruct.cli import main
from ja_instruct.data import build_dataset
from ja_instruct.data.build import fingerprint, is_complete
from ja_instruct.data.config import DataConfig
from ja_instruct.manifest import RunLayout, file_fingerprint, read_manifest

SHA1, SHA2 = "1" * 40, "2" * 40
HUB_ROWS = [{"instruction": "日本一高い山は？", "output": "富士山です。"},
            {"instruction": "琵琶湖は何県？", "output": "滋賀県です。"}]


def test_manifest_written_last_and_skip_or_rebuild_with_reason(tmp_path, data_assets, source, capsys,
                                                               monkeypatch):
    local = tmp_path / "alpaca.jsonl"
    shutil.copy(data_assets / "alpaca.jsonl", local)
    cfg = DataConfig(sources=[source("a", local, "alpaca")])
    out = tmp_path / "d"
    seen_when_written: list[list[str]] = []
    real_write = build_mod.write_manifest

    def spy(folder, manifest):  # what the folder holds when the manifest goes in
        seen_when_written.append(sorted(p.name for p in folder.iterdir()))
        assert folder != out  # inside the temp folder, before the swap
        return real_write(folder, manifest)

    monkeypatch.setattr(build_mod, "write_manifest", spy)
    build_dataset(cfg, out, seed=1)
    assert seen_when_written == [["README.md", "config.yaml", "dataset", "stats.json", "stats.md"]]
    m = read_manifest(out, "data")
    assert m.inputs == {"source:a": file_fingerprint(local)}
    assert m.config["seed"] == 1 and m.config["data"]["sources"][0]["name"] == "a"
    assert is_complete(out, fingerprint(cfg, 1)) and not is_complete(out, fingerprint(cfg, 2))
    assert "building" in capsys.readouterr().out

    before = (out / "stats.json").stat().st_mtime_ns
    again = build_dataset(cfg, out, seed=1)
    printed = capsys.readouterr().out
    assert again["skipped"] is True and "up to date" in printed and printed.count("\n") == 1
    assert (out / "stats.json").stat().st_mtime_ns == before  # nothing rewritten

    # same size, same path, different content: a content fingerprint sees it
    text = local.read_text(encoding="utf-8")
    local.write_text(text.replace("東京", "京都"), encoding="utf-8")
    rebuilt = build_dataset(cfg, out, seed=1)
    printed = capsys.readouterr().out
    assert "skipped" not in rebuilt and "input 'source:a' changed" in printed
    assert read_manifest(out, "data").inputs["source:a"] == file_fingerprint(local)

    build_dataset(cfg, out, seed=2)
    assert "config changed: seed 1 -> 2" in capsys.readouterr().out


def test_failed_write_leaves_no_folder_and_no_manifest(tmp_path, data_assets, source, monkeypatch):
    cfg = DataConfig(sources=[source("a", data_assets / "alpaca.jsonl", "alpaca")])

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(build_mod, "save_config", boom)
    with pytest.raises(OSError):
        build_dataset(cfg, tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_build_without_manifest_is_redone(tmp_path, data_assets, source, capsys):
    cfg = DataConfig(sources=[source("a", data_assets / "alpaca.jsonl", "alpaca")])
    out = tmp_path / "d"
    build_dataset(cfg, out)
    (out / "manifest.json").unlink()  # as an older version left it
    assert not is_complete(out)
    assert "skipped" not in build_dataset(cfg, out)
    assert "no manifest" in capsys.readouterr().out and read_manifest(out, "data") is not None


def test_cli_out_is_registered_in_the_layout(tmp_path, write_recipe, source, data_assets, capsys):
    out = tmp_path / "elsewhere"
    assert main(["data", "build", str(write_recipe([source("a", data_assets / "alpaca.jsonl", "alpaca")])),
                 "--out", str(out)]) == 0
    layout = RunLayout(tmp_path / "run")  # the recipe's out_dir (tests/data/conftest.py)
    assert layout.stage_dir("data") == out and layout.manifest("data") is not None


# --------------------------------------------------------------------------- hub commits

@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An HF hub cache folder for dataset ``o/n`` and a stand-in for `datasets.load_dataset`
    (no network in tests): ``set_main(sha)`` moves refs/main; ``loads`` records the revisions read."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = cache / "datasets--o--n"
    loads: list[str | None] = []

    def set_main(sha: str) -> None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(sha, encoding="utf-8")
        (repo / "snapshots" / sha).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / sha / "train.jsonl").write_text(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in HUB_ROWS), encoding="utf-8")

    def load(src, path):
        import datasets

        assert path == "o/n"
        loads.append(src.revision)
        return datasets.Dataset.from_list(HUB_ROWS)

    def no_network(*a, **k):
        raise AssertionError("the hub API must not be called offline")

    monkeypatch.setattr(records, "_load_dataset", load)
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", no_network)
    return SimpleNamespace(set_main=set_main, loads=loads, cache=cache)


def hub_source(**kw) -> dict:
    return {"name": "hub", "path": "o/n", "format": "alpaca", "license": "Apache-2.0", **kw}


def test_hub_commit_recorded_warned_and_new_commit_rebuilds(tmp_path, fake_hub, capsys):
    fake_hub.set_main(SHA1)
    cfg = DataConfig(sources=[hub_source()])
    out = tmp_path / "d"
    stats = build_dataset(cfg, out)
    printed = capsys.readouterr().out
    assert stats["sources"]["hub"]["commit"] == SHA1 and stats["hub_commits"]["hub"]["commit"] == SHA1
    assert json.loads((out / "stats.json").read_text(encoding="utf-8"))["sources"]["hub"]["commit"] == SHA1
    assert read_manifest(out, "data").inputs == {"source:hub": SHA1}
    assert "warning" in printed and f"revision: {SHA1}" in printed  # how to pin it
    assert SHA1 in (out / "stats.md").read_text(encoding="utf-8")

    assert build_dataset(cfg, out)["skipped"] is True
    assert "up to date" in capsys.readouterr().out

    fake_hub.set_main(SHA2)  # upstream moved on
    stats = build_dataset(cfg, out)
    printed = capsys.readouterr().out
    assert "skipped" not in stats and stats["sources"]["hub"]["commit"] == SHA2
    assert f"hub commit {SHA1[:12]} -> {SHA2[:12]}" in printed


def test_pinned_sha_needs_no_lookup_and_no_warning(tmp_path, fake_hub, capsys):
    # nothing in the cache: a full sha is its own commit
    stats = build_dataset(DataConfig(sources=[hub_source(revision=SHA2)]), tmp_path / "d")
    assert stats["sources"]["hub"]["commit"] == SHA2 and "warning" not in capsys.readouterr().out
    assert fake_hub.loads == [SHA2]


def test_unknown_commit_offline_warns(tmp_path, fake_hub, capsys):
    stats = build_dataset(DataConfig(sources=[hub_source(revision="v1")]), tmp_path / "d")
    printed = capsys.readouterr().out
    assert stats["sources"]["hub"]["commit"] is None
    assert "cannot tell which commit" in printed and "revision" in printed
    assert read_manifest(tmp_path / "d", "data").inputs["source:hub"] == "unresolved:o/n@v1"


def test_online_reads_the_resolved_commit(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info",
                        lambda self, repo, revision=None, timeout=None: SimpleNamespace(sha=SHA2))
    stats = build_dataset(DataConfig(sources=[hub_source(revision="main")]), tmp_path / "d")
    assert stats["sources"]["hub"]["commit"] == SHA2
    assert fake_hub.loads == [SHA2]  # load_dataset got the commit that is recorded, not "main"
    assert "warning" not in capsys.readouterr().out  # the recipe names a revision


def test_missing_relative_path_is_not_found_and_never_hits_the_hub(tmp_path, write_recipe, source, capsys,
                                                                    monkeypatch, fake_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()

    def no_hub(*a, **k):
        raise AssertionError("a local-looking path went to the hub")

    monkeypatch.setattr(hub, "resolve_commit", no_hub)
    monkeypatch.setattr(build_mod, "resolve_commit", no_hub)
    for i, path in enumerate(["nothere/mine.jsonl", "data/mine", "a/b/c", "mine.csv"]):
        rc = main(["data", "build", str(write_recipe([source("a", path, "alpaca")], name=f"r{i}.yaml")),
                   "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and "not found" in err and "data.sources[0].path" in err and path in err, err
        assert "Traceback" not in err
    assert fake_hub.loads == []


def test_on_error_skip_build_is_up_to_date_for_a_raise_run(tmp_path, data_assets, source, capsys):
    # `data build --on-error skip` is what a bad row's error advises; the next `train`/`run`
    # (on_error from the recipe: raise) must reuse that build, not rebuild and fail on the row.
    local = tmp_path / "in.jsonl"
    local.write_text((data_assets / "alpaca.jsonl").read_text(encoding="utf-8") + "not json\n", encoding="utf-8")
    cfg = DataConfig(sources=[source("a", local, "alpaca")])
    out = tmp_path / "d"
    build_dataset(cfg, out, seed=0, on_error="skip")
    assert is_complete(out, fingerprint(cfg, 0))
    again = build_dataset(cfg, out, seed=0)  # cfg.on_error == "raise": would fail if it rebuilt
    assert again["skipped"] is True and "up to date" in capsys.readouterr().out
