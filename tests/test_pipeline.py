"""`ja-instruct run`: the whole pipeline on a tiny recipe; kill and resume; the iteration rules
(what is redone when what changes); a no-op re-run."""

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


KILL_AT_STEP = Path(__file__).parent / "train" / "kill_at_step.py"


def _run(recipe, *extra) -> list[str]:
    return ["run", str(recipe), *extra]


def _lines(capsys) -> tuple[list[str], str]:
    out = capsys.readouterr()
    return out.out.strip().splitlines(), out.err


def _status(lines: list[str], stage: str) -> str:
    """'up to date' | 'done' | 'skipped' for one stage's pipeline line."""
    line = next(x for x in lines if f"] {stage:<8} " in x)
    return "up to date" if "up to date" in line else "done" if " done in " in line else "skipped"


def _answers(root: Path, model: str) -> list[dict]:
    return [json.loads(x) for x in (root / "answers" / f"{model}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_pipeline_killed_in_training_resumes_then_does_nothing(tmp_path, tiny_model_dir, capsys, monkeypatch):
    # the CLI's logging.basicConfig must bind to this test's captured stderr, not an earlier test's
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir)
    root = tmp_path / "run"
    # 1. killed (SIGKILL) right after training step 2: data is done, training has a checkpoint
    env = dict(os.environ, JA_INSTRUCT_TEST_KILL_AT_STEP="2", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, str(KILL_AT_STEP), *_run(recipe)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "[1/6] data     done" in r.stdout, r.stdout + r.stderr
    assert (root / "data" / "manifest.json").is_file()
    assert not (root / "train" / "manifest.json").exists() and not (root / "train" / "final").exists()

    # 2. the same command resumes: data is not redone, training resumes from its checkpoint
    assert main(_run(recipe)) == 0
    lines, err = _lines(capsys)
    assert _status(lines, "data") == "up to date"
    for stage in ("train", "generate", "judge", "report"):
        assert _status(lines, stage) == "done", (stage, lines)
    assert "resumed from" in err
    assert lines[-1] == f"report: {root / 'report' / 'index.html'}"
    for m in ("base", "tuned"):
        assert sorted(a["question_id"] for a in _answers(root, m)) == ["q1", "q2", "q3"]
    html = (root / "report" / "index.html").read_text(encoding="utf-8")
    assert "tiny pipeline" in html and 'class="qrow"' in html
    assert "CC-BY-4.0" in html  # the tuned model's training-data licence, found through its path
    scores = (root / "report" / "scores.csv").read_text(encoding="utf-8")
    assert "\nbase," in scores and "\ntuned," in scores

    # 3. a third run does no work at all: every stage is up to date, no file changes
    before = _mtimes(root)
    assert main(_run(recipe)) == 0
    lines, _ = _lines(capsys)
    assert [_status(lines, s) for s in ("data", "train", "generate", "judge", "report")] == ["up to date"] * 5, lines
    assert lines[-1] == f"report: {root / 'report' / 'index.html'}"
    assert _mtimes(root) == before


def _judge_run(root: Path) -> dict:
    return json.loads((root / "judge" / "summary.json").read_text(encoding="utf-8"))["run"]


@pytest.mark.slow
def test_iteration_every_change_redoes_exactly_what_depends_on_it(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """run -> change generate.max_new_tokens -> run -> change train.lr -> run -> no change -> run."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir)
    root = tmp_path / "run"
    assert main(_run(recipe)) == 0
    _lines(capsys)
    first_scores = (root / "report" / "scores.csv").read_text(encoding="utf-8")
    n_items = _judge_run(root)["items"]
    assert all(a["generation"]["max_new_tokens"] == 6 for a in _answers(root, "base"))

    # 1. a generation setting: every answer regenerated (and says so), only the new answers judged
    new = ["--set", "generate.max_new_tokens=3"]
    assert main(_run(recipe, *new)) == 0
    lines, err = _lines(capsys)
    assert [_status(lines, s) for s in ("data", "train")] == ["up to date"] * 2, lines
    assert [_status(lines, s) for s in ("generate", "judge", "report")] == ["done"] * 3, lines
    assert "regenerated" in err and "max_new_tokens" in err, err
    for m in ("base", "tuned"):
        recs = _answers(root, m)
        assert len(recs) == 3 and all(a["generation"]["max_new_tokens"] == 3 for a in recs)
    run = _judge_run(root)
    assert run["items"] == n_items
    changed = sum(1 for m in ("base", "tuned") for a in _answers(root, m) for _ in a["choices"][0]["turns"])
    assert 0 < run["judged"] <= changed and run["cached"] == n_items - run["judged"], run
    assert (root / "report" / "scores.csv").read_text(encoding="utf-8") != first_scores

    # 2. a train setting: retrained (not resumed from the other config's checkpoints), the tuned
    #    model's answers regenerated, the base model's kept, the report rebuilt
    tuned_before = {a["question_id"]: a["fingerprint"]["model"] for a in _answers(root, "tuned")}
    base_before = _answers(root, "base")
    scores_before = (root / "report" / "scores.csv").read_text(encoding="utf-8")
    assert main(_run(recipe, *new, "--set", "train.lr=0.02")) == 0
    lines, err = _lines(capsys)
    assert _status(lines, "data") == "up to date"
    assert [_status(lines, s) for s in ("train", "generate", "judge", "report")] == ["done"] * 4, lines
    assert "resumed from" not in err and "lr" in err
    assert _answers(root, "base") == base_before
    assert all(a["fingerprint"]["model"] != tuned_before[a["question_id"]] for a in _answers(root, "tuned"))
    assert "model changed" in err
    assert (root / "report" / "scores.csv").read_text(encoding="utf-8") != scores_before

    # 3. no change: no work, no file touched
    before = _mtimes(root)
    assert main(_run(recipe, *new, "--set", "train.lr=0.02")) == 0
    lines, _ = _lines(capsys)
    assert [_status(lines, s) for s in ("data", "train", "generate", "judge", "report")] == ["up to date"] * 5
    assert _mtimes(root) == before


@pytest.mark.slow
def test_train_out_elsewhere_is_what_generate_answers_with(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, judge=None, report=None)
    elsewhere = tmp_path / "elsewhere"
    assert main(["train", str(recipe), "--out", str(elsewhere)]) == 0
    assert (elsewhere / "final" / "config.json").is_file() and not (tmp_path / "run" / "train").exists()
    assert main(["generate", str(recipe)]) == 0
    tuned = _answers(tmp_path / "run", "tuned")
    assert {a["generation"]["model"] for a in tuned} == {str(elsewhere / "final")}

    # a retrain killed midway (another lr) leaves no complete model: generate refuses, naming the fix
    env = dict(os.environ, JA_INSTRUCT_TEST_KILL_AT_STEP="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, str(KILL_AT_STEP), "train", str(recipe), "--out", str(elsewhere),
                        "--set", "train.lr=0.05"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0
    capsys.readouterr()
    assert main(["generate", str(recipe), "--set", "train.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "ja-instruct train" in err and "Traceback" not in err


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
    for stage in ("data", "pairs", "train", "generate"):
        assert any(f"] {stage:<8} skipped: the recipe has no '{stage}' section" in x for x in lines)
    assert _status(lines, "judge") == "done" and _status(lines, "report") == "done"
    index = tmp_path / "run" / "report" / "index.html"
    assert lines[-1] == f"report: {index}"

    # a report-only change reruns the report, not the judge
    assert main(["run", str(recipe), "--set", "report.title=changed"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert _status(lines, "judge") == "up to date" and _status(lines, "report") == "done"
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


def test_answers_of_a_model_removed_from_the_recipe_are_not_judged(tmp_path, capsys, monkeypatch):
    """A stale answer file left in the answers folder (the model was renamed) never reaches the report."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    qs = tmp_path / "questions.jsonl"
    qs.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    gen = {"questions": str(qs), "models": [{"id": "a", "backend": "fake"}, {"id": "b", "backend": "fake"}]}
    recipe = write_tiny_recipe(tmp_path, tmp_path, data=None, train=None, generate=gen,
                               judge={"backend": {"backend": "fake"}})
    assert main(_run(recipe)) == 0
    renamed = dict(gen, models=[{"id": "a", "backend": "fake"}, {"id": "c", "backend": "fake"}])
    recipe = write_tiny_recipe(tmp_path, tmp_path, data=None, train=None, generate=renamed,
                               judge={"backend": {"backend": "fake"}})
    assert main(_run(recipe)) == 0
    capsys.readouterr()
    root = tmp_path / "run"
    assert (root / "answers" / "b.jsonl").is_file()  # left behind, not the recipe's any more
    judged = {json.loads(x)["model"] for x in (root / "judge" / "judgments.jsonl").read_text().splitlines()}
    assert judged == {"a", "c"}
    assert "\nb," not in (root / "report" / "scores.csv").read_text(encoding="utf-8")
