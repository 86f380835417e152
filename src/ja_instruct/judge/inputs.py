"""What the judge reads: the question set (with references) and the answer files (every sample),
and how an answer is prepared for the judge (hidden reasoning removed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.io import iter_jsonl

log = logging.getLogger(__name__)


def load_question_set(spec: str, reference_answers: str | Path | None = None, limit: int | None = None):
    """Questions (``generate.questions.Question``: question_id, category, turns, reference)."""
    from ja_instruct.generate.questions import load_questions

    return load_questions(spec, references=str(reference_answers) if reference_answers else None, limit=limit)


def answer_files(answers_dir: Path, models: list[str] | None) -> dict[str, Path]:
    """``{model_id: path}`` for the requested models (default: every ``*.jsonl`` in the folder)."""
    if not answers_dir.is_dir():
        raise UserError("answers folder not found", file=answers_dir,
                        hint="Run `ja-instruct generate` first, or set judge.answers_dir.")
    found = {p.stem: p for p in sorted(answers_dir.glob("*.jsonl"))}
    if models is None:  # every answer file; other JSONL (e.g. a saved questions.jsonl) is not a model
        skipped = [m for m, p in found.items() if not _looks_like_answers(p)]
        for m in skipped:
            log.info("skipping %s: not a FastChat answer file (no 'choices')", found.pop(m))
        if not found:
            raise UserError("no answer files (*.jsonl) in the answers folder", file=answers_dir,
                            hint="Run `ja-instruct generate` first.")
        return found
    missing = [m for m in models if m not in found]
    if missing:
        raise UserError(f"no answer file for model(s) {missing}", file=answers_dir, field="judge.models",
                        hint=f"Available: {', '.join(found) or 'none'}.")
    return {m: found[m] for m in models}


def _looks_like_answers(path: Path) -> bool:
    import json

    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    rec = json.loads(raw)
                except (ValueError, RecursionError):
                    return True  # let load_answers report the bad line with file and line number
                return isinstance(rec, dict) and "choices" in rec
    return False


@dataclass(frozen=True)
class AnswerSample:
    """One sampled answer (a FastChat ``choices`` entry): its turns and, where the answer file
    has them, the generated tokens per turn (``health[i].n_tokens``; None when unknown)."""

    turns: list[str]
    tokens: list[int | None]


def _tokens(health, n: int) -> list[int | None]:
    if not isinstance(health, list):
        return [None] * n
    out = []
    for i in range(n):
        h = health[i] if i < len(health) else None
        v = h.get("n_tokens") if isinstance(h, dict) else None
        out.append(int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    return out


def load_answer_samples(path: Path) -> dict[str, list[AnswerSample]]:
    """``{question_id as str: [sample 0, sample 1, ...]}`` from a FastChat answer file: every
    ``choices`` entry, ordered by its ``index`` (``generate.samples`` N gives N). Sample 0's
    token counts may come from the record's own ``health`` (answer files of one sample)."""
    out: dict[str, list[AnswerSample]] = {}
    for line, rec in iter_jsonl(path):
        try:
            qid = str(rec["question_id"])
            choices = rec["choices"]
            choices[0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise UserError("not a FastChat answer record (needs question_id and choices[0].turns)",
                            file=path, line=line, hint="Answers come from `ja-instruct generate`.") from None
        samples = []
        for pos, c in enumerate(choices):
            turns = c.get("turns") if isinstance(c, dict) else None
            if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                raise UserError(f"choices[{pos}].turns must be a list of strings", file=path, line=line)
            index = c.get("index", pos)
            if not isinstance(index, int) or isinstance(index, bool):
                raise UserError(f"choices[{pos}].index must be an integer", file=path, line=line)
            health = c.get("health", rec.get("health") if pos == 0 else None)
            samples.append((index, AnswerSample(turns, _tokens(health, len(turns)))))
        samples.sort(key=lambda x: x[0])
        if [i for i, _ in samples] != list(range(len(samples))):
            raise UserError(f"choices indices {[i for i, _ in samples]} are not 0..{len(samples) - 1}",
                            file=path, line=line, hint="Each sample k of generate.samples is choice index k.")
        out[qid] = [smp for _, smp in samples]
    return out


def load_answers(path: Path) -> dict[str, list[str]]:
    """``{question_id as str: [turn texts]}`` from a FastChat answer file (first choice)."""
    return {q: s[0].turns for q, s in load_answer_samples(path).items()}


def load_all_samples(answers_dir: Path, models: list[str] | None) -> dict[str, dict[str, list[AnswerSample]]]:
    """``{model: {question_id: [samples]}}`` for every judged model."""
    return {m: load_answer_samples(p) for m, p in answer_files(answers_dir, models).items()}


def load_all_answers(answers_dir: Path, models: list[str] | None) -> dict[str, dict[str, list[str]]]:
    """``{model: {question_id: turns}}`` for every judged model (sample 0)."""
    return {m: load_answers(p) for m, p in answer_files(answers_dir, models).items()}


def first_samples(samples: dict[str, dict[str, list[AnswerSample]]]) -> dict[str, dict[str, list[str]]]:
    """Sample 0's turns of every model and question (what pairwise judging compares)."""
    return {m: {q: s[0].turns for q, s in by_q.items()} for m, by_q in samples.items()}


def prepare_answer(turns: list[str], pattern: str | None) -> tuple[list[str], str]:
    """(turns with each one's hidden reasoning removed, what happened to the LAST turn's:
    ``none`` | ``stripped`` | ``unclosed``), by `ja_instruct.generate.health.strip_reasoning`.
    ``pattern`` None = as written (``none``)."""
    if pattern is None:
        return list(turns), "none"
    from ja_instruct.generate.health import strip_reasoning

    done = [strip_reasoning(t, pattern) for t in turns]
    return [t for t, _ in done], (done[-1][1] if done else "none")


def uses_reference(question, reference_categories: list[str] | None) -> bool:
    """Reference-guided when the question has a reference and its category is listed."""
    if not question.reference:
        return False
    return reference_categories is None or question.category in reference_categories


def judged_turns(question, answers: list[list[str]], turns_filter: list[int] | None) -> list[int]:
    """1-based turns that the question and every given answer have (and the filter allows)."""
    n = min([len(question.turns)] + [len(a) for a in answers])
    return [t for t in range(1, n + 1) if turns_filter is None or t in turns_filter]
