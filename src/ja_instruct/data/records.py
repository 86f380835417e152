"""Reading raw records of a source: local JSON / JSONL / Parquet files, local
dataset folders, and Hugging Face hub datasets (through ``datasets.load_dataset``).

Every record comes with its location (file or hub id, JSONL line, record index)
so that a bad record is reported as one clear `UserError` naming file, line and
field, or, with ``on_error="skip"``, skipped and counted as ``malformed``.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ja_instruct.config import looks_local, resolve_path
from ja_instruct.data.config import SourceConfig
from ja_instruct.data.hub import is_builder
from ja_instruct.errors import UserError
from ja_instruct.io import iter_jsonl, read_json

MAX_ERRORS_KEPT = 5
_GLOB_CHARS = "*?["


@dataclass
class Row:
    """One raw record and where it came from."""

    rec: dict
    file: str
    line: int | None  # 1-based JSONL line; None for JSON / Parquet / hub rows
    index: int  # 0-based record index within the file or split

    def error(self, message: str, field: str | None = None, hint: str | None = None) -> UserError:
        """A `UserError` pointing at this record (line for JSONL, record number otherwise)."""
        if self.line is None:
            message = f"record {self.index + 1}: {message}"
        fix = "Fix the record, or pass --on-error skip to skip bad rows."
        hint = f"{hint} {fix}" if hint else fix
        return UserError(message, file=self.file, line=self.line, field=field, hint=hint)

    def str_field(self, key: str, *, required: bool = True, hint: str | None = None) -> str:
        """The string field ``key``; missing (when required) or non-string values are errors."""
        value = self.rec.get(key)
        if value is None:
            if not required:
                return ""
            raise self.error(f"missing field '{key}'", field=key, hint=hint)
        if not isinstance(value, str):
            raise self.error(f"field '{key}' must be a string, got {type(value).__name__}", field=key, hint=hint)
        return value


@dataclass
class SourceStats:
    """Counts of one source, filled while reading, parsing, cleaning and mixing."""

    rows_read: int = 0
    examples: int = 0
    kept: int = 0
    sampled: int = 0
    dropped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def bad_row(self, err: UserError, on_error: str) -> None:
        """A malformed record: raise it, or count it and keep a few messages."""
        if on_error != "skip":
            raise err
        self.dropped["malformed"] += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(str(err))


def is_local(path: str) -> bool:
    """Whether ``path`` names a local file/folder (as opposed to a hub id or builder name);
    see `ja_instruct.config.looks_local`: a missing ``data/mine.jsonl`` is local (and missing),
    never a hub id."""
    return looks_local(path)


def _expand(pattern: str) -> list[Path]:
    p = resolve_path(pattern)
    if any(c in pattern for c in _GLOB_CHARS):
        return sorted(Path(f) for f in glob.glob(str(p)))
    return [p]


def builder_files(src: SourceConfig) -> list[Path]:
    """The local ``data_files`` of a builder source (``path: parquet``), globs expanded."""
    return [f for pattern in src.data_files or [] for f in _expand(pattern)]


def source_field(index: int | None, key: str) -> str:
    return key if index is None else f"data.sources[{index}].{key}"


def expand_answers(src: SourceConfig, index: int | None) -> list[Path]:
    """The answer files of a fastchat-answers source (files, folders of ``*.jsonl``, globs)."""
    files: list[Path] = []
    for pattern in src.answers:
        p = resolve_path(pattern)
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
        elif any(c in pattern for c in _GLOB_CHARS):
            found = sorted(Path(f) for f in glob.glob(str(p)))
        else:
            if not p.is_file():
                raise UserError("answer file not found", file=p, field=source_field(index, "answers"),
                                hint="Check the path (relative to the current directory).")
            found = [p]
        if not found:
            raise UserError(f"no answer files match '{pattern}'", field=source_field(index, "answers"),
                            hint="Point 'answers' at FastChat answer JSONL files, a folder of them or a glob.")
        files.extend(found)
    return files


def check_paths(sources: list[SourceConfig]) -> None:
    """Fail early (before any loading) on local paths that do not exist (weight-0 sources are unused)."""
    for i, src in enumerate(sources):
        if src.weight == 0:
            continue
        if is_local(src.path):
            p = resolve_path(src.path)
            if not p.exists():
                raise UserError("file not found", file=p, field=source_field(i, "path"),
                                hint="Check the path in the recipe (relative to the current directory); "
                                     "a hub dataset id is written owner/name.")
            if p.is_file() and p.stat().st_size == 0:
                raise UserError("file is empty", file=p, field=source_field(i, "path"),
                                hint="Point the source at a file with records.")
        elif is_builder(src):  # `path: parquet` + local data_files: they must exist too
            for pattern in src.data_files or []:
                found = _expand(pattern)
                missing = [f for f in found if not f.is_file()]
                if missing or not found:
                    raise UserError("file not found" if missing else f"no files match '{pattern}'",
                                    file=missing[0] if missing else None, field=source_field(i, "data_files"),
                                    hint="Check the path in the recipe (relative to the current directory).")
        if src.format == "fastchat-answers":
            expand_answers(src, i)


def iter_rows(src: SourceConfig, stats: SourceStats, on_error: str, path: str | None = None) -> Iterator[Row]:
    """Yield the records of a source (or of ``path``), counting them in ``stats.rows_read``."""
    path = path or src.path
    n = 0
    for row in _iter_raw(src, path, stats, on_error):
        if src.max_rows is not None and n >= src.max_rows:
            return
        n += 1
        stats.rows_read += 1
        yield row


def _iter_raw(src: SourceConfig, path: str, stats: SourceStats, on_error: str) -> Iterator[Row]:
    if not is_local(path):
        yield from _iter_hub(src, path)
        return
    p = resolve_path(path)
    if not p.exists():
        raise UserError("file not found", file=p, hint="Check the path in the recipe.")
    if p.is_dir():
        yield from _iter_dataset_dir(src, p)
    elif p.suffix == ".jsonl":
        errors: list[UserError] = []
        for lineno, rec in iter_jsonl(p, on_error=on_error, errors=errors):
            for err in errors:  # lines iter_jsonl skipped before this one
                stats.bad_row(err, on_error)
            errors.clear()
            yield Row(rec, str(p), lineno, lineno - 1)
        for err in errors:
            stats.bad_row(err, on_error)
    elif p.suffix == ".json":
        yield from _iter_json(p, stats, on_error)
    elif p.suffix == ".parquet":
        yield from _iter_parquet(p)
    else:
        raise UserError(f"unsupported file type '{p.suffix}'", file=p,
                        hint="Use .json, .jsonl or .parquet files, a dataset folder, or a hub id.")


def _iter_json(p: Path, stats: SourceStats, on_error: str) -> Iterator[Row]:
    data = read_json(p)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError("expected a JSON list of records (or {\"data\": [...]})", file=p,
                        hint="Use a list of objects, or JSONL with one object per line.")
    if not data:
        raise UserError("file has no records", file=p, hint="Point the source at a file with records.")
    for i, rec in enumerate(data):
        row = Row(rec if isinstance(rec, dict) else {}, str(p), None, i)
        if not isinstance(rec, dict):
            stats.bad_row(row.error(f"expected a JSON object, got {type(rec).__name__}"), on_error)
            continue
        yield row


def _iter_parquet(p: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"cannot read Parquet file: {str(e).splitlines()[0]}", file=p,
                        hint="Check that the file is a valid Parquet file.") from None
    if table.num_rows == 0:
        raise UserError("file has no records", file=p, hint="Point the source at a file with records.")
    for i, rec in enumerate(table.to_pylist()):
        yield Row(rec, str(p), None, i)


def _iter_dataset(ds: Any, name: str) -> Iterator[Row]:
    if len(ds) == 0:
        raise UserError("dataset has no records", file=name, hint="Check the split / subset.")
    for i, rec in enumerate(ds):
        yield Row(dict(rec), name, None, i)


def _iter_dataset_dir(src: SourceConfig, p: Path) -> Iterator[Row]:
    import datasets

    if (p / "dataset_info.json").is_file() and (p / "state.json").is_file():
        ds = datasets.load_from_disk(str(p))  # a save_to_disk folder (our own output too)
    else:
        ds = _load_dataset(src, str(p))
    yield from _iter_dataset(ds, str(p))


def _iter_hub(src: SourceConfig, path: str) -> Iterator[Row]:
    yield from _iter_dataset(_load_dataset(src, path), path if not src.revision else f"{path}@{src.revision}")


def _load_dataset(src: SourceConfig, path: str) -> Any:
    """``datasets.load_dataset`` for a hub id, a builder (+ data_files) or a local folder."""
    import datasets

    kwargs: dict[str, Any] = {"split": src.split}
    if src.subset:
        kwargs["name"] = src.subset
    if src.revision:
        kwargs["revision"] = src.revision
    if src.data_files:
        kwargs["data_files"] = [str(resolve_path(f)) for f in src.data_files]
    try:
        ds = datasets.load_dataset(path, **kwargs)
    except Exception as e:  # hub / network / builder errors come in many types
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = ("Offline (HF_HUB_OFFLINE=1), a hub dataset must already be in the local HF cache; "
                "or point 'path' at local files." if offline else
                "Check the hub id, split and subset (and your network), or point 'path' at local files.")
        raise UserError(f"cannot load dataset '{path}' (source '{src.name}'): {type(e).__name__}: {first}",
                        field="path", hint=hint) from None
    return ds


def load_question_file(path: Path, on_error: str, stats: SourceStats) -> dict[str, list[str]]:
    """A FastChat question JSONL as ``{str(question_id): turns}`` (v1 ``text`` = one turn)."""
    questions: dict[str, list[str]] = {}
    errors: list[UserError] = []
    for lineno, rec in iter_jsonl(path, on_error=on_error, errors=errors):
        row = Row(rec, str(path), lineno, lineno - 1)
        try:
            if "question_id" not in rec:
                raise row.error("missing field 'question_id'", field="question_id")
            turns = rec.get("turns")
            if turns is None and "text" in rec:
                turns = [row.str_field("text")]
            if turns is None:
                raise row.error("missing field 'turns'", field="turns",
                                hint="FastChat questions need 'turns' (a list of strings) or 'text'.")
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise row.error("field 'turns' must be a non-empty list of strings", field="turns")
        except UserError as err:
            stats.bad_row(err, on_error)
            continue
        questions[str(rec["question_id"])] = turns
    for err in errors:
        stats.bad_row(err, on_error)
    return questions


def dumps_id(value: Any) -> str:
    """A record id as a string (ints stay readable, other objects become JSON)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
