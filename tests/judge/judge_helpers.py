"""Helpers shared by the judge tests (imported by conftest.py and tests): small inputs, recipe writer,
test-only judge backends."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ja_instruct.judge.backends import FakeBackend, JudgeReply, JudgeRequest, _unit

QUESTIONS = [
    {"question_id": "q1", "category": "地理", "turns": ["四国の県を挙げてください。"]},
    {"question_id": "q2", "category": "歴史", "turns": ["江戸時代について説明してください。"]},
    {"question_id": 3, "category": "math", "turns": ["1+1は？", "それを3倍すると？"], "reference": ["2です。", "6です。"]},
    {"question_id": 4, "category": "writing", "turns": ["春の短い詩を書いて。", "それを英語にして。"]},
]
ANSWERS = {
    "model-a": {"q1": ["香川県、徳島県、愛媛県、高知県です。"], "q2": ["江戸時代は1603年から1867年までの時代です。"],
                3: ["2", "6"], 4: ["春の風 そよぐ", "Spring wind blows"]},
    "model-b": {"q1": ["わかりません"], "q2": ["江戸幕府が日本を治めた時代で、鎖国や町人文化が特徴です。"],
                3: ["答えは2です。", "6になります。"], 4: ["桜咲く 春の朝", "Cherry blossoms bloom"]},
    "model-c": {"q1": ["Kagawa, Tokushima, Ehime, Kochi."], "q2": [""], 3: ["3", "9"], 4: ["はる", "haru"]},
}


def write_answers(folder: Path, answers: dict = ANSWERS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for model, by_q in answers.items():
        with open(folder / f"{model}.jsonl", "w", encoding="utf-8") as f:
            for qid, turns in by_q.items():
                f.write(json.dumps({"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model,
                                    "choices": [{"index": 0, "turns": turns}], "tstamp": 0.0},
                                   ensure_ascii=False) + "\n")
    return folder


def write_recipe(path: Path, judge: dict, root: Path | None = None) -> Path:
    """A recipe with only a judge section (out_dir under ``root``)."""
    data = {"name": "jt", "out_dir": str(root or path.parent / "run"), "judge": judge}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


class UnparseableFakeBackend(FakeBackend):
    """The fake judge, but a share ``rate`` of its calls (chosen by a hash of the key and the
    attempt, so stable across runs) answer with no score anywhere."""

    rate = 0.0

    @classmethod
    def with_rate(cls, rate: float) -> type:
        return type("UnparseableFakeBackend", (cls,), {"rate": rate})

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        if _unit("e", req.key, req.attempt) < self.rate:
            self.calls += 1
            return JudgeReply("よく分かりませんでした。", (len(req.system) + len(req.user)) // 2, 5)
        return await super().judge(req)
