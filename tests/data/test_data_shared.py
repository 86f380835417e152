"""Real data (../shared/data): Rakuda and Japanese MT-Bench answers as fastchat-answers sources.

Skipped with a reason when the folder is absent (a fresh clone has no ../shared)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ja_instruct.cli import main
from ja_instruct.data import build_dataset, load_dataset_dir
from ja_instruct.data.config import DataConfig, SourceConfig
from ja_instruct.data.records import SourceStats
from ja_instruct.data.sources import read_source

pytestmark = pytest.mark.shared_data
REPO = Path(__file__).resolve().parents[2]


def rakuda(shared: Path, **kw) -> dict:
    return {"name": "rakuda", "format": "fastchat-answers", "license": "Apache-2.0",
            "path": str(shared / "rakuda/questions.jsonl"), "answers": [str(shared / "rakuda/answers")], **kw}


def mt_bench(shared: Path, questions: str = "question.jsonl", **kw) -> dict:
    return {"name": "mt-bench", "format": "fastchat-answers", "license": "Apache-2.0",
            "path": str(shared / "ja_mt_bench" / questions),
            "answers": [str(shared / "ja_mt_bench/model_answer")], **kw}


def test_rakuda_answers(shared_data):
    st = SourceStats()
    exs = read_source(SourceConfig(**rakuda(shared_data)), st, "raise")
    n_files = len(list((shared_data / "rakuda/answers").glob("*.jsonl")))
    assert n_files >= 10 and st.rows_read == 40 * n_files == len(exs) and not st.dropped
    assert all([m["role"] for m in e["messages"]] == ["user", "assistant"] for e in exs)
    per_model = Counter(e["id"].split(":")[1] for e in exs)
    assert set(per_model.values()) == {40} and "claude-2" in per_model
    # each of the 40 questions is answered by every model
    assert len({e["messages"][0]["content"] for e in exs}) == 40


def test_mt_bench_two_turns_and_unknown_questions(shared_data):
    st = SourceStats()
    exs = read_source(SourceConfig(**mt_bench(shared_data)), st, "raise")
    n_files = len(list((shared_data / "ja_mt_bench/model_answer").glob("*.jsonl")))
    # question.jsonl has 60 questions; the answer files cover question_full's 80
    assert st.rows_read == 80 * n_files and st.dropped == {"unknown_question": 20 * n_files}
    assert len(exs) == 60 * n_files
    turns = Counter(len(e["messages"]) for e in exs)
    assert set(turns) == {2, 4} and turns[4] >= 60  # gpt-4 / gpt-4o answered both turns
    two = next(e for e in exs if e["id"] == "mt-bench:gpt-4:80")
    q = json.loads(next(line for line in (shared_data / "ja_mt_bench/question.jsonl").open(encoding="utf-8")
                        if json.loads(line)["question_id"] == 80))
    assert [m["content"] for m in two["messages"][::2]] == q["turns"]
    assert [m["role"] for m in two["messages"]] == ["user", "assistant", "user", "assistant"]


def test_build_over_both_with_dedup(shared_data, tmp_path, capsys):
    cfg = DataConfig(sources=[rakuda(shared_data), mt_bench(shared_data, "question_full.jsonl"),
                              # the prompt-level duplicate of Rakuda: one answer per question survives
                              rakuda(shared_data, name="rakuda-again")])
    stats = build_dataset(cfg, tmp_path / "d", seed=0)
    s = stats["sources"]
    assert s["rakuda-again"]["kept"] == 0 and s["rakuda-again"]["dropped"]["duplicate"] >= 590
    assert s["rakuda"]["dropped"].get("duplicate", 0) < 5  # few models gave identical answers
    assert stats["total"] == s["rakuda"]["kept"] + s["mt-bench"]["kept"] > 1200
    printed = capsys.readouterr().out
    assert "rakuda" in printed and "mt-bench" in printed and "total:" in printed
    ds = load_dataset_dir(tmp_path / "d")
    assert len(ds) == stats["total"] and set(ds["license"]) == {"Apache-2.0"}
    by_prompt = build_dataset(cfg.model_copy(update={"clean": cfg.clean.model_copy(update={"dedup_key": "prompt"})}),
                              tmp_path / "p", seed=0)
    assert by_prompt["sources"]["rakuda"]["kept"] == 40  # one answer per question


def test_shared_data_recipe_via_cli(shared_data, tmp_path, capsys, monkeypatch):
    if shared_data.resolve() != (REPO.parent / "shared" / "data").resolve():
        pytest.skip("recipes/shared-data.yaml points at ../shared/data; JA_INSTRUCT_SHARED_DATA moved it")
    monkeypatch.chdir(REPO)  # the recipe's paths are relative to the repository root
    assert main(["data", "build", "recipes/shared-data.yaml", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "rakuda-answers" in out and "ja-mt-bench-answers" in out
    stats = json.loads((tmp_path / "s/stats.json").read_text(encoding="utf-8"))
    assert stats["sources"]["ja-mt-bench-answers"]["rows_read"] == 720
