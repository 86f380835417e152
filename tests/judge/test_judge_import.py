"""`judge import`: FastChat judgment files re-parsed with our parser, mismatches flagged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ja_instruct.errors import UserError
from ja_instruct.io import read_jsonl
from ja_instruct.judge.importer import import_fastchat

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "judge"


def test_import_single(tmp_path):
    out = import_fastchat([ASSETS / "gpt-4_single.jsonl"], tmp_path / "imp", bootstrap=0)
    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == 5 and all(r["mode"] == "single" for r in recs)
    by = {(r["model"], r["question_id"], r["turn"]): r for r in recs}
    assert by[("vicuna-13b", 81, 1)]["score"] == 8 and not by[("vicuna-13b", 81, 1)]["parse_mismatch"]
    assert by[("vicuna-13b", 81, 2)]["prompt"] == "single-v1-multi-turn@fastchat"
    fw = by[("vicuna-13b", 82, 1)]  # full-width digits: FastChat stored -1, we read 7
    assert fw["score"] == 7 and fw["stored_score"] is None and fw["parse_mismatch"]
    first = by[("llama-13b", 82, 1)]  # FastChat took the quoted example [[5]], we take the final [[2]]
    assert first["score"] == 2 and first["stored_score"] == 5 and first["parse_mismatch"]
    bad = by[("llama-13b", 81, 1)]
    assert bad["status"] == "parse_error" and bad["score"] is None and not bad["parse_mismatch"]
    summ = json.loads((out / "summary.json").read_text())
    assert summ["import"]["parse_mismatches"] == 2
    assert summ["models"]["llama-13b"]["parse_errors"] == 1 and summ["models"]["llama-13b"]["n"] == 1
    assert summ["models"]["vicuna-13b"]["per_turn"] == {"1": 7.5, "2": 3.0}
    assert (out / "config.yaml").is_file()


def test_import_pair(tmp_path):
    out = import_fastchat([ASSETS / "gpt-4_pair.jsonl"], tmp_path / "imp", bootstrap=10)
    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == 8 and {r["order"] for r in recs} == {"AB", "BA"}
    by = {(r["question_id"], r["model_b"], r["order"]): r for r in recs}
    # g2 shows model_2 first: its "[[B]]" means model_1 won, as FastChat's g2_winner says
    assert by[(81, "llama-13b", "BA")]["verdict"] == "A" and not by[(81, "llama-13b", "BA")]["parse_mismatch"]
    assert by[(82, "llama-13b", "BA")]["verdict"] == "B"
    assert by[(83, "llama-13b", "BA")]["status"] == "parse_error"
    assert by[(83, "llama-13b", "BA")]["parse_mismatch"]  # FastChat stored a tie for an unreadable verdict
    rk = by[(83, "alpaca-13b", "AB")]  # Rakuda 1/2/3 format, FastChat's pattern could not read it
    assert rk["verdict"] == "A" and rk["stored_verdict"] is None and rk["parse_mismatch"]
    assert by[(83, "alpaca-13b", "BA")]["verdict"] == "A"
    summ = json.loads((out / "summary.json").read_text())
    pw = summ["pairwise"]
    assert set(pw["models"]) == {"vicuna-13b", "llama-13b", "alpaca-13b"}
    assert pw["inconsistency"] == pytest.approx(1 / 3)  # q82: A then B -> tie + inconsistent


def test_import_cli_and_errors(tmp_path, capsys, monkeypatch):
    from ja_instruct.cli import main

    # main() calls logging.basicConfig: keep its handler (bound to this test's capture) out of later tests
    monkeypatch.setattr(logging.getLogger(), "handlers", [])

    assert main(["judge", "import", str(ASSETS / "gpt-4_pair.jsonl"), "--out", str(tmp_path / "o"),
                 "--bootstrap", "0"]) == 0
    assert (tmp_path / "o" / "summary.json").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    assert main(["judge", "import", str(bad), "--out", str(tmp_path / "p")]) == 2
    assert "not a FastChat single judgment" in capsys.readouterr().err
    with pytest.raises(UserError, match="mixed"):
        import_fastchat([ASSETS / "gpt-4_pair.jsonl", ASSETS / "gpt-4_single.jsonl"], tmp_path / "q")


def test_duplicate_rows_are_reported_and_not_counted_as_repeats(tmp_path, caplog):
    lines = (ASSETS / "gpt-4_single.jsonl").read_text(encoding="utf-8").splitlines()
    # the file concatenated with itself minus its first row, e.g. a re-run appended to the same file
    doubled = tmp_path / "twice_single.jsonl"
    doubled.write_text("\n".join(lines + lines[1:]) + "\n", encoding="utf-8")
    out = import_fastchat([doubled], tmp_path / "imp", bootstrap=0)
    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == len(lines)  # the first of each kept
    assert [r["source"] for r in recs] == [f"{doubled}:{i}" for i in range(1, len(lines) + 1)]
    summ = json.loads((out / "summary.json").read_text())
    assert summ["import"]["duplicates"] == len(lines) - 1
    assert all(m["repeat_std"] is None for m in summ["models"].values())
    plain = import_fastchat([ASSETS / "gpt-4_single.jsonl"], tmp_path / "plain", bootstrap=0)
    assert summ["models"] == json.loads((plain / "summary.json").read_text())["models"]  # same n, means
    msg = next(r.getMessage() for r in caplog.records if "duplicate" in r.getMessage())
    assert f"{len(lines) - 1} duplicate judgment(s)" in msg and f"{doubled}:{len(lines) + 1}" in msg

    # a pair row repeated with its two models swapped holds the same two ordered games
    row = json.loads((ASSETS / "gpt-4_pair.jsonl").read_text(encoding="utf-8").splitlines()[0])
    swapped = dict(row, model_1=row["model_2"], model_2=row["model_1"], g1_judgment=row["g2_judgment"],
                   g2_judgment=row["g1_judgment"])
    pair = tmp_path / "pair.jsonl"
    pair.write_text(json.dumps(row) + "\n" + json.dumps(swapped) + "\n", encoding="utf-8")
    out = import_fastchat([pair], tmp_path / "imp2", bootstrap=0)
    assert len(read_jsonl(out / "judgments.jsonl")) == 2
    assert json.loads((out / "summary.json").read_text())["import"]["duplicates"] == 2
