"""What the judge reads: the question set (with references) and the answer files."""

from __future__ import annotations

import logging
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


def load_answers(path: Path) -> dict[str, list[str]]:
    """``{question_id as str: [turn texts]}`` from a FastChat answer file (first choice)."""
    out: dict[str, list[str]] = {}
    for line, rec in iter_jsonl(path):
        try:
            qid = str(rec["question_id"])
            turns = rec["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            raise UserError("not a FastChat answer record (needs question_id and choices[0].turns)",
                            file=path, line=line, hint="Answers come from `ja-instruct generate`.") from None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise UserError("choices[0].turns must be a list of strings", file=path, line=line)
        out[qid] = turns
    return out


def load_all_answers(answers_dir: Path, models: list[str] | None) -> dict[str, dict[str, list[str]]]:
    """``{model: {question_id: turns}}`` for every judged model."""
    return {m: load_answers(p) for m, p in answer_files(answers_dir, models).items()}


def uses_reference(question, reference_categories: list[str] | None) -> bool:
    """Reference-guided when the question has a reference and its category is listed."""
    if not question.reference:
        return False
    return reference_categories is None or question.category in reference_categories


def judged_turns(question, answers: list[list[str]], turns_filter: list[int] | None) -> list[int]:
    """1-based turns that the question and every given answer have (and the filter allows)."""
    n = min([len(question.turns)] + [len(a) for a in answers])
    return [t for t in range(1, n + 1) if turns_filter is None or t in turns_filter]
