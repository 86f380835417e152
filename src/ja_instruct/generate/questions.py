"""Question sets: Rakuda (v1 `text`, v2 `turns`), Japanese MT-Bench, FastChat JSONL, ELYZA-tasks-100, HF hub ids.

Every set becomes a list of `Question`. Sources, in the order they are tried:

* ``embedded:NAME``: a file shipped in ``src/ja_instruct/assets/``;
* an existing local ``.jsonl``: read strictly line by line (errors name file + line);
* an existing local ``.json``/``.parquet``/``.csv``/``.arrow`` file, or a folder (a
  ``save_to_disk`` dataset or a folder of data files): read with ``datasets``;
* anything that looks like a path but does not exist: a `UserError`;
* otherwise an HF hub dataset id (``yuzuai/rakuda-questions``) through
  ``datasets.load_dataset``; a failure (offline, unknown id) is a `UserError`. A hub set
  without the requested split but with a single one (``elyza/ELYZA-tasks-100`` has only
  ``test``) is read from that split.

ELYZA-tasks-100 (``input``, ``output`` = the reference answer, ``eval_aspect`` = the item's
own grading aspect; no id, no category) is recognised by its columns: when the first row has
``input`` and none of ``turns``/``text``/``question``, every row of the source is read that
way, as question_id = its 1-based row number, category ``"elyza"``, turns ``[input]``,
reference ``[output]`` and `Question.eval_aspect`.

The judge stage reuses `load_questions` so both stages agree on ids and turns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ja_instruct.config import resolve_path
from ja_instruct.errors import UserError
from ja_instruct.io import iter_jsonl

DATA_FILE_BUILDERS = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass
class Question:
    """One benchmark question.

    Attributes:
        question_id: the set's own id (int for MT-Bench, str for Rakuda); kept as given so
            answers and judgments match the set's files.
        category: the question's category (``地理``, ``writing``...); ``"general"`` if the set has none.
        turns: the user turns; MT-Bench has two, the second asked after the model's first answer.
        reference: reference answers, one per turn, for reference-guided judging; None if absent.
        eval_aspect: the item's own grading aspect (ELYZA-tasks-100's ``eval_aspect``), shown to
            the judge; None for sets without one. Not part of what the model is asked, so not
            part of an answer's fingerprint.
    """

    question_id: int | str
    category: str
    turns: list[str]
    reference: list[str] | None = field(default=None)
    eval_aspect: str | None = field(default=None)

    @property
    def key(self) -> str:
        """The id as a string: the join key with answers (JSON may turn 1 into "1" and back)."""
        return str(self.question_id)


def _as_turns(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        return list(value)
    return None


def question_from_record(rec: dict, *, file: str | Path | None = None, line: int | None = None) -> Question:
    """Normalise one record: FastChat/Rakuda v2 (`turns`), Rakuda v1 (`text`), `reference` (list or str),
    `eval_aspect` (as `questions_to_jsonl_records` writes an ELYZA item back)."""
    qid = rec.get("question_id", rec.get("id"))
    if qid is None or isinstance(qid, (dict, list, bool)):
        raise UserError("question has no 'question_id'", file=file, line=line,
                        hint="Each question needs question_id, turns (or text) and category.")
    if isinstance(qid, float) and qid.is_integer():
        qid = int(qid)  # parquet/pandas may widen ints
    turns = _as_turns(rec["turns"]) if "turns" in rec else _as_turns(rec.get("text", rec.get("question")))
    if not turns or not all(t.strip() for t in turns):
        raise UserError(f"question {qid!r} has no usable 'turns' (or Rakuda v1 'text')", file=file, line=line,
                        hint="'turns' must be a non-empty list of non-empty strings.")
    ref = _as_turns(rec.get("reference"))
    category = rec.get("category") or "general"
    aspect = rec.get("eval_aspect")
    return Question(question_id=qid, category=str(category), turns=turns, reference=ref or None,
                    eval_aspect=aspect if isinstance(aspect, str) and aspect.strip() else None)


# ELYZA-tasks-100's category (it has none of its own) and the columns that mark its format.
ELYZA_CATEGORY = "elyza"
_TURN_COLUMNS = ("turns", "text", "question")


def is_elyza_record(rec: dict) -> bool:
    """Whether a row is in ELYZA-tasks-100's format: ``input`` (or, when it is missing, ELYZA's
    other columns ``eval_aspect`` / ``output``, so the error names what ELYZA needs) and none of
    turns/text/question."""
    return any(k in rec for k in ("input", "eval_aspect", "output")) and not any(k in rec for k in _TURN_COLUMNS)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def question_from_elyza(rec: dict, row: int, *, file: str | Path | None = None,
                        line: int | None = None) -> Question:
    """One ELYZA-tasks-100 row (``input``, ``output``, ``eval_aspect``) as question ``row`` (1-based)."""
    prompt = _text(rec.get("input"))
    if prompt is None:
        raise UserError(f"ELYZA-tasks row {row} has no 'input' (the task)", file=file, line=line,
                        hint="Each ELYZA-tasks-100 row needs input, output (the reference answer) and "
                             "eval_aspect.")
    ref = _text(rec.get("output"))
    return Question(question_id=row, category=ELYZA_CATEGORY, turns=[prompt], reference=[ref] if ref else None,
                    eval_aspect=_text(rec.get("eval_aspect")))


def _looks_like_path(s: str) -> bool:
    return (s.startswith(("/", "./", "../", "~", "embedded:")) or Path(s).suffix.lower() in
            (".jsonl", *DATA_FILE_BUILDERS) or s.count("/") != 1)


def _records_from_datasets(kind: str, source: str, split: str) -> Iterable[dict]:
    """Rows of a local data file/folder or a hub dataset, through the `datasets` library."""
    import datasets

    try:
        if kind == "disk":
            ds = datasets.load_from_disk(source)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split] if split in ds else ds[next(iter(ds))]
        elif kind == "hub-or-dir":
            ds = datasets.load_dataset(source)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds and len(ds) != 1:
                    raise UserError(f"'{source}' has no split '{split}'", field="generate.split",
                                    hint=f"Its splits: {', '.join(ds)}.")
                ds = ds[split] if split in ds else ds[next(iter(ds))]
        else:
            ds = datasets.load_dataset(kind, data_files=source, split="train")
    except UserError:
        raise
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        where = "local data" if kind != "hub-or-dir" or Path(source).exists() else "the HF hub dataset"
        hint = ("Offline (HF_HUB_OFFLINE=1): the dataset must already be in the local HF cache, "
                "or point `questions` at a local file." if offline and where != "local data"
                else "Check the id/path and split (`generate.split`).")
        raise UserError(f"cannot load question set from {where} '{source}': {first}", field="generate.questions",
                        hint=hint) from None
    return iter(ds)


def read_question_records(source: str, split: str = "train") -> Iterable[tuple[str, int | None, dict]]:
    """Yield ``(file, line, record)`` for the rows of a question source (see module doc)."""
    path = resolve_path(source)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        for line, rec in iter_jsonl(path):
            yield str(path), line, rec
        return
    if path.is_file():
        kind = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if kind is None:
            raise UserError(f"unsupported question file type '{path.suffix}'", file=path, field="generate.questions",
                            hint="Use .jsonl (FastChat questions), .json, .parquet, .csv or .arrow.")
        for i, rec in enumerate(_records_from_datasets(kind, str(path), split), 1):
            yield str(path), i, rec
        return
    if path.is_dir():
        kind = "disk" if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() else "hub-or-dir"
        for i, rec in enumerate(_records_from_datasets(kind, str(path), split), 1):
            yield str(path), i, rec
        return
    if _looks_like_path(source):
        raise UserError("question set not found", file=path, field="generate.questions",
                        hint="Check the path (relative to the current folder), or give an HF hub id like "
                             "yuzuai/rakuda-questions.")
    for i, rec in enumerate(_records_from_datasets("hub-or-dir", source, split), 1):
        yield source, i, rec


def load_reference_answers(path: str | Path) -> dict[str, list[str]]:
    """Reference turns by question id (as str) from a FastChat answer JSONL (``choices[0].turns``)."""
    out: dict[str, list[str]] = {}
    rpath = resolve_path(path)
    for line, rec in iter_jsonl(rpath):
        try:
            turns = rec["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            turns = rec.get("turns")
        turns = _as_turns(turns)
        if "question_id" not in rec or not turns:
            raise UserError("not a FastChat answer record (question_id, choices[0].turns)", file=rpath, line=line,
                            field="generate.reference_answers")
        out[str(rec["question_id"])] = turns
    return out


def load_questions(source: str | Path, *, split: str = "train", references: str | Path | None = None,
                   limit: int | None = None) -> list[Question]:
    """Load a question set as a list of `Question` (order of the source kept).

    Args:
        source: local path, ``embedded:NAME`` or HF hub dataset id (see module doc).
        split: split for hub ids and dataset folders.
        references: optional FastChat answer JSONL whose turns fill each question's ``reference``
            where the question has none (MT-Bench keeps GPT-4 references in a separate file).
        limit: keep only the first ``limit`` questions.

    Raises:
        UserError: missing file, unreachable hub id, a record without id or turns, duplicate ids.
    """
    questions: list[Question] = []
    seen: dict[str, tuple[str, int | None]] = {}
    elyza: bool | None = None  # decided by the first row: one format per source
    for row, (file, line, rec) in enumerate(read_question_records(str(source), split), 1):
        if elyza is None:
            elyza = is_elyza_record(rec)
        q = question_from_elyza(rec, row, file=file, line=line) if elyza else \
            question_from_record(rec, file=file, line=line)
        if q.key in seen:
            raise UserError(f"duplicate question_id {q.question_id!r} (first at line {seen[q.key][1]})",
                            file=file, line=line, hint="Question ids must be unique within a set.")
        seen[q.key] = (file, line)
        questions.append(q)
        if limit is not None and len(questions) >= limit:
            break
    if not questions:
        raise UserError("question set is empty", file=str(source), field="generate.questions")
    if references is not None:
        refs = load_reference_answers(references)
        for q in questions:
            if q.reference is None and q.key in refs:
                q.reference = refs[q.key]
    return questions


def questions_to_jsonl_records(questions: list[Question]) -> list[dict]:
    """`Question`s back to FastChat question records (for saving a resolved hub set beside answers)."""
    out = []
    for q in questions:
        rec: dict[str, Any] = {"question_id": q.question_id, "category": q.category, "turns": q.turns}
        if q.reference is not None:
            rec["reference"] = q.reference
        if q.eval_aspect is not None:
            rec["eval_aspect"] = q.eval_aspect
        out.append(rec)
    return out

