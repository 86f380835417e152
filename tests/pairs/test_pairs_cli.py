"""``ja-instruct pairs`` and the pairs stage inside ``ja-instruct run``."""

from __future__ import annotations

import logging

import yaml

from ja_instruct.cli import main


def test_pairs_command_writes_the_folder_and_registers_out(write_recipe, judge_calls, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # bind the CLI's logging to this test's stderr
    recipe = write_recipe()
    elsewhere = tmp_path / "elsewhere"
    assert main(["pairs", str(recipe), "--out", str(elsewhere), "--set", "pairs.margin=1"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(elsewhere)
    assert "pairs: " in out.err and "pairs kept of 12 prompts" in out.err
    for name in ("pairs.jsonl", "stats.json", "stats.md", "config.yaml", "manifest.json"):
        assert (elsewhere / name).is_file()
    assert yaml.safe_load((elsewhere / "config.yaml").read_text(encoding="utf-8"))["margin"] == 1.0
    # registered: the pipeline (and DPO training) find the pairs there
    assert yaml.safe_load((tmp_path / "run" / "layout.json").read_text(encoding="utf-8")) == {"pairs": str(elsewhere)}
    assert main(["pairs", str(recipe), "--set", "pairs.margin=1"]) == 0
    assert "pairs: up to date" in capsys.readouterr().err


def test_recipe_with_neither_model_nor_input_is_a_one_line_error(write_recipe, capsys):
    recipe = write_recipe(model=None)
    assert main(["pairs", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "pairs.model" in err and "pairs.input" in err
    no_section = recipe.with_name("none.yaml")
    no_section.write_text("name: x\n", encoding="utf-8")
    assert main(["pairs", str(no_section)]) == 2
    assert "no 'pairs' section" in capsys.readouterr().err


def test_the_pipeline_runs_pairs_after_data(write_recipe, judge_calls, capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    recipe = write_recipe(margin=1)
    assert main(["run", str(recipe)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(x.startswith("[2/6] pairs    done in ") for x in lines), lines
    assert any("[1/6] data     skipped" in x for x in lines)
    assert main(["run", str(recipe)]) == 0
    assert any(x.startswith("[2/6] pairs    up to date") for x in capsys.readouterr().out.splitlines())
