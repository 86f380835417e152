"""The benchmarks of issue 11 through the whole loop (`ja-instruct run`, generate -> judge ->
report), with fake models and a fake judge: ELYZA-tasks-100 graded 1-5, and JA MT-Bench in
leaderboard mode (several samples per question, a category x turn table)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from ja_instruct.cli import main

ASSETS = Path(__file__).resolve().parent / "assets" / "questions"
MT_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "ja_mt_bench" / "question.jsonl"


def _recipe(tmp: Path, questions: str, **generate) -> Path:
    recipe = {"name": "bench", "out_dir": str(tmp / "run"), "seed": 3,
              "generate": {"questions": questions, "max_new_tokens": 200, "temperature": 0.7,
                           "models": [{"id": "base", "backend": "fake"}, {"id": "tuned", "backend": "fake"}],
                           **generate},
              "judge": {"backend": {"backend": "fake"}},
              "report": {"bootstrap": 100}}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("fixture", ["elyza_tasks_sample.jsonl", "elyza_tasks_sample.csv"])
def test_elyza_tasks_run_through_the_loop_on_a_1_to_5_scale(tmp_path, monkeypatch, capsys, fixture):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # the CLI installs its own handler
    assert main(["run", str(_recipe(tmp_path, str(ASSETS / fixture)))]) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "judge" / "judgments.jsonl").open(encoding="utf-8")]
    n_items = sum(1 for _ in (ASSETS / "elyza_tasks_sample.jsonl").open(encoding="utf-8"))
    assert len(records) == 2 * n_items  # two models, one turn each
    assert {tuple(r["scale"]) for r in records} == {(1, 5)}
    assert {r["prompt"].split("@")[0] for r in records} == {"single-ja-elyza"}
    assert all(1 <= r["score"] <= 5 for r in records if r["status"] == "ok")
    summary = json.loads((run / "judge" / "summary.json").read_text(encoding="utf-8"))
    assert {summary["models"][m]["scale"] for m in ("base", "tuned")} == {"1-5"}
    html = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert "1-5" in html and "1-10" not in html  # the scale is shown, and no other is claimed


@pytest.mark.shared_data
def test_ja_mt_bench_leaderboard_mode_gives_a_category_by_turn_table(tmp_path, monkeypatch):
    if not MT_BENCH.is_file():
        pytest.skip(f"needs the real JA MT-Bench questions at {MT_BENCH}")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    recipe = _recipe(tmp_path, str(MT_BENCH), samples=3, mt_bench_temperatures=True)
    assert main(["run", str(recipe)]) == 0
    run = tmp_path / "run"
    answers = [json.loads(line) for line in (run / "answers" / "tuned.jsonl").open(encoding="utf-8")]
    assert len(answers) == 60 and all([c["index"] for c in a["choices"]] == [0, 1, 2] for a in answers)
    summary = json.loads((run / "judge" / "summary.json").read_text(encoding="utf-8"))
    table = summary["models"]["tuned"]["by_category_turn"]
    questions = [json.loads(line) for line in MT_BENCH.open(encoding="utf-8")]
    assert set(table) == {q["category"] for q in questions}
    for category, turns in table.items():
        assert set(turns) == {"1", "2"}, category
        for cell in turns.values():
            assert cell["n"] == 3 * sum(q["category"] == category for q in questions)  # every sample judged
    # sampled categories (writing, roleplay: 0.7) differ between samples; greedy ones (math...) cannot
    assert any(cell["spread"] for c in ("writing", "roleplay") for cell in table[c].values())
    md = (run / "report" / "summary.md").read_text(encoding="utf-8")
    assert "writing" in md and "roleplay" in md
