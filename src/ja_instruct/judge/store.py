"""The judgment cache: an append-only JSONL store keyed by a content hash.

Each finished judgment (ok or parse_error) is appended and fsynced the moment it
arrives (`ja_instruct.io.JsonlAppender`), so a run killed at any point loses only
the calls still in flight; the re-run skips every key already stored and so never
repeats an API call for a finished item. When a key appears twice (a parse error
judged again with ``retry_parse_errors``), the last record wins.
"""

from __future__ import annotations

from pathlib import Path

from ja_instruct.io import JsonlAppender, read_jsonl_store, stable_hash


def text_hash(obj: object) -> str:
    """Short sha256 of any JSON-able value (question turns, answers...)."""
    return stable_hash(obj)


def make_key(**parts: object) -> str:
    """The cache key of one judgment: hash of question id + question text hash, answer hash(es),
    model ids, judge model, prompt name@version, sampling params, turn, order and repeat index."""
    return stable_hash(parts, length=32)


class JudgmentStore:
    """Dict-like view of the store file plus `add` (append + flush + fsync)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        for rec in read_jsonl_store(self.path):
            if "key" in rec:
                self.records[rec["key"]] = rec
        self._appender: JsonlAppender | None = None

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, record: dict) -> None:
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        self._appender.append(record)
        self.records[record["key"]] = record

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None

    def __enter__(self) -> "JudgmentStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
