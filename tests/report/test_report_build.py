"""The report files: content, escaping, CLI, real Rakuda answers."""

from __future__ import annotations

import base64
import csv
import logging
import re

import pytest

from ja_instruct.cli import main
from ja_instruct.report import build_report
from ja_instruct.report.config import ReportConfig


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    """Built once for the read-only tests below."""
    from report_helpers import write_synthetic_run

    root = tmp_path_factory.mktemp("synthetic")
    run = write_synthetic_run(root / "run")
    return build_report([run["judge"]], root / "report", ReportConfig(bootstrap=200), title="t<i>")


def test_outputs_written_with_plots_inlined(synthetic_report):
    out = synthetic_report.parent
    html = synthetic_report.read_text(encoding="utf-8")
    for name in ("index.html", "summary.md", "scores.csv", "config.yaml"):
        assert (out / name).is_file()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # mean, box, histogram, categories, turns (two-turn set), heat map, BT ranking
    assert len(uris) == 7
    for u in uris:
        assert base64.b64decode(u).startswith(b"\x89PNG")
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html
    # sections
    for anchor in ("scores", "categories", "turns", "pairwise", "outputs", "metadata", "demo-judge"):
        assert f'id="{anchor}"' in html


def test_everything_model_written_is_escaped(synthetic_report):
    html = synthetic_report.read_text(encoding="utf-8")
    assert "<script>document.documentElement.setAttribute" not in html
    assert "&lt;script&gt;document.documentElement.setAttribute(&#39;data-pwned&#39;,&#39;1&#39;)&lt;/script&gt;" in html
    assert '<img src=x onerror' not in html and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html  # a hostile category name
    assert "<title>t&lt;i&gt;</title>" in html
    # exactly the template's two scripts
    assert html.count("<script>") == 2


def test_scores_health_and_metadata(synthetic_report):
    out = synthetic_report.parent
    html = synthetic_report.read_text(encoding="utf-8")
    rows = {r["model"]: r for r in csv.DictReader(open(out / "scores.csv", encoding="utf-8"))}
    assert set(rows) == {"base", "tuned"}
    assert float(rows["tuned"]["mean"]) > float(rows["base"]["mean"])
    assert float(rows["base"]["health_looping"]) == 1.0 and float(rows["tuned"]["health_any"]) == 0.0
    assert float(rows["base"]["ci_low"]) <= float(rows["base"]["mean"]) <= float(rows["base"]["ci_high"])
    assert "turn:2" in rows["base"] and rows["tuned"]["bt_rating"]
    n_err = sum(int(r["parse_errors"]) for r in rows.values())
    assert n_err == 2  # every 5th of 12 single judgments
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "DEMO JUDGE" in md and "| tuned |" in md and "Per turn" in md
    # side by side: 3 questions x 2 models x 2 turns, judge reasoning collapsible, health flags shown
    assert html.count('class="qrow"') == 3
    assert html.count("<details><summary>judge's reasoning") == 12  # parse errors keep their raw text
    assert '<span class="flag">looping</span>' in html and '<span class="flag">non-japanese</span>' in html
    assert "max_new_tokens: 64" in html  # generation parameters
    assert "fake-judge" in html and "single-ja@1" in html


def test_cli_report_and_user_errors(synthetic_run, tmp_path, capsys, monkeypatch):
    # main() calls logging.basicConfig: keep its handler (bound to this test's capture) out of later tests
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    out = tmp_path / "cli-report"
    assert main(["report", str(synthetic_run["judge"]), "--out", str(out), "--title", "CLI",
                 "--set", "report.bootstrap=100", "--set", "plot_format=svg"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"report: {out / 'index.html'}")
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "data:image/svg+xml;base64," in html and "<title>CLI</title>" in html
    # a folder without judgments: one clear line, exit 2
    assert main(["report", str(tmp_path), "--out", str(out)]) == 2
    assert "no judgments.jsonl" in capsys.readouterr().err
    assert main(["report", str(synthetic_run["judge"]), "--set", "report.bootstrapp=5"]) == 2
    assert "Did you mean 'bootstrap'" in capsys.readouterr().err


def test_bad_judgment_record_names_file_and_line(synthetic_run, tmp_path):
    from ja_instruct.errors import UserError

    j = synthetic_run["judge"] / "judgments.jsonl"
    j.write_text(j.read_text(encoding="utf-8") + '{"foo": 1}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"judgments.jsonl, line \d+"):
        build_report([synthetic_run["judge"]], tmp_path / "r")


def test_rakuda_real_answers_report(rakuda_report, shared_data):
    """5 real models x 40 Rakuda questions, fake-judged: every question and answer is in the page."""
    import json

    html = rakuda_report.read_text(encoding="utf-8")
    assert html.count('class="qrow"') == 40
    for cat in ("地理", "政治", "歴史", "社会"):
        assert f'<option value="{cat}">' in html
    first = json.loads((shared_data / "rakuda" / "answers" / "claude-2.jsonl").read_text(encoding="utf-8").splitlines()[0])
    from markupsafe import escape

    assert str(escape(first["choices"][0]["turns"][0])) in html
    rows = list(csv.DictReader(open(rakuda_report.parent / "scores.csv", encoding="utf-8")))
    assert len(rows) == 5 and all(r["bt_rating"] for r in rows)


def test_contamination_result_of_each_models_training_data(tmp_path):
    """The report states each trained model's contamination check, in the cards' words, read from the
    stats.json of its training data (and says when there was no check)."""
    import json

    import yaml
    from markupsafe import escape

    from ja_instruct.data.card import describe_contamination
    from report_helpers import write_synthetic_run

    run = write_synthetic_run(tmp_path / "run")
    sources = {"s": {"license": "MIT", "sampled": 12}}
    checked = {"sources": sources, "contamination": {
        "mode": "drop", "ngram": 20, "min_overlap": 0.5,
        "benchmarks": {"rakuda": {"spec": "r", "questions": 40, "found": 1, "question_ids": ["7"]},
                       "ja_mt_bench": {"spec": "m", "questions": 80, "found": 0, "question_ids": []}},
        "hits": [{"benchmark": "rakuda", "question_id": "7", "source": "s", "id": "s:1", "split": "removed",
                  "overlap": 0.9, "matched": "質問", "dropped": True}]}}
    unchecked = {"sources": sources}  # built before (or without) data.contamination
    specs = []
    for model, stats in (("tuned", checked), ("base", unchecked)):
        mdir = tmp_path / "models" / model
        mdir.mkdir(parents=True)
        (mdir / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
        specs.append({"id": model, "path": str(mdir)})
    (run["answers"] / "config.yaml").write_text(yaml.safe_dump({"models": specs}), encoding="utf-8")
    html_path = build_report([run["judge"]], tmp_path / "report", ReportConfig(bootstrap=100))
    html = html_path.read_text(encoding="utf-8")
    md = (html_path.parent / "summary.md").read_text(encoding="utf-8")
    tuned_lines = describe_contamination(checked)
    assert tuned_lines[0] == ("1 of 40 rakuda questions found in the data: 0 in the training data, 1 only in "
                              "examples removed before training (1 example dropped as contaminated).")
    note = f"Training data of tuned: {' '.join(tuned_lines)}"
    assert str(escape(note)) in html and note in md  # next to the verdicts
    assert str(escape("Training data of base: Not checked for benchmark contamination (data.contamination is "
                      "null).")) in html
    meta = html.split('id="model-meta"', 1)[1].split("</table>", 1)[0]  # and under each model's licences
    assert all(str(escape(line)) in meta for line in tuned_lines)
