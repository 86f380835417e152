"""Fixtures of the pairs-stage tests: a judge whose grades the test controls, counted calls of the
judge and of the (fake) answering model, and a recipe writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pairs_helpers import ScoringJudge  # tests/pairs is on sys.path (pytest's rootdir imports)

QUESTIONS = [{"question_id": f"q{i}", "category": "general", "turns": [t]} for i, t in enumerate([
    "日本の首都はどこですか？", "富士山について教えてください。", "江戸時代を説明してください。",
    "機械学習とは何ですか？", "散歩の良いところは？", "天気予報の仕組みは？", "俳句の作り方を教えて。",
    "お茶の種類を挙げてください。", "地震への備えは？", "日本の祭りを一つ紹介して。", "桜の名所は？",
    "和食の特徴は？"])]


@pytest.fixture
def judge_calls(monkeypatch) -> list[list[str]]:
    """The answers shown in each judge call (a call = one list), with `ScoringJudge` as the fake judge."""
    from ja_instruct.judge import backends

    seen: list[list[str]] = []
    monkeypatch.setitem(backends.BACKENDS, "fake", ScoringJudge.counting(seen))
    return seen


@pytest.fixture
def generations(monkeypatch) -> list[tuple[str, int, str]]:
    """Every answer the fake model generated: ``(question, seed, text)``."""
    from ja_instruct.generate import backends
    from ja_instruct.generate.backends import FakeBackend

    made: list[tuple[str, int, str]] = []

    class Counting(FakeBackend):
        def generate(self, conversations, params):
            out = super().generate(conversations, params)
            made.extend((c[-1]["content"], params.seed, g.text) for c, g in zip(conversations, out))
            return out

    monkeypatch.setitem(backends.BACKENDS, "fake", Counting)
    return made


@pytest.fixture
def questions_file(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    return path


@pytest.fixture
def write_recipe(tmp_path, questions_file):
    """``write_recipe(name="r.yaml", recipe_keys=None, **pairs_keys) -> Path``: a recipe whose pairs
    section samples the fake model on `QUESTIONS` and judges with the fake judge (single mode)."""

    def write(name: str = "r.yaml", recipe_keys: dict | None = None, **pairs) -> Path:
        section = {"prompts": str(questions_file), "samples": 4, "margin": 3,
                   "model": {"id": "pol", "backend": "fake"}, "judge": {"backend": {"backend": "fake"}}}
        section.update(pairs)
        recipe = {"name": "p", "seed": 3, "out_dir": str(tmp_path / "run"), "pairs": section, **(recipe_keys or {})}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        return path

    return write
