"""The report leads with what is meaningful: judge-free signals (reference NLL, answer health),
base/tuned roles, verdicts in summary.md and summary.json (the same numbers), the table order in
demo vs real-judge mode, and verdicts that neither reward empty answers nor read noise as an effect."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest
import yaml
from markupsafe import escape

from ja_instruct.errors import UserError
from ja_instruct.report import build_report, update_report
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.signals import MIN_PAIRED
from report_helpers import write_judge_dir

BASE_PATH = "embedded:tiny-base"
QUESTIONS = 12
TURNS = 2 * QUESTIONS


def _health(truncated: bool, loop: bool, ja: float, empty: bool = False) -> dict:
    return {"ja_ratio": 0.0 if empty else ja, "repeat_ratio": 0.9 if loop else 0.05, "loop": loop,
            "truncated": truncated, "empty": empty, "n_tokens": 0 if empty else 12}


# per model: one health record per turn (2 turns x QUESTIONS questions = 24 turns), turn i of question i // 2
HEALTH = {
    "base": [_health(truncated=i < 18, loop=i < 12, ja=0.9 if i < 15 else 0.1) for i in range(TURNS)],  # EOS 6/24
    "sft": [_health(truncated=i < 3, loop=False, ja=0.9 if i < 15 else 0.1) for i in range(TURNS)],    # EOS 21/24
    "other": [_health(truncated=True, loop=True, ja=0.0) for _ in range(TURNS)],
}


def _conv(nlls: list[float], tokens: list[int]) -> dict:
    per = [{"id": f"ref{i}", "nll": n * t, "tokens": t} for i, (n, t) in enumerate(zip(nlls, tokens))]
    total, tok = sum(p["nll"] for p in per), sum(tokens)
    return {"fingerprint": "f", "mean_nll": total / tok, "perplexity": math.exp(total / tok), "tokens": tok,
            "conversations": len(per), "skipped": 0, "per_conversation": per}


TOKENS = [30, 50, 40, 60, 20, 45]
NLL_BASE = [2.0, 2.2, 1.9, 2.4, 2.1, 2.0]
NLL_BETTER = [n - d for n, d in zip(NLL_BASE, (0.3, 0.5, 0.4, 0.35, 0.45, 0.4))]


_UNSET = object()


def write_nll(answers: Path, models: dict[str, dict], heldout=True, source: str = "held-out split of runs/x/data") \
        -> Path:
    """reference_nll.json; ``heldout`` as the generate stage writes it (`_UNSET`: an older file without it)."""
    refs = {"source": source, "fingerprint": "r", "conversations": 6}
    if heldout is not _UNSET:
        refs["heldout"] = heldout
    path = answers / "reference_nll.json"
    path.write_text(json.dumps({"version": 1, "references": refs, "definition": "mean NLL per assistant token",
                                "models": models}), encoding="utf-8")
    return path


def write_tuning_run(root: Path, backend: str = "fake", nll: dict | None = None, bias: dict | None = None,
                     train_model: str = BASE_PATH, health: dict | None = None, n_questions: int = QUESTIONS) -> dict:
    """answers (base, sft = `trained`, other) to ``n_questions`` two-turn questions, with health records
    (``health``: per model, one per turn; default `HEALTH`), the generate and train configs, an optional
    reference_nll.json and a judge folder of fake scores."""
    health = {**HEALTH, **(health or {})}
    answers, train = root / "answers", root / "train"
    answers.mkdir(parents=True)
    train.mkdir()
    (train / "config.yaml").write_text(yaml.safe_dump({"model": train_model}), encoding="utf-8")
    questions = root / "questions.jsonl"
    qs = [{"question_id": f"q{i}", "category": "地理", "turns": [f"質問{i}", "続けて"]} for i in range(n_questions)]
    questions.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
    paths = {"base": BASE_PATH, "sft": "trained", "other": "org/other-model"}
    (answers / "config.yaml").write_text(yaml.safe_dump({
        "questions": str(questions), "models": [{"id": m, "path": p} for m, p in paths.items()]}), encoding="utf-8")
    for m in paths:
        with open(answers / f"{m}.jsonl", "w", encoding="utf-8") as f:
            for i, q in enumerate(qs):
                f.write(json.dumps({"question_id": q["question_id"], "model_id": m,
                                    "choices": [{"index": 0, "turns": ["東京です。" * 5, "関東にあります。" * 5]}],
                                    "generation": {"temperature": 0.0},
                                    "health": health[m][2 * i:2 * i + 2]}, ensure_ascii=False) + "\n")
    if nll is not None:
        write_nll(answers, nll)
    judge = write_judge_dir(root / "judge", answers, questions, list(paths), backend=backend,
                            judge="gpt-4o" if backend == "openai" else "fake-judge", bias=bias)
    return {"answers": answers, "judge": judge, "questions": questions}


def _report(run: dict, out: Path, **cfg) -> tuple[str, str, dict]:
    page = build_report([run["judge"]], out, ReportConfig(bootstrap=300, **cfg))
    return (page.read_text(encoding="utf-8"), (out / "summary.md").read_text(encoding="utf-8"),
            json.loads((out / "summary.json").read_text(encoding="utf-8")))


def _verdicts(summary: dict) -> dict[str, dict]:
    return {v["signal"]: v for v in summary["verdicts"] if v["model"] == "sft"}


def test_demo_mode_leads_with_signals_and_verdicts(tmp_path):
    run = write_tuning_run(tmp_path / "run", nll={"base": _conv(NLL_BASE, TOKENS), "sft": _conv(NLL_BETTER, TOKENS)},
                           bias={"sft": 3.0})
    html, md, summary = _report(run, tmp_path / "report")
    assert summary["demo_judge"] is True and summary["baseline"] == "base"
    assert {m: b["role"] for m, b in summary["models"].items()} == {"base": "base", "sft": "tuned", "other": None}
    # the first table of the page is the signals table (base, then tuned), the judge's follows, labelled
    assert html.index("<table") == html.index('<table id="signal-table"') < html.index('<table id="score-table"')
    assert html.index('id="demo-judge"') < html.index('id="score-table"')
    sig = html[html.index('<table id="signal-table"'):]
    assert sig.index(">base <span") < sig.index(">sft <span") < sig.index(">other</th>")
    v = _verdicts(summary)
    assert [r["signal"] for r in summary["verdicts"]] == ["reference_nll", "eos", "japanese", "loop", "judge"]
    assert v["reference_nll"]["verdict"] == "helped" and v["reference_nll"]["evidence"]["lower"] == 6
    assert v["reference_nll"]["evidence"]["ci"][1] < 0
    assert v["eos"]["verdict"] == "helped" and v["eos"]["evidence"]["ci"][0] > 0
    assert (v["eos"]["evidence"]["base_count"], v["eos"]["evidence"]["tuned_count"]) == (6, 21)
    assert v["loop"]["verdict"] == "helped" and v["loop"]["evidence"]["ci"][1] < 0
    assert v["japanese"]["verdict"] == "no clear difference"
    assert v["judge"]["verdict"] == "helped" and "demo judge, not a real evaluation" in v["judge"]["sentence"]
    assert v["eos"]["sentence"].startswith("Ended by EOS: tuning helped: 6 of 24 (25%) -> 21 of 24 (88%) answers "
                                           "on 12 questions, difference CI [+")
    # summary.md: the sentences right under the title, in the same order, then the signals table
    lines = md.splitlines()
    assert lines[0].startswith("# ") and lines[1] == ""
    assert lines[2:2 + len(summary["verdicts"])] == [f"- {r['sentence']}" for r in summary["verdicts"]]
    assert md.index("## Judge-free signals") < md.index("DEMO JUDGE") < md.index("## Scores")
    for r in summary["verdicts"]:
        assert str(escape(r["sentence"])) in html  # the page prints the same records


def test_real_judge_leads_and_signals_follow(tmp_path):
    run = write_tuning_run(tmp_path / "run", backend="openai", bias={"base": 4.0},
                           nll={"base": _conv(NLL_BETTER, TOKENS), "sft": _conv(NLL_BASE, TOKENS)})
    html, md, summary = _report(run, tmp_path / "report")
    assert summary["demo_judge"] is False and 'id="demo-judge"' not in html
    assert html.index("<table") == html.index('<table id="score-table"') < html.index('<table id="signal-table"')
    assert md.index("## Scores") < md.index("## Judge-free signals")
    v = _verdicts(summary)
    assert summary["verdicts"][0]["signal"] == "judge"
    assert v["judge"]["verdict"] == "hurt" and "demo judge" not in v["judge"]["sentence"]
    assert v["reference_nll"]["verdict"] == "hurt" and v["reference_nll"]["evidence"]["higher"] == 6


def test_unclear_nll_and_judge(tmp_path):
    mixed = [n + (0.3 if i % 2 else -0.3) for i, n in enumerate(NLL_BASE)]  # 3 better, 3 worse
    run = write_tuning_run(tmp_path / "run", nll={"base": _conv(NLL_BASE, TOKENS), "sft": _conv(mixed, TOKENS)})
    _, md, summary = _report(run, tmp_path / "report")
    v = _verdicts(summary)
    assert v["reference_nll"]["verdict"] == "no clear difference"
    lo, hi = v["reference_nll"]["evidence"]["ci"]
    assert lo < 0 < hi and "includes 0" in v["reference_nll"]["sentence"]
    assert v["reference_nll"]["evidence"]["lower"] == 3
    assert "Held-out NLL: no clear difference:" in md
    assert v["reference_nll"]["evidence"]["ci"] and not v["reference_nll"]["evidence"].get("too_few")


def test_judge_comparison_pairs_questions():
    from ja_instruct.report.signals import judge_comparison

    def rec(m, q, score, status="ok"):
        return {"mode": "single", "model": m, "question_id": q, "score": score, "status": status}

    recs = [rec("b", "q1", 5), rec("b", "q2", 7), rec("t", "q1", 7), rec("t", "q2", 5), rec("t", "q2", 9, "error"),
            rec("t", "q3", 10)]  # q3: only the tuned model was graded on it, so it is not paired
    c = judge_comparison(recs, "b", "t", 500, 0, 0.95)
    assert c["shared"] == 2 and c["difference"] == 0.0 and (c["lower"], c["higher"]) == (1, 1)
    assert c["ci"][0] < 0 < c["ci"][1]
    recs = [rec("b", f"q{i}", 3 + i % 2) for i in range(10)] + [rec("t", f"q{i}", 6 + i % 3) for i in range(10)]
    c = judge_comparison(recs, "b", "t", 500, 0, 0.95)
    assert c["difference"] == pytest.approx(6.9 - 3.5) and c["ci"][0] > 0


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def test_summary_md_and_json_carry_the_same_numbers(tmp_path):
    run = write_tuning_run(tmp_path / "run", nll={"base": _conv(NLL_BASE, TOKENS), "sft": _conv(NLL_BETTER, TOKENS)},
                           bias={"sft": 2.0})
    _, md, summary = _report(run, tmp_path / "report")
    head = md[:md.index("\n## ")]  # the verdict sentences, under the title
    bullets = {line[2:].split(":")[0]: line[2:] for line in head.splitlines() if line.startswith("- ")}
    assert len(bullets) == len(summary["verdicts"]) == 5
    v = _verdicts(summary)
    nll = _numbers(bullets["Held-out NLL"])
    ev = v["reference_nll"]["evidence"]
    assert nll[:2] == [round(v["reference_nll"]["base_value"], 2), round(v["reference_nll"]["tuned_value"], 2)]
    assert nll[2:4] == [ev["lower"], ev["shared"]] and nll[4:6] == [round(x, 2) for x in ev["ci"]]
    for sig, label in (("eos", "Ended by EOS"), ("japanese", "In Japanese"), ("loop", "Looping")):
        got, e = _numbers(bullets[label]), v[sig]["evidence"]
        assert got[:9] == [e["base_count"], e["base_total"], round(100 * v[sig]["base_value"]),
                           e["tuned_count"], e["tuned_total"], round(100 * v[sig]["tuned_value"]),
                           e["shared"], round(e["ci"][0], 2), round(e["ci"][1], 2)]
        assert v[sig]["verdict"] in bullets[label]
    judge = _numbers(bullets["Judge score"])
    assert judge[:2] == [round(summary["models"]["base"]["judge"]["mean"], 2),
                         round(summary["models"]["sft"]["judge"]["mean"], 2)]
    # the signals table of summary.md shows summary.json's per-model numbers
    table = md[md.index("## Judge-free signals"):]
    for m in ("base", "sft"):
        blk = summary["models"][m]
        assert f"{blk['reference_nll']['mean_nll']:.3f}" in table
        c = blk["health"]["counts"]
        assert f"{round(100 * blk['health']['eos_share'])}% ({c['eos']} of {c['turns']} turns)" in table
        assert f"{round(100 * blk['health']['empty_share'])}% ({c['empty']} of {c['turns']} turns)" in table
    # and the token-weighted NLL is the file's
    assert summary["models"]["sft"]["reference_nll"]["mean_nll"] == pytest.approx(
        sum(n * t for n, t in zip(NLL_BETTER, TOKENS)) / sum(TOKENS))
    assert set(summary["definitions"]) == {"reference_nll", "eos", "japanese", "loop", "empty", "judge"}


def test_missing_or_partial_nll_is_na_and_malformed_is_an_error(tmp_path):
    run = write_tuning_run(tmp_path / "run")  # no reference_nll.json
    html, md, summary = _report(run, tmp_path / "r1")
    assert summary["models"]["sft"]["reference_nll"] is None
    assert "reference_nll" not in _verdicts(summary) and "eos" in _verdicts(summary)
    assert any(n.startswith("Reference NLL: n/a") for n in summary["notes"])  # nothing says held out
    assert "no reference_nll.json beside the answers" in html and "Reference NLL: n/a" in md

    # one model measured, one unavailable, one absent
    write_nll(run["answers"], {"base": _conv(NLL_BASE, TOKENS), "sft": {"fingerprint": "x", "unavailable": "OOM"}})
    html, _, summary = _report(run, tmp_path / "r2")
    assert summary["models"]["base"]["reference_nll"]["conversations"] == 6
    assert summary["models"]["sft"]["reference_nll"] is None and "unavailable: OOM" in html
    assert summary["models"]["other"]["reference_nll_note"] == "model not in reference_nll.json"

    path = write_nll(run["answers"], {"sft": {"fingerprint": "x", "mean_nll": "low"}})
    with pytest.raises(UserError, match=r"reference_nll\.json.*models\.sft\.mean_nll"):
        build_report([run["judge"]], tmp_path / "r3")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"reference_nll\.json"):
        build_report([run["judge"]], tmp_path / "r3")


def test_baseline_override_and_no_base(tmp_path):
    run = write_tuning_run(tmp_path / "run", nll={"other": _conv(NLL_BASE, TOKENS), "sft": _conv(NLL_BETTER, TOKENS)})
    _, md, summary = _report(run, tmp_path / "r1", baseline="other")
    assert summary["baseline"] == "other" and summary["models"]["other"]["role"] == "base"
    assert summary["models"]["base"]["role"] is None
    assert {r["baseline"] for r in summary["verdicts"]} == {"other"}
    assert _verdicts(summary)["reference_nll"]["verdict"] == "helped"
    with pytest.raises(UserError, match="report.baseline"):
        build_report([run["judge"]], tmp_path / "r2", ReportConfig(baseline="nope"))

    # the train config names a model nobody answered with: no base, nothing compared, and it says so
    run = write_tuning_run(tmp_path / "run2", train_model="org/unknown", nll={"sft": _conv(NLL_BASE, TOKENS)})
    html, md, summary = _report(run, tmp_path / "r3")
    assert summary["baseline"] is None and summary["verdicts"] == []
    assert "No base model found" in md and "nothing is compared" in html


def test_changed_nll_file_rebuilds_the_report(tmp_path, caplog):
    run = write_tuning_run(tmp_path / "run", nll={"base": _conv(NLL_BASE, TOKENS), "sft": _conv(NLL_BETTER, TOKENS)})
    out = tmp_path / "report"
    cfg = ReportConfig(bootstrap=200)
    caplog.set_level(logging.INFO, logger="ja_instruct.report.build")
    update_report([run["judge"]], out, cfg)
    caplog.clear()
    update_report([run["judge"]], out, cfg)
    assert "report: up to date" in caplog.text
    write_nll(run["answers"], {"base": _conv(NLL_BASE, TOKENS), "sft": _conv(NLL_BASE, TOKENS)})
    caplog.clear()
    update_report([run["judge"]], out, cfg)
    assert "report: building" in caplog.text and "input 'reference_nll:" in caplog.text
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert _verdicts(summary)["reference_nll"]["verdict"] == "no clear difference"
    # a report folder from before summary.json existed is rebuilt too
    (out / "summary.json").unlink()
    caplog.clear()
    update_report([run["judge"]], out, cfg)
    assert "output summary.json missing" in caplog.text and (out / "summary.json").is_file()


# --------------------------------------------------------------------------- what the verdicts must not do

def test_health_counts_empty_turns_against_eos_and_japanese():
    from ja_instruct.report.signals import health_signals, question_health

    answers = {"q1": {"health": [_health(False, False, 0.9), _health(False, False, 0.9, empty=True)]},
               "q2": {"health": [_health(True, False, 0.9), _health(False, False, 0.1)]},
               "q3": {"health": []}}  # no records: not a question this model answered
    per_q = question_health(answers, 0.5, 0.5)
    assert set(per_q) == {"q1", "q2"}
    assert (per_q["q1"]["turns"], per_q["q1"]["eos"], per_q["q1"]["japanese"], per_q["q1"]["empty"]) == (2, 1, 1, 1)
    h = health_signals(answers, 0.5, 0.5)
    # EOS: only q1's first turn (the empty one did not end an answer, q2's first was cut off, its second counts)
    assert h["counts"]["eos"] == 2 and h["eos_share"] == 2 / 4
    # Japanese over ALL turns: the empty turn is in the denominator and not in the numerator
    assert h["counts"]["japanese"] == 2 and h["japanese_share"] == 2 / 4
    assert h["empty_share"] == 1 / 4 and h["truncated_share"] == 1 / 4


def test_empty_answers_are_not_rewarded(tmp_path):
    good = [_health(truncated=False, loop=False, ja=0.9) for _ in range(TURNS)]
    empty = [_health(truncated=False, loop=False, ja=0.9, empty=True) for _ in range(TURNS)]
    run = write_tuning_run(tmp_path / "run", health={"base": good, "sft": empty})
    _, md, summary = _report(run, tmp_path / "report")
    h = summary["models"]["sft"]["health"]
    assert (h["eos_share"], h["japanese_share"], h["empty_share"]) == (0.0, 0.0, 1.0)
    assert h["counts"]["empty"] == TURNS
    v = _verdicts(summary)
    assert v["eos"]["verdict"] == "hurt" and v["japanese"]["verdict"] == "hurt"
    assert v["eos"]["sentence"].startswith(f"Ended by EOS: tuning hurt: {TURNS} of {TURNS} (100%) -> 0 of {TURNS} (0%)")
    assert "empty" not in {r["signal"] for r in summary["verdicts"]}  # shown, not judged twice
    assert f"| Empty answers | 0% (0 of {TURNS} turns) | 100% ({TURNS} of {TURNS} turns) |" in md


def test_one_answer_difference_is_no_clear_difference(tmp_path):
    base = [_health(truncated=i == 0, loop=False, ja=0.9) for i in range(TURNS)]  # one cut-off answer in 24
    sft = [_health(truncated=False, loop=False, ja=0.9) for _ in range(TURNS)]
    run = write_tuning_run(tmp_path / "run", health={"base": base, "sft": sft})
    _, _, summary = _report(run, tmp_path / "report")
    v = _verdicts(summary)["eos"]
    assert v["tuned_value"] > v["base_value"]  # the plain comparison would say "helped"
    assert v["verdict"] == "no clear difference"
    lo, hi = v["evidence"]["ci"]
    assert lo < 0 < hi and v["evidence"]["shared"] == QUESTIONS
    assert v["sentence"].startswith(f"Ended by EOS: no clear difference: {TURNS - 1} of {TURNS} (96%) -> "
                                    f"{TURNS} of {TURNS} (100%) answers")


def test_too_few_paired_units_give_no_verdict(tmp_path):
    one = {"base": [_health(truncated=True, loop=True, ja=0.0)] * 2,
           "sft": [_health(truncated=False, loop=False, ja=0.9)] * 2}
    run = write_tuning_run(tmp_path / "run", health=one, n_questions=1, bias={"sft": 5.0},
                           nll={"base": _conv([2.5], [40]), "sft": _conv([1.0], [40])})
    _, md, summary = _report(run, tmp_path / "report")
    v = _verdicts(summary)
    assert set(v) == {"reference_nll", "eos", "japanese", "loop", "judge"}
    for sig, r in v.items():
        assert r["verdict"] == "no clear difference", sig
        assert r["evidence"]["too_few"] is True and r["evidence"]["ci"] is None and r["evidence"]["shared"] == 1
        assert "too few (1) to tell" in r["sentence"] and r["sentence"] in md
    assert v["eos"]["tuned_value"] == 1.0 and v["eos"]["base_value"] == 0.0  # the values are still shown

    # the threshold: one unit short of MIN_PAIRED is too few, MIN_PAIRED clearly better references is "helped"
    n = MIN_PAIRED
    nll = [2.0 + 0.1 * (i % 3) for i in range(n)]
    tok = [30 + 10 * (i % 4) for i in range(n)]
    better = [x - 0.4 - 0.05 * (i % 2) for i, x in enumerate(nll)]
    for k, expected in ((n - 1, "no clear difference"), (n, "helped")):
        write_nll(run["answers"], {"base": _conv(nll[:k], tok[:k]), "sft": _conv(better[:k], tok[:k])})
        _, _, summary = _report(run, tmp_path / f"r{k}")
        r = _verdicts(summary)["reference_nll"]
        assert r["verdict"] == expected and r["evidence"]["shared"] == k
        assert ("too few" in r["sentence"]) == (k < MIN_PAIRED)


@pytest.mark.parametrize("heldout,label", [(True, "Held-out NLL"), (False, "Reference NLL (refs/qa.jsonl)"),
                                           (_UNSET, "Reference NLL")])
def test_nll_is_called_held_out_only_for_the_held_out_split(tmp_path, heldout, label):
    run = write_tuning_run(tmp_path / "run")
    write_nll(run["answers"], {"base": _conv(NLL_BASE, TOKENS), "sft": _conv(NLL_BETTER, TOKENS)},
              heldout=heldout, source="held-out split of runs/x/data" if heldout is True else "refs/qa.jsonl")
    html, md, summary = _report(run, tmp_path / "report")
    assert summary["labels"]["reference_nll"] == label
    rec = _verdicts(summary)["reference_nll"]
    assert rec["label"] == label and rec["sentence"].startswith(f"{label}: tuning helped")
    assert f"| {label} |" in md and f"<strong>{escape(label)}</strong>" in html
    meaning = summary["definitions"]["reference_nll"]
    assert ("held-out" in meaning) == (heldout is True)
    if heldout is True:
        assert "Held-out references: held-out split of runs/x/data" in md
    else:
        assert "Held-out" not in md and "Held-out" not in html
        assert ("refs/qa.jsonl" in meaning) == (heldout is False)
        assert ("not recorded" in meaning) == (heldout is _UNSET)


def test_a_judge_verdict_moved_by_the_language_guard_says_so():
    from ja_instruct.report.signals import _guard_note

    def rec(model, q, score, raw, guarded):
        return {"mode": "single", "model": model, "question_id": q, "status": "ok", "score": score,
                "score_unguarded": raw, "guarded": guarded, "scale": [1, 10]}

    recs = [rec("base", 1, 1.0, 5.0, True), rec("base", 2, 4.0, 4.0, False),
            rec("tuned", 1, 5.0, 5.0, False), rec("tuned", 2, 4.0, 4.0, False)]
    note = _guard_note(recs, "base", "tuned", "1-10")
    assert "capped 1 answer(s) of base and 0 of tuned" in note and "4.50 and 4.50" in note
    # nothing capped: nothing to say
    assert _guard_note([{**r, "guarded": False, "score": r["score_unguarded"]} for r in recs],
                       "base", "tuned", "1-10") is None
