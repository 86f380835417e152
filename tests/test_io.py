"""Atomic writes (with ordinary permissions), JSON/JSONL errors that name file and line whatever
the failure, UTF-8 BOMs, torn-line-safe stores."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ja_instruct.errors import UserError
from ja_instruct.io import JsonlAppender, atomic_write, iter_jsonl, read_json, read_jsonl_store


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


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    from ja_instruct.io import write_json, write_text

    old = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


def test_bom_is_accepted(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert [r for _, r in iter_jsonl(p)] == [{"a": 1}, {"a": 2}]
    j = tmp_path / "a.json"
    j.write_bytes('\ufeff{"名前": "太郎"}'.encode("utf-8"))
    assert read_json(j) == {"名前": "太郎"}


def test_any_json_failure_names_file_and_line(tmp_path):
    p = tmp_path / "deep.jsonl"
    p.write_text('{"a": 1}\n' + "[" * 100000 + "\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        list(iter_jsonl(p))
    assert "deep.jsonl, line 2" in str(e.value) and "nested too deeply" in str(e.value)
    errors: list = []
    assert [r for _, r in iter_jsonl(p, on_error="skip", errors=errors)] == [{"a": 1}] and len(errors) == 1
    big = tmp_path / "big.jsonl"
    big.write_text('{"a": 1}\n{"n": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        list(iter_jsonl(big))
    j = tmp_path / "deep.json"
    j.write_text('{"ok": [1, 2],\n "x": "' + "[" * 100000 + '",\n "deep": ' + "[" * 50000 + "\n}",
                 encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_json(j)
    assert "deep.json, line 3" in str(e.value)  # brackets inside the string on line 2 do not count
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  "b": \n}', encoding="utf-8")
    with pytest.raises(UserError, match="line 4"):
        read_json(bad)


def test_store_with_a_deeply_nested_line_is_corrupt(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"k": 1}\n' + "[" * 100000 + '\n{"k": 2}\n', encoding="utf-8")
    with pytest.raises(UserError, match="corrupt record"):
        read_jsonl_store(p)
