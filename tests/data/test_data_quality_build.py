"""`data.quality` inside a build: the fake judge's filter, the `quality` column, the cache across
builds, `--dry-run`, and what the data fingerprint follows."""

from __future__ import annotations

import json

import pytest

from ja_instruct.data import build_dataset, load_dataset_dir
from ja_instruct.data.build import data_manifest
from ja_instruct.data.config import DataConfig
from ja_instruct.judge.backends import fake_quality

ANSWERS = ["東京です。", "大阪は日本第二の都市圏です。", "I don't know.", "はい。" * 30,
           "富士山は標高3776メートルで、日本で最も高い山です。", "わかりません", "水は100度で沸騰します（1気圧）。",
           "Paris", "桜は春に咲きます。日本各地でお花見が行われます。"]


def write_source(path, answers):
    with path.open("w", encoding="utf-8") as f:
        for i, a in enumerate(answers):
            f.write(json.dumps({"instruction": f"質問{i}: 日本について教えてください。", "input": "", "output": a},
                               ensure_ascii=False) + "\n")
    return path


def config(path, **quality) -> DataConfig:
    return DataConfig(sources=[{"name": "a", "path": str(path), "format": "alpaca", "license": "Apache-2.0"}],
                      quality={"judge": {"backend": "fake"}, "threshold": 6, **quality}, shuffle=False)


def test_build_keeps_exactly_the_examples_above_the_threshold_then_rescoring_is_free(tmp_path, calls):
    src = write_source(tmp_path / "a.jsonl", ANSWERS)
    out = tmp_path / "d"
    lines: list[str] = []
    s = build_dataset(config(src), out, echo=lines.append)
    assert len(calls) == len(ANSWERS)
    # the judge's own scores (rounded as the fake judge rounds them), not the module's selection
    expected = {a: float(int(round(min(10.0, max(1.0, fake_quality(a)))))) for a in ANSWERS}
    keep = [a for a in ANSWERS if expected[a] >= 6]
    assert 0 < len(keep) < len(ANSWERS)
    ds = load_dataset_dir(out)
    assert sorted(m[-1]["content"] for m in ds["messages"]) == sorted(keep)
    assert all(q == expected[m[-1]["content"]] for q, m in zip(ds["quality"], ds["messages"]))
    assert s["sources"]["a"]["dropped"] == {"low_quality": len(ANSWERS) - len(keep)}
    assert s["quality"]["kept"] == len(keep) and s["quality"]["judged_now"] == len(ANSWERS)
    assert any(line.startswith("quality: scored") for line in lines)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "low_quality" in card and "`quality`" in card

    # a forced rebuild scores from the cache beside the folder: 0 judge calls, same data
    calls.clear()
    s2 = build_dataset(config(src), out, force=True, echo=lines.append)
    assert calls == [] and s2["quality"]["judged_now"] == 0 and s2["quality"]["cached"] == len(ANSWERS)
    assert load_dataset_dir(out)["id"] == ds["id"]

    # one edited example: only it is judged again, and the build says why it rebuilt
    edited = ANSWERS[:-1] + ["桜は春に咲きます。"]
    write_source(src, edited)
    s3 = build_dataset(config(src), out, echo=lines.append)
    assert calls == ["桜は春に咲きます。"] and s3["quality"]["judged_now"] == 1


def test_dry_run_estimates_and_writes_nothing(tmp_path, calls):
    src = write_source(tmp_path / "a.jsonl", ANSWERS)
    out = tmp_path / "d"
    lines: list[str] = []
    r = build_dataset(config(src, judge={"backend": "fake", "price_prompt_per_1k": 0.01}), out, dry_run=True,
                      echo=lines.append)
    assert r["dry_run"] is True and calls == []
    assert not out.exists() and not (tmp_path / "d.quality-cache.jsonl").exists()
    assert any("need a judge call" in line for line in lines), lines


def test_unscored_data_keeps_its_schema_and_prices_do_not_rebuild(tmp_path):
    src = write_source(tmp_path / "a.jsonl", ANSWERS[:3])
    plain = DataConfig(sources=[{"name": "a", "path": str(src), "format": "alpaca", "license": "Apache-2.0"}])
    build_dataset(plain, tmp_path / "p", echo=lambda s: None)
    assert "quality" not in load_dataset_dir(tmp_path / "p").column_names
    fp = data_manifest(config(src), 0, {}).fingerprint
    priced = config(src, judge={"backend": "fake", "price_prompt_per_1k": 1.0, "concurrency": 2})
    assert data_manifest(priced, 0, {}).fingerprint == fp
    assert data_manifest(config(src, threshold=7), 0, {}).fingerprint != fp


def test_quality_sources_must_name_a_source(tmp_path):
    from pydantic import ValidationError

    src = write_source(tmp_path / "a.jsonl", ANSWERS[:3])
    with pytest.raises(ValidationError, match="names no source: nope"):  # at recipe load, before any read
        config(src, sources=["nope"])


def test_no_credentials_in_manifest_card_or_stats(tmp_path, calls):
    src = write_source(tmp_path / "a.jsonl", ANSWERS[:4])
    # a fake judge with a URL that carries credentials (as a user's openai judge might)
    cfg = config(src, judge={"backend": "fake", "base_url": "http://user:s3cretTOKEN@judge.example/v1?key=abc"})
    build_dataset(cfg, tmp_path / "d", echo=lambda s: None)
    for name in ("manifest.json", "README.md", "stats.json", "stats.md"):
        text = (tmp_path / "d" / name).read_text(encoding="utf-8")
        assert "s3cretTOKEN" not in text and "key=abc" not in text, name
