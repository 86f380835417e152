"""`ja-instruct run`: the whole pipeline on a tiny recipe, a kill mid-training, resume, no-op re-run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ja_instruct.cli import main
from ja_instruct.pipeline import STATE_FILE

QUESTIONS = [
    {"question_id": "q1", "category": "地理", "turns": ["日本の首都はどこですか？"]},
    {"question_id": "q2", "category": "歴史", "turns": ["江戸時代について説明してください。"]},
    {"question_id": "q3", "category": "社会", "turns": ["こんにちは。", "今日はいい天気ですね。"]},
]


def _conversations(n: int) -> list[dict]:
    topics = ["東京", "富士山", "機械学習", "江戸時代", "天気", "散歩", "政治", "経済"]
    return [{"id": f"c{i}", "messages": [
        {"role": "user", "content": f"{topics[i % len(topics)]}について教えてください。"},
        {"role": "assistant", "content": f"{topics[i % len(topics)]}は日本の歴史や社会で大切です。"}]}
        for i in range(n)]


def write_tiny_recipe(tmp: Path, model_dir: Path, **sections) -> Path:
    """data (16 conversations) -> train (4 steps) -> generate (base + tuned, 3 questions) -> fake judge -> report."""
    src = tmp / "sft.jsonl"
    src.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in _conversations(16)), encoding="utf-8")
    qs = tmp / "questions.jsonl"
    qs.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    recipe = {
        "name": "tiny", "out_dir": str(tmp / "run"), "seed": 1,
        "data": {"sources": [{"name": "toy", "path": str(src), "format": "messages", "license": "CC-BY-4.0"}]},
        "train": {"model": str(model_dir), "template": "plamo", "max_length": 64, "micro_batch_size": 2,
                  "global_batch_size": 4, "epochs": 2, "max_steps": 4, "lr": 1e-3, "save_every": 1, "tensorboard": False},
        "generate": {"questions": str(qs), "max_new_tokens": 6, "temperature": 0.0,
                     "models": [{"id": "base", "path": str(model_dir), "template": "plamo", "batch_size": 4},
                                {"id": "tuned", "path": "trained", "template": "plamo", "batch_size": 4}]},
        "judge": {"backend": {"backend": "fake"}},
        "report": {"bootstrap": 100, "title": "tiny pipeline"},
    }
    for k, v in sections.items():
        if v is None:
            recipe.pop(k, None)
        else:
            recipe[k] = v
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_pipeline_killed_in_training_resumes_then_does_nothing(tmp_path, tiny_model_dir, capsys, monkeypatch):
    # the CLI's logging.basicConfig must bind to this test's captured stderr, not an earlier test's
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir)
    root = tmp_path / "run"
    # 1. killed (SIGKILL) right after training step 2: data is done, training has a checkpoint
    env = dict(os.environ, JA_INSTRUCT_TRAIN_FAIL_AT_STEP="2", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "ja_instruct.cli", "run", str(recipe)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "[1/5] data     done" in r.stdout and "[2/5] train    running" in r.stdout
    state = json.loads((root / STATE_FILE).read_text())
    assert set(state) == {"data"}
    assert not (root / "train" / "final").exists()

    # 2. the same command resumes: data is not redone, training resumes from its checkpoint
    assert main(["run", str(recipe)]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert any(line.startswith("[1/5] data     complete (skipped") for line in lines)
    for stage in ("train", "generate", "judge", "report"):
        assert any(line.startswith("[") and f"] {stage:<8} done in" in line for line in lines), (stage, out.out)
    assert "resumed from step" in out.err
    assert lines[-1] == f"report: {root / 'report' / 'index.html'}"
    for m in ("base", "tuned"):
        answers = [json.loads(x) for x in (root / "answers" / f"{m}.jsonl").read_text().splitlines()]
        assert sorted(a["question_id"] for a in answers) == ["q1", "q2", "q3"]
    html = (root / "report" / "index.html").read_text(encoding="utf-8")
    assert "tiny pipeline" in html and "DEMO JUDGE" in html and 'class="qrow"' in html
    assert "CC-BY-4.0" in html  # the tuned model's training-data licence, found through its path
    scores = (root / "report" / "scores.csv").read_text(encoding="utf-8")
    assert "\nbase," in scores and "\ntuned," in scores

    # 3. a third run does no work at all: every stage is complete, no file changes
    before = _mtimes(root)
    assert main(["run", str(recipe)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum("complete (skipped" in line for line in lines) == 5, lines
    assert lines[-1] == f"report: {root / 'report' / 'index.html'}"
    assert _mtimes(root) == before


def test_absent_sections_are_skipped_and_changes_rerun_only_downstream(tmp_path, capsys, monkeypatch):
    """judge + report only, on answers already there (fake judge, no model): cheap."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # see the first test
    answers = tmp_path / "run" / "answers"
    answers.mkdir(parents=True)
    qs = tmp_path / "questions.jsonl"
    qs.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    for m in ("a", "b"):
        with open(answers / f"{m}.jsonl", "w", encoding="utf-8") as f:
            for q in QUESTIONS:
                f.write(json.dumps({"question_id": q["question_id"], "answer_id": m + q["question_id"], "model_id": m,
                                    "choices": [{"index": 0, "turns": [f"{m}の回答です。" * (2 if m == 'b' else 1)] *
                                                 len(q["turns"])}]}, ensure_ascii=False) + "\n")
    recipe = write_tiny_recipe(tmp_path, tmp_path, data=None, train=None, generate=None,
                               judge={"backend": {"backend": "fake"}, "questions": str(qs)})
    assert main(["run", str(recipe)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    for stage in ("data", "train", "generate"):
        assert any(f"] {stage:<8} skipped: the recipe has no '{stage}' section" in x for x in lines)
    assert any("] judge    done" in x for x in lines) and any("] report   done" in x for x in lines)
    index = tmp_path / "run" / "report" / "index.html"
    assert lines[-1] == f"report: {index}"

    # a report-only change reruns the report, not the judge
    assert main(["run", str(recipe), "--set", "report.title=changed"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("] judge    complete (skipped" in x for x in lines)
    assert any("] report   done" in x for x in lines)
    assert "<title>changed</title>" in index.read_text(encoding="utf-8")

    # no report section: said so on the last line
    recipe = write_tiny_recipe(tmp_path, tmp_path, data=None, train=None, generate=None, report=None,
                               judge={"backend": {"backend": "fake"}, "questions": str(qs)})
    assert main(["run", str(recipe)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "report: none (the recipe has no 'report' section)"


def test_run_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # see the first test
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrepot: {}\n", encoding="utf-8")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'repot'" in err and "Did you mean 'report'" in err and "Traceback" not in err
