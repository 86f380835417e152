"""Test-only judges for the pairs tests: grades and verdicts the test can compute on its own."""

from __future__ import annotations

import hashlib

from ja_instruct.judge.backends import FakeBackend, JudgeReply, JudgeRequest


def score(answer: str) -> int:
    """The grade `ScoringJudge` gives an answer: 1-10 from a hash of its text."""
    return 1 + int(hashlib.sha256(answer.encode("utf-8")).hexdigest()[:8], 16) % 10


def _verdict_text(prompt, v: str) -> str:
    if prompt.output_format == "verdict":
        return f"比べました。\n{prompt.score_prefix}{v}]]"
    return "比べました。\n" + {"A": "1", "B": "2", "C": "3"}[v]


class ScoringJudge(FakeBackend):
    """Grades with `score`; pairwise: the higher `score` wins, equal scores go to the answer shown
    FIRST (a position bias: such a comparison flips with the order)."""

    seen: list | None = None

    @classmethod
    def counting(cls, seen: list) -> type:
        return type(cls.__name__, (cls,), {"seen": seen})

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        self.calls += 1
        if self.seen is not None:
            self.seen.append(list(req.answers))
        p = req.prompt
        if p.output_format == "rating":
            return JudgeReply(f"採点しました。\n{p.score_prefix}{score(req.answers[0])}]]", 10, 5)
        a, b = (score(x) for x in req.answers)
        return JudgeReply(_verdict_text(p, "B" if b > a else "A"), 10, 5)


class PositionBiasedJudge(ScoringJudge):
    """Pairwise: always prefers the answer shown first, whatever it says."""

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        if req.prompt.output_format == "rating":
            return await super().judge(req)
        self.calls += 1
        if self.seen is not None:
            self.seen.append(list(req.answers))
        return JudgeReply(_verdict_text(req.prompt, "A"), 10, 5)
