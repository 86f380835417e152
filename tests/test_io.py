"""Atomic writes, JSONL errors that name file and line, torn-line-safe stores."""

from __future__ import annotations

import json

import pytest

from ja_instruct.errors import UserError
from ja_instruct.io import JsonlAppender, atomic_write, iter_jsonl, read_jsonl_store


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_iter_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": 2,\n')
    with pytest.raises(UserError) as e:
        list(iter_jsonl(p))
    assert "a.jsonl" in str(e.value) and "line 3" in str(e.value)
    errors: list = []
    assert [r for _, r in iter_jsonl(p, on_error="skip", errors=errors)] == [{"a": 1}]
    assert len(errors) == 1


def test_iter_jsonl_non_utf8_and_empty(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes('{"a": "日本"}\n'.encode("shift_jis"))
    with pytest.raises(UserError, match="UTF-8"):
        list(iter_jsonl(p))
    e = tmp_path / "e.jsonl"
    e.write_text("")
    with pytest.raises(UserError, match="no records"):
        list(iter_jsonl(e))
    with pytest.raises(UserError, match="not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def test_appender_survives_torn_last_line(tmp_path):
    p = tmp_path / "store.jsonl"
    with JsonlAppender(p) as a:
        a.append({"k": 1})
    with open(p, "a") as f:
        f.write('{"k": 2, "tor')  # killed mid-write
    assert read_jsonl_store(p) == [{"k": 1}]
    with JsonlAppender(p) as a:
        a.append({"k": 3})
    assert [json.loads(x) for x in p.read_text().splitlines()] == [{"k": 1}, {"k": 3}]
