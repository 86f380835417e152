"""Small, careful file I/O shared by every stage.

* Outputs are written atomically (temp file in the same directory, fsync, rename),
  so a killed process never leaves a half-written file behind; they get the
  ordinary permissions of a new file (0666 minus the umask), not mkstemp's 0600.
* JSON and JSONL readers report the file and line of a malformed record as a
  `UserError`, whatever the failure (bad syntax, absurd nesting depth, an integer
  too long to convert); a UTF-8 byte-order mark is accepted.
* Append-only JSONL stores flush and fsync every record, so a killed run loses
  at most the record being written (and a torn last line is ignored on reload).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ja_instruct.errors import UserError


BOM = b"\xef\xbb\xbf"
# What a JSON parser can raise on hostile or odd input besides JSONDecodeError: deep
# nesting exhausts the recursion limit, a 5000-digit integer exceeds int's str limit.
_JSON_FAILURES = (ValueError, RecursionError)


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc);
    elsewhere set-and-restore, which is racy only against threads creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temp file next to ``path``; on success rename it over ``path``.

    The file gets ``0666 & ~umask`` like any file ``open()`` creates: mkstemp's private
    0600 would make outputs unreadable to teammates on a shared filesystem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" in mode:
        encoding = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short sha256 of a JSON-able value, stable across runs (sorted keys): the identity of
    configs, inputs and cache entries that decides whether work can be skipped."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as UTF-8 JSON (Japanese text kept readable)."""
    with atomic_write(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_write(path) as f:
        f.write(text)


def write_jsonl(path: str | Path, records: Iterator[dict] | list[dict]) -> None:
    """Atomically write records as JSON lines."""
    with atomic_write(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _deepest_line(text: str) -> int:
    """1-based line where the bracket nesting of a JSON text first reaches its maximum
    (strings skipped), for naming where a too-deeply-nested document goes wrong."""
    depth = best = 0
    line = best_line = 1
    in_str = escaped = False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > best:
                best, best_line = depth, line
        elif ch in "]}":
            depth -= 1
    return best_line


def parse_json(text: str, file: str | Path, line: int | None = None, hint: str | None = None) -> Any:
    """``json.loads(text)``, with every failure a `UserError` naming ``file`` and the line.

    ``line`` is the line ``text`` starts at in ``file`` (JSONL records); for a whole file
    (``None``) the line comes from the parser, or from the nesting for RecursionError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        # a JSONL record is one line: the parser's line 2 is only the newline it ended on
        what, where = f"{e.msg} (column {e.colno})", line if line is not None else e.lineno
    except RecursionError:
        what, where = "nested too deeply to parse", line or _deepest_line(text)
    except ValueError as e:  # e.g. an integer literal longer than Python's 4300-digit limit
        what, where = str(e).split(":")[0], line
    label = "malformed JSON" if line is not None else "invalid JSON"
    raise UserError(f"{label}: {what}", file=file, line=where, hint=hint or "Fix the JSON syntax.") from None


def read_json(path: str | Path) -> Any:
    """Read a JSON file (a UTF-8 BOM is allowed); a missing file or bad JSON is a `UserError`
    naming it and the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", file=path, hint="Check the path.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"not valid UTF-8 ({e.reason} at byte {e.start})", file=path,
                        hint="Re-save the file as UTF-8.") from None
    return parse_json(text, path)


def iter_jsonl(
    path: str | Path,
    *,
    on_error: str = "raise",
    errors: list[UserError] | None = None,
    allow_empty: bool = False,
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    Args:
        path: the file.
        on_error: ``"raise"`` turns the first bad line (invalid JSON, not an object,
            not UTF-8) into a `UserError` naming file and line; ``"skip"`` skips it
            and appends the error to ``errors``.
        errors: collects skipped-line errors when ``on_error="skip"``.
        allow_empty: if False, a file with no records is a `UserError`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", file=path, hint="Check the path in your recipe or command line.")
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(BOM):  # editors on Windows save UTF-8 with a BOM
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            try:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"not valid UTF-8 (byte {e.start} of the line)", file=path, line=lineno,
                                    hint="Re-save the file as UTF-8, or pass --on-error skip.") from None
                rec = parse_json(text, path, lineno,
                                 hint="Fix the line, or pass --on-error skip to skip bad rows.")
                if not isinstance(rec, dict):
                    raise UserError(f"expected a JSON object, got {type(rec).__name__}", file=path,
                                    line=lineno, hint="Each line must be one JSON object.")
            except UserError as err:
                if on_error == "skip":
                    if errors is not None:
                        errors.append(err)
                    continue
                raise
            n += 1
            yield lineno, rec
    if n == 0 and not allow_empty and not errors:
        raise UserError("file has no records", file=path, hint="Point the recipe at a non-empty JSONL file.")


def read_jsonl(path: str | Path, **kwargs: Any) -> list[dict]:
    """Read all records of a JSONL file (see `iter_jsonl`)."""
    return [rec for _, rec in iter_jsonl(path, **kwargs)]


def read_jsonl_store(path: str | Path) -> list[dict]:
    """Read an append-only JSONL store written by `JsonlAppender`.

    A torn last line (the process was killed mid-write) is ignored; a bad line
    anywhere else is an error, since that means the file was edited by hand.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw.decode("utf-8")))
        except _JSON_FAILURES:  # UnicodeDecodeError is a ValueError too
            if i >= len(lines) - 1:  # the last (possibly unterminated) line: torn write
                continue
            raise UserError("corrupt record in store", file=path, line=i,
                            hint="Delete the line (or the file to start over).") from None
    return out


class JsonlAppender:
    """Append records to a JSONL store, flushing and fsyncing each one.

    If the file ends in a torn line (a previous run was killed mid-write), that
    fragment is cut off first so the next record starts on a clean line.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                keep = data[: data.rfind(b"\n") + 1]
                with open(self.path, "wb") as f:
                    f.write(keep)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
