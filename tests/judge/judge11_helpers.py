"""Helpers of the issue-11 judge tests: ELYZA-format items, multi-sample answer files, a fake judge
that grades on the prompt's own scale, recipes over hand-made inputs."""

from __future__ import annotations

import json
from pathlib import Path

from ja_instruct.judge.backends import FakeBackend, JudgeReply, JudgeRequest, fake_quality

# Self-written items in ELYZA-tasks-100's schema (input, output = reference, eval_aspect; no id).
ELYZA_ROWS = [
    {"input": "「猫の手も借りたい」の意味を簡単に説明してください。",
     "output": "とても忙しくて、どんな手伝いでも欲しい様子を表すことわざです。",
     "eval_aspect": "- 忙しさを表す表現だと説明できていれば4点以上\n- 猫そのものの話をしていれば1点"},
    {"input": "3個のりんごを2人で同じ数ずつ分けると、1人何個で何個余りますか。",
     "output": "1人1個ずつで、1個余ります。", "eval_aspect": "- 1人1個、余り1個の両方が正しければ5点\n- 片方だけなら3点"},
    {"input": "春を題材にした俳句を一つ作ってください。", "output": "菜の花や 月は東に 日は西に",
     "eval_aspect": "- 五七五の形であれば3点以上\n- 春の季語がなければ-1点"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_sample_answers(folder: Path, answers: dict, tokens: int | None = None) -> Path:
    """``answers``: {model: {question_id: [sample turns, ...]}}: one FastChat record per question
    whose ``choices`` hold every sample (index k), each with a per-turn ``health``."""
    for model, by_q in answers.items():
        rows = []
        for qid, samples in by_q.items():
            choices = [{"index": k, "turns": turns,
                        "health": [{"n_tokens": tokens if tokens is None else tokens + k} for _ in turns]}
                       for k, turns in enumerate(samples)]
            rows.append({"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model,
                         "choices": choices, "tstamp": 0.0})
        write_jsonl(folder / f"{model}.jsonl", rows)
    return folder


def judge_recipe(tmp_path: Path, questions: Path, answers: Path, **judge):
    """A loaded recipe with only a judge section over these inputs (fake judge unless given)."""
    from judge_helpers import write_recipe

    from ja_instruct.recipe import load_recipe

    base = {"questions": str(questions), "answers_dir": str(answers), "bootstrap": 20, "backend": {"backend": "fake"}}
    base.update(judge)
    return load_recipe(write_recipe(tmp_path / "recipe.yaml", base))


class ScaledFakeBackend(FakeBackend):
    """The fake judge's opinion (`fake_quality`, 1-10) mapped onto the prompt's own scale
    (``req.prompt.scale``), and +-1 noise per judge model when temperature > 0, so that two judges
    of a panel disagree a little."""

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        p = req.prompt
        if p.output_format != "rating":
            return await super().judge(req)
        self.calls += 1
        lo, hi = p.scale
        q = (fake_quality(req.answers[0]) - 1.0) / 9.0  # 0..1
        from ja_instruct.judge.backends import _unit

        noise = (2 * _unit("panel", self.cfg.model, req.key) - 1) if self.cfg.temperature > 0 else 0.0
        score = int(round(min(hi, max(lo, lo + q * (hi - lo) + noise))))
        text = f"確認しました。\n{p.score_prefix}{score}]]"
        return JudgeReply(text, (len(req.system) + len(req.user)) // 2, len(text) // 2)


class SevenJudge(FakeBackend):
    """Always answers 7: out of range on a 1-5 prompt."""

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        self.calls += 1
        return JudgeReply(f"{req.prompt.score_prefix}7]]", 10, 3)
