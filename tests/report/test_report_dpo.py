"""Base vs SFT vs DPO in one report (issue 13): the lineage is followed back through the SFT model's
train folder, every step is compared (base -> SFT, SFT -> DPO, base -> DPO) and named, the signals
table shows the three models in that order, and a "Preference tuning" section shows the DPO run's
pairs, settings, judge and held-out figures from its train manifest, only when there is one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from markupsafe import escape

from ja_instruct.report import build_report
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.preference import curves
from report_helpers13 import DPO_DETAILS, ENDED, QUESTIONS, dpo_metrics, write_dpo_run

STEPS = [("base -> SFT", "base", "sft"), ("SFT -> DPO", "sft", "dpo"), ("base -> DPO", "base", "dpo")]


def _report(run: dict, out: Path, **cfg) -> tuple[str, str, dict]:
    page = build_report([run["judge"]], out, ReportConfig(bootstrap=300, **cfg))
    return (page.read_text(encoding="utf-8"), (out / "summary.md").read_text(encoding="utf-8"),
            json.loads((out / "summary.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def dpo_report(tmp_path_factory) -> tuple[dict, str, str, dict]:
    root = tmp_path_factory.mktemp("dpo")
    run = write_dpo_run(root)
    return (run, *_report(run, root / "report"))


def test_every_step_is_compared_and_named(dpo_report):
    _, html, md, summary = dpo_report
    assert summary["baseline"] == "base" and summary["lineage"] == ["base", "sft", "dpo"]
    assert {m: b["role"] for m, b in summary["models"].items()} == {"base": "base", "sft": "sft", "dpo": "dpo"}
    assert list(summary["models"]) == ["base", "sft", "dpo"]  # the lineage's order, not the score order
    assert [(s["step"], s["baseline"], s["model"]) for s in summary["steps"]] == STEPS
    # five signals per step, the steps in reading order, each record naming its pair
    assert [(v["step"], v["baseline"], v["model"]) for v in summary["verdicts"]] == [s for s in STEPS for _ in range(5)]
    by = {(v["step"], v["signal"]): v for v in summary["verdicts"]}
    for step, b, m in STEPS:
        assert by[(step, "eos")]["sentence"].startswith(f"Ended by EOS ({step}: {m} vs {b}): ")
    # the evidence is each pair's own: counts of the two models compared
    assert [(by[(s, "eos")]["evidence"]["base_count"], by[(s, "eos")]["evidence"]["tuned_count"]) for s, _, _ in STEPS] \
        == [(ENDED["base"], ENDED["sft"]), (ENDED["sft"], ENDED["dpo"]), (ENDED["base"], ENDED["dpo"])]
    assert by[("base -> SFT", "eos")]["verdict"] == "helped"
    assert by[("SFT -> DPO", "eos")]["verdict"] == "no clear difference"  # 20 -> 22 of 24: within noise
    assert by[("SFT -> DPO", "reference_nll")]["verdict"] == "helped"  # lower on every reference
    assert by[("SFT -> DPO", "reference_nll")]["evidence"]["lower"] == 6
    assert by[("base -> DPO", "reference_nll")]["evidence"]["difference"] < \
        by[("SFT -> DPO", "reference_nll")]["evidence"]["difference"] < 0
    # summary.md: one block per step, the sentences of summary.json under it
    for step, b, m in STEPS:
        block = md[md.index(f"**{step}** ({b} -> {m}):"):]
        sentences = [v["sentence"] for v in summary["verdicts"] if v["step"] == step]
        assert block.splitlines()[2:2 + len(sentences)] == [f"- {s}" for s in sentences]
    # the page prints the same records, grouped by step
    for v in summary["verdicts"]:
        assert str(escape(v["sentence"])) in html
    assert [html.index(f'data-step="{escape(s)}"') for s, _, _ in STEPS] == \
        sorted(html.index(f'data-step="{escape(s)}"') for s, _, _ in STEPS)


def test_signal_table_shows_three_columns_and_both_comparisons(dpo_report):
    _, html, md, summary = dpo_report
    table = html[html.index('<table id="signal-table"'):html.index("</table>", html.index('id="signal-table"'))]
    assert table.index(">base <span") < table.index(">sft <span") < table.index(">dpo <span")
    row = table[table.index('data-signal="eos"'):]
    row = row[:row.index("</tr>")]
    cells = row.split('<td class="num">')[1:]
    assert len(cells) == 3
    assert "vs " not in cells[0]
    assert cells[1].count("vs ") == 1 and "vs base: helped" in cells[1]
    # the DPO model: first against the model it was trained from, then against the base
    assert cells[2].index("vs sft: no clear difference") < cells[2].index("vs base: helped")
    md_row = next(line for line in md.splitlines() if line.startswith("| Ended by EOS |"))
    assert md_row.count("vs sft:") == 1 and md_row.count("vs base:") == 2
    assert "each later model's cell" in html and "base → sft → dpo" in html


def test_preference_section_from_the_train_manifest(dpo_report):
    run, html, md, summary = dpo_report
    pref = summary["preference"]
    assert list(pref) == ["dpo"]  # the SFT model's run has no DPO details
    p = pref["dpo"]
    assert p["from"] == str(run["sft_final"]) and (p["beta"], p["loss"]) == (0.5, "sigmoid")
    assert (p["pairs"]["train"], p["pairs"]["heldout"]) == (44, 6)
    assert p["pairs"]["judge"] == "gpt-4o-2024-08-06"
    assert p["eval_start"]["step"] == 0 and p["eval_end"]["step"] == 20  # first and last, not the middle one
    assert p["eval_end"]["accuracy"] == DPO_DETAILS["eval"][-1]["accuracy"]
    assert p["train_last"]["rewards/margins"] == DPO_DETAILS["train_last"]["rewards/margins"]
    sec = md[md.index("## Preference tuning"):]
    sec = sec[:sec.index("\n## ")]
    assert "beta 0.5" in sec and "44 train, 6 held out" in sec and "gpt-4o-2024-08-06" in sec
    assert "OpenAI terms of use" in sec and "Apache-2.0" in sec
    assert "held-out preference accuracy 0.000 -> 0.833, reward margin +0.000 -> +0.734 (step 0 -> 20" in sec
    assert "| reward margin (chosen - rejected) | +0.000 | +0.734 |" in sec
    assert "reward margin (chosen - rejected) +1.010" in sec and "loss 0.388" in sec
    page = html[html.index('<section id="preference">'):html.index("</section>", html.index('id="preference"'))]
    assert 'data-plot="dpo"' in page and "data:image/png;base64," in page
    assert '<a href="#preference">' in html
    # the pairs' config is among the resolved configs shown
    assert str(run["run"] / "pairs" / "config.yaml") in html


def test_curves_keep_the_last_line_of_a_resumed_step():
    c = curves(dpo_metrics())
    assert c["step"] == list(range(1, 21))
    assert c["margin"][10] == pytest.approx(0.05 * 11 + 0.5)  # step 11 as the resumed run logged it
    assert c["eval_step"] == [0, 10, 20]
    assert c["eval_accuracy"] == [e["accuracy"] for e in DPO_DETAILS["eval"]]


def test_baseline_inside_the_lineage_starts_it_there(tmp_path):
    run = write_dpo_run(tmp_path)
    _, md, summary = _report(run, tmp_path / "report", baseline="sft")
    assert summary["baseline"] == "sft"
    assert {m: b["role"] for m, b in summary["models"].items()} == {"sft": "base", "dpo": "tuned", "base": None}
    assert {(v["baseline"], v["model"]) for v in summary["verdicts"]} == {("sft", "dpo")}
    assert "lineage" not in summary and all("step" not in v for v in summary["verdicts"])
    assert "preference" in summary  # still a DPO model


def test_an_sft_run_from_before_methods_is_read_as_sft(tmp_path):
    run = write_dpo_run(tmp_path, sft_method=None)
    _, _, summary = _report(run, tmp_path / "report")
    assert summary["models"]["sft"]["role"] == "sft" and summary["lineage"] == ["base", "sft", "dpo"]


def test_without_the_sft_model_folder_the_sft_model_is_no_step(tmp_path):
    """The SFT folder gone (its answers remain): nothing says what it started from, so only SFT -> DPO."""
    run = write_dpo_run(tmp_path)
    shutil.rmtree(run["sft_final"].parent)
    _, _, summary = _report(run, tmp_path / "report")
    assert summary["baseline"] == "sft" and "lineage" not in summary
    assert {(v["baseline"], v["model"]) for v in summary["verdicts"]} == {("sft", "dpo")}


def test_sft_reports_have_no_dpo_parts(tmp_path):
    """A base -> SFT report whose trained model has a train manifest (method sft): no lineage keys,
    no step names, no preference section."""
    from report_helpers13 import _train_folder

    run = write_dpo_run(tmp_path)
    shutil.rmtree(run["run"] / "train")
    _train_folder(run["run"] / "train", "embedded:tiny-base", "sft")
    answers = run["answers"]
    (answers / "sft.jsonl").unlink()
    (answers / "config.yaml").write_text(
        f"questions: {run['questions']}\nmodels:\n- {{id: base, path: 'embedded:tiny-base'}}\n"
        "- {id: dpo, path: trained}\n", encoding="utf-8")
    judge = tmp_path / "judge2"
    from report_helpers import write_judge_dir

    write_judge_dir(judge, answers, run["questions"], ["base", "dpo"])
    html, md, summary = _report({"judge": judge}, tmp_path / "report")
    from ja_instruct.manifest import read_manifest

    assert not any(k.startswith("train:") for k in read_manifest(tmp_path / "report", "report").inputs)
    assert {m: b["role"] for m, b in summary["models"].items()} == {"base": "base", "dpo": "tuned"}
    assert not {"lineage", "steps", "preference"} & set(summary)
    assert all("step" not in v for v in summary["verdicts"])
    assert summary["verdicts"][0]["sentence"].startswith("Held-out NLL: tuning helped")
    assert 'id="preference"' not in html and "Preference tuning" not in md and "data-step" not in html
    assert md.splitlines()[2:2 + len(summary["verdicts"])] == [f"- {v['sentence']}" for v in summary["verdicts"]]
    assert QUESTIONS == summary["verdicts"][1]["evidence"]["shared"]


def test_a_changed_dpo_run_rebuilds_the_report(tmp_path, caplog):
    """The section reads the DPO run's manifest: a re-measured run (same answers) rebuilds the report."""
    import dataclasses
    import logging

    from ja_instruct.manifest import read_manifest, write_manifest
    from ja_instruct.report import update_report

    run = write_dpo_run(tmp_path)
    out, cfg = tmp_path / "report", ReportConfig(bootstrap=300)
    update_report([run["judge"]], out, cfg)
    assert any(k.startswith("train:") for k in read_manifest(out, "report").inputs)
    with caplog.at_level(logging.INFO, logger="ja_instruct.report.build"):
        update_report([run["judge"]], out, cfg)
    assert "report: up to date" in caplog.text
    train = run["run"] / "train"
    m = read_manifest(train, "train")
    dpo = {**m.details["dpo"], "eval": m.details["dpo"]["eval"][:1] + [
        {"step": 20, "accuracy": 0.6667, "margin": 0.5, "loss": 0.5, "pairs": 6}]}
    write_manifest(train, dataclasses.replace(m, details={**m.details, "dpo": dpo}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ja_instruct.report.build"):
        update_report([run["judge"]], out, cfg)
    assert "report: building" in caplog.text and "train:" in caplog.text
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["preference"]["dpo"]["eval_end"]["accuracy"] == 0.6667


@pytest.mark.parametrize("sft_recipe,dpo_recipe", [("demo.yaml", "demo-dpo.yaml"),
                                                   ("plamo-13b-instruct.yaml", "plamo-13b-instruct-dpo.yaml")])
def test_dpo_recipes_report_every_step(sft_recipe, dpo_recipe):
    """The DPO recipes as shipped: the pairs come from the model DPO starts from, and the report finds
    base -> SFT -> DPO from their generate sections (what each train config says it started from)."""
    from ja_instruct.recipe import load_recipe
    from ja_instruct.report.lineage import find_lineage
    from ja_instruct.report.load import ModelInfo, ReportData

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    sft, dpo = load_recipe(recipes / sft_recipe), load_recipe(recipes / dpo_recipe)
    assert dpo.train.method == "dpo" and dpo.pairs.model.path == dpo.train.model
    assert dpo.data == sft.data  # the SFT data's prompts, the same held-out split
    assert dpo.train.model == str(sft.root / "train" / "final")
    starts = {dpo.train.model: sft.train.model, "trained": dpo.train.model}  # each train config's `model`
    infos = {m.id: ModelInfo(id=m.id, spec={"id": m.id, "path": m.path}, train_model=starts.get(m.path),
                             method="dpo" if m.path == "trained" else "sft" if m.path in starts else None)
             for m in dpo.generate.models}
    found = find_lineage(ReportData(runs=[], judgments=[], questions={}, answers={}, models=infos), ReportConfig())
    assert len(found.chain) == 2 and [found.roles[m] for m in found.chain] == ["base", "sft"]
    assert [(found.roles[b], found.roles[m]) for b, m in found.pairs] == [("base", "sft"), ("sft", "dpo"),
                                                                          ("base", "dpo")]
