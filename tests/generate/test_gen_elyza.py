"""ELYZA-tasks-100's format (input, output, eval_aspect) as a question set: JSONL, CSV, parquet, hub id."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ja_instruct.errors import UserError
from ja_instruct.generate.questions import load_questions, questions_to_jsonl_records

ASSETS = Path(__file__).parents[1] / "assets" / "questions"
JSONL = ASSETS / "elyza_tasks_sample.jsonl"
CSV = ASSETS / "elyza_tasks_sample.csv"


def rows():
    return [json.loads(line) for line in JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("path", [JSONL, CSV], ids=["jsonl", "csv"])
def test_elyza_rows_load_as_numbered_questions(path):
    expected = rows()
    qs = load_questions(path)
    assert [q.question_id for q in qs] == list(range(1, len(expected) + 1))
    for q, row in zip(qs, expected):
        assert q.category == "elyza"
        assert q.turns == [row["input"]]  # multi-line inputs (a code block) survive CSV quoting
        assert q.reference == [row["output"]]
        assert q.eval_aspect == row["eval_aspect"]
    assert load_questions(path, limit=2)[-1].question_id == 2


def test_parquet_and_a_saved_copy_keep_the_aspect(tmp_path):
    import pandas as pd

    pq = tmp_path / "elyza.parquet"
    pd.DataFrame(rows()).to_parquet(pq)
    qs = load_questions(pq)
    assert [q.eval_aspect for q in qs] == [r["eval_aspect"] for r in rows()]
    # The resolved set saved beside the answers (FastChat records) reads back the same.
    saved = tmp_path / "resolved.jsonl"
    saved.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in questions_to_jsonl_records(qs)),
                     encoding="utf-8")
    again = load_questions(saved)
    assert [(q.question_id, q.category, q.turns, q.reference, q.eval_aspect) for q in again] == \
        [(q.question_id, q.category, q.turns, q.reference, q.eval_aspect) for q in qs]


def test_other_sets_have_no_aspect(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 7, "category": "地理", "turns": ["富士山の高さは？"]},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    (q,) = load_questions(path)
    assert q.eval_aspect is None and q.question_id == 7


def test_a_row_without_input_is_one_error_naming_file_and_line(tmp_path):
    bad = rows()
    del bad[2]["input"]
    path = tmp_path / "elyza.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in bad) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_questions(path)
    assert e.value.line == 3 and str(path) in str(e.value) and "input" in str(e.value)


def test_an_empty_input_cell_in_csv_is_an_error(tmp_path):
    bad = rows()
    bad[1]["input"] = ""
    path = tmp_path / "elyza.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["input", "output", "eval_aspect"])
        w.writeheader()
        w.writerows(bad)
    with pytest.raises(UserError) as e:
        load_questions(path)
    assert e.value.line == 2 and "elyza.csv" in str(e.value) and "input" in str(e.value)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        load_questions("elyza/ELYZA-tasks-100", split="test")
    assert "elyza/ELYZA-tasks-100" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)


def test_a_first_row_without_input_is_named_as_an_elyza_error(tmp_path):
    # the format is recognised by ELYZA's other columns, so the error says what ELYZA needs
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps({"output": "答え", "eval_aspect": "正確さ"}, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_questions(str(path))
    assert "input" in str(e.value) and "question_id" not in str(e.value) and e.value.line == 1
