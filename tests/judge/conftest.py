"""Fixtures of the judge tests: a tiny question set + answers of three models, recipe writers,
a fake judge that cannot be parsed."""

from __future__ import annotations

import json

import pytest
from judge_helpers import QUESTIONS, UnparseableFakeBackend, write_answers, write_recipe


@pytest.fixture
def judge_inputs(tmp_path) -> dict:
    """Paths of a small question file and an answers folder (3 models, 2 two-turn questions)."""
    qpath = tmp_path / "questions.jsonl"
    qpath.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    return {"questions": str(qpath), "answers_dir": str(write_answers(tmp_path / "answers")), "root": tmp_path}


@pytest.fixture
def make_recipe(tmp_path, judge_inputs):
    """``make_recipe(**judge_keys)`` -> a loaded `Recipe` over the small inputs (fake judge unless
    ``backend`` is given)."""
    from ja_instruct.recipe import load_recipe

    def make(**judge):
        base = {"questions": judge_inputs["questions"], "answers_dir": judge_inputs["answers_dir"], "bootstrap": 20,
                "backend": {"backend": "fake"}}
        base.update(judge)
        return load_recipe(write_recipe(tmp_path / "recipe.yaml", base))
    return make


@pytest.fixture
def unparseable_judge(monkeypatch):
    """``unparseable_judge(rate)``: the ``fake`` backend answers that share of calls without a score."""
    from ja_instruct.judge import backends

    def install(rate: float) -> None:
        monkeypatch.setitem(backends.BACKENDS, "fake", UnparseableFakeBackend.with_rate(rate))
    return install
