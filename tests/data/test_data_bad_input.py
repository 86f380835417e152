"""Bad input through the CLI: one clear message (file, line, field, what to do), exit
code 2, no traceback, nothing written; ``--on-error skip`` skips and counts instead."""

from __future__ import annotations

import json

import pytest

from ja_instruct.cli import main

GOOD = json.dumps({"instruction": "日本の首都は？", "output": "東京です。"}, ensure_ascii=False)


def write_lines(path, lines: list[bytes | str]) -> str:
    path.write_bytes(b"".join((x.encode("utf-8") if isinstance(x, str) else x) + b"\n" for x in lines))
    return str(path)


def run_fails(capsys, tmp_path, recipe, *extra) -> str:
    """Run `data build`, expect exit 2 with nothing written; return stderr."""
    out = tmp_path / "out"
    rc = main(["data", "build", str(recipe), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("ja-instruct: error: ")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return err


@pytest.mark.parametrize("lines, expect", [
    ([GOOD, '{"instruction": "a", "output": '], ["line 2", "malformed JSON", "--on-error skip"]),
    ([GOOD, json.dumps({"instruction": "a"})], ["line 2", "field 'output'", "missing field", "instruction"]),
    ([json.dumps({"instruction": "a", "output": 5}), GOOD], ["line 1", "field 'output'", "must be a string, got int"]),
    ([GOOD, b'{"instruction": "\xff\xfe", "output": "x"}'], ["line 2", "not valid UTF-8", "UTF-8"]),
    ([GOOD, "[1, 2]"], ["line 2", "expected a JSON object"]),
], ids=["malformed-json", "missing-field", "wrong-type", "non-utf8", "not-an-object"])
def test_bad_jsonl_rows(tmp_path, capsys, write_recipe, source, lines, expect):
    f = write_lines(tmp_path / "in.jsonl", lines)
    err = run_fails(capsys, tmp_path, write_recipe([source("a", f, "alpaca")]))
    assert f in err
    for piece in expect:
        assert piece in err


def test_bad_rows_skipped_and_counted(tmp_path, capsys, write_recipe, source):
    f = write_lines(tmp_path / "in.jsonl", [GOOD, '{"oops', b'{"instruction": "\xff", "output": "x"}',
                                            json.dumps({"instruction": "a"}), json.dumps({"instruction": 1, "output": "b"}),
                                            json.dumps({"instruction": "富士山の高さは？", "output": "3776mです。"},
                                                       ensure_ascii=False)])
    out = tmp_path / "out"
    assert main(["data", "build", str(write_recipe([source("a", f, "alpaca")])), "--out", str(out),
                 "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "malformed 4" in printed and "skipped in a:" in printed and "line 2" in printed
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["sources"]["a"]["dropped"] == {"malformed": 4} and stats["total"] == 2
    assert stats["sources"]["a"]["rows_read"] == 4  # records that parsed as JSON objects


def test_on_error_skip_in_the_recipe(tmp_path, capsys, write_recipe, source):
    f = write_lines(tmp_path / "in.jsonl", [GOOD, "not json"])
    recipe = write_recipe([source("a", f, "alpaca")], on_error="skip")
    assert main(["data", "build", str(recipe), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    run_fails(capsys, tmp_path, recipe, "--on-error", "raise")  # the command line wins


def test_empty_file(tmp_path, capsys, write_recipe, source):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    err = run_fails(capsys, tmp_path, write_recipe([source("a", tmp_path / "empty.jsonl", "alpaca")]))
    assert "empty.jsonl" in err and "empty" in err and "data.sources[0].path" in err
    (tmp_path / "blank.jsonl").write_text("\n\n", encoding="utf-8")  # only blank lines
    err = run_fails(capsys, tmp_path, write_recipe([source("a", tmp_path / "blank.jsonl", "alpaca")]))
    assert "blank.jsonl" in err and "no records" in err


def test_unknown_format_lists_valid_ones(tmp_path, capsys, write_recipe, source, data_assets):
    err = run_fails(capsys, tmp_path, write_recipe([source("a", data_assets / "alpaca.jsonl", "alpacca")]))
    assert "recipe.yaml" in err and "data.sources[0].format" in err and "line" in err
    for name in ("'alpaca'", "'oasst'", "'messages'", "'fastchat-answers'"):
        assert name in err


def test_missing_path(tmp_path, capsys, write_recipe, source, data_assets):
    ok = source("ok", data_assets / "alpaca.jsonl", "alpaca")
    err = run_fails(capsys, tmp_path, write_recipe([ok, source("b", tmp_path / "nope.jsonl", "alpaca")]))
    assert "nope.jsonl" in err and "file not found" in err and "data.sources[1].path" in err
    fc = source("f", data_assets / "fastchat/questions.jsonl", "fastchat-answers",
                answers=[str(tmp_path / "missing.jsonl")])
    err = run_fails(capsys, tmp_path, write_recipe([fc]))
    assert "missing.jsonl" in err and "data.sources[0].answers" in err


def test_bad_json_and_bad_structures(tmp_path, capsys, write_recipe, source):
    (tmp_path / "bad.json").write_text('[{"instruction": "a", "output": "b"},', encoding="utf-8")
    err = run_fails(capsys, tmp_path, write_recipe([source("a", tmp_path / "bad.json", "alpaca")]))
    assert "bad.json" in err and "invalid JSON" in err
    (tmp_path / "obj.json").write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', encoding="utf-8")
    err = run_fails(capsys, tmp_path, write_recipe([source("a", tmp_path / "obj.json", "alpaca")]))
    assert "record 2" in err and "field 'output'" in err
    msgs = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})
    f = write_lines(tmp_path / "m.jsonl", [msgs])
    err = run_fails(capsys, tmp_path, write_recipe([source("m", f, "messages")]))
    assert "line 1" in err and "messages[1].role" in err and "unknown role 'robot'" in err
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    err = run_fails(capsys, tmp_path, write_recipe([source("p", tmp_path / "bad.parquet", "alpaca")]))
    assert "bad.parquet" in err and "cannot read Parquet file" in err
    oasst = json.dumps({"message_id": "x", "parent_id": None, "role": "user", "text": "a"})
    err = run_fails(capsys, tmp_path, write_recipe([source("o", write_lines(tmp_path / "o.jsonl", [oasst]), "oasst")]))
    assert "field 'role'" in err and "'prompter' or 'assistant'" in err


def test_recipe_mistakes(tmp_path, capsys, write_recipe, source, data_assets):
    s = source("a", data_assets / "alpaca.jsonl", "alpaca", weigth=2)
    err = run_fails(capsys, tmp_path, write_recipe([s]))
    assert "unknown key 'weigth'" in err and "Did you mean 'weight'?" in err
    s = source("a", data_assets / "alpaca.jsonl", "alpaca", license="CC-BY-NC-4.0", commercial=True)
    err = run_fails(capsys, tmp_path, write_recipe([s], licence_policy="noncommercial"))
    assert "contradictory" in err
    err = run_fails(capsys, tmp_path, write_recipe([source("a", data_assets / "alpaca.jsonl", "alpaca")] * 2))
    assert "two sources are named 'a'" in err


def test_deeply_nested_json_is_one_line_error(tmp_path, capsys, write_recipe, source):
    f = write_lines(tmp_path / "deep.jsonl", [GOOD, "[" * 100000])
    err = run_fails(capsys, tmp_path, write_recipe([source("a", f, "alpaca")]))
    assert f"{f}, line 2" in err and "nested too deeply" in err
    deep = tmp_path / "deep.json"
    deep.write_text("[\n" + "[" * 100000 + "\n]", encoding="utf-8")
    err = run_fails(capsys, tmp_path, write_recipe([source("a", deep, "alpaca")]))
    assert f"{deep}, line 2" in err and "nested too deeply" in err


def test_duplicate_recipe_section_names_both_lines(tmp_path, capsys, data_assets):
    recipe = tmp_path / "dup.yaml"
    src = f"  sources: [{{name: a, path: '{data_assets / 'alpaca.jsonl'}', format: alpaca, license: MIT}}]\n"
    recipe.write_text("name: t\ndata:\n" + src + "seed: 1\ndata:\n" + src.replace("name: a", "name: b"),
                      encoding="utf-8")
    err = run_fails(capsys, tmp_path, recipe)
    assert "dup.yaml, line 5" in err and "'data'" in err and "lines 2 and 5" in err


def test_utf8_bom_files_load(tmp_path, capsys, source, data_assets):
    bom = b"\xef\xbb\xbf"
    jl = tmp_path / "bom.jsonl"
    jl.write_bytes(bom + (data_assets / "alpaca.jsonl").read_bytes())
    js = tmp_path / "bom.json"
    js.write_bytes(bom + json.dumps([{"instruction": "東京は？", "output": "首都です。"}],
                                    ensure_ascii=False).encode("utf-8"))
    recipe = tmp_path / "bom.yaml"
    text = json.dumps({"out_dir": str(tmp_path / "run"), "data": {"sources": [
        source("jl", jl, "alpaca"), source("js", js, "alpaca")]}}, ensure_ascii=False)
    recipe.write_bytes(bom + text.encode("utf-8"))  # JSON is YAML: a BOM-prefixed recipe
    assert main(["data", "build", str(recipe), "--out", str(tmp_path / "o")]) == 0, capsys.readouterr().err
    stats = json.loads((tmp_path / "o" / "stats.json").read_text(encoding="utf-8"))
    assert stats["sources"]["jl"]["rows_read"] == 6 and stats["sources"]["js"]["kept"] == 1
