"""Cache keys are the exact request; the judge folder's manifest says when nothing is to be done,
and otherwise why the stage runs and what it judged anew."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from ja_instruct.io import read_jsonl
from ja_instruct.judge import prompt as prompt_mod
from ja_instruct.judge.run import plan, resolve_config, run_judging


def _keys(recipe) -> dict[tuple, str]:
    items, _, _ = plan(resolve_config(recipe))
    return {(it.record["model"], str(it.record["question_id"]), it.record["turn"]): it.key for it in items}


def _reworded_prompts(tmp_path, name="single-ja"):
    """A copy of the built-in prompts where ``name``'s wording changed but its version did not."""
    folder = tmp_path / "prompts"
    shutil.copytree(prompt_mod.PROMPTS_DIR, folder)
    path = folder / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    assert "採点してください。" in text
    path.write_text(text.replace("採点してください。", "厳しく採点してください。", 1), encoding="utf-8")
    return folder


def test_key_changes_with_the_prompt_text_and_nothing_else_of_it(make_recipe, tmp_path, monkeypatch):
    recipe = make_recipe()
    before = _keys(recipe)
    monkeypatch.setattr(prompt_mod, "PROMPTS_DIR", _reworded_prompts(tmp_path))
    after = _keys(recipe)
    changed = {k for k in before if before[k] != after[k]}
    # single-ja judges the first turn of the questions without a reference (q1, q2, 4)
    assert changed == {(m, q, 1) for m in ("model-a", "model-b", "model-c") for q in ("q1", "q2", "4")}


def test_key_changes_with_endpoint_judge_and_sampling_not_with_execution_knobs(make_recipe, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    base = {"backend": "openai", "model": "gpt-4o", "base_url": "http://127.0.0.1:8000/v1"}
    ref = _keys(make_recipe(backend=base))
    for change in ({"base_url": "http://127.0.0.1:9000/v1"}, {"base_url": None}, {"model": "gpt-4o-mini"},
                   {"temperature": 0.5}, {"max_tokens": 512}, {"backend": "fake"}):
        other = _keys(make_recipe(backend=dict(base, **change)))
        assert set(other) == set(ref) and all(other[k] != ref[k] for k in ref), change
    for same in ({"concurrency": 3}, {"max_retries": 1}, {"timeout": 9.0}, {"requests_per_minute": 60},
                 {"parse_retries": 0}, {"price_prompt_per_1k": 1.0}):
        assert _keys(make_recipe(backend=dict(base, **same))) == ref, same
    # the SDK's default endpoint is the one in $OPENAI_BASE_URL: a different endpoint, new keys
    default = _keys(make_recipe(backend=dict(base, base_url=None)))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://10.0.0.1/v1")
    assert all(_keys(make_recipe(backend=dict(base, base_url=None)))[k] != default[k] for k in default)


def test_key_ignores_labels_identical_requests_are_judged_once(make_recipe, judge_inputs, tmp_path):
    from judge_helpers import ANSWERS, write_answers

    answers = dict(ANSWERS, **{"model-a-copy": ANSWERS["model-a"]})
    write_answers(tmp_path / "answers", answers)
    recipe = make_recipe(answers_dir=str(tmp_path / "answers"))
    keys = _keys(recipe)
    assert all(keys[("model-a", q, t)] == keys[("model-a-copy", q, t)] for (m, q, t) in keys if m == "model-a")
    out = run_judging(recipe, tmp_path / "j", progress=False)
    recs = read_jsonl(out / "judgments.jsonl")
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(recs) == 24 and summ["run"]["calls"] == 18  # the copy costs nothing
    by = {(r["model"], str(r["question_id"]), r["turn"]): r for r in recs}
    for (m, q, t), r in by.items():
        assert r["model"] == m  # each record keeps its own labels
        if m == "model-a-copy":
            assert r["score"] == by[("model-a", q, t)]["score"]


def test_pairwise_shared_requests_keep_their_own_verdict_direction(make_recipe, tmp_path):
    from judge_helpers import ANSWERS, write_answers

    # model-d answers like model-a: (a, b) shown AB and (b, d) shown BA send the same request
    write_answers(tmp_path / "answers", {"model-a": ANSWERS["model-a"], "model-b": ANSWERS["model-b"],
                                         "model-d": ANSWERS["model-a"]})
    recipe = make_recipe(mode="pairwise", answers_dir=str(tmp_path / "answers"), bootstrap=0,
                         models=["model-a", "model-b", "model-d"])
    recs = read_jsonl(run_judging(recipe, tmp_path / "j", progress=False) / "judgments.jsonl")
    by = {(r["model_a"], r["model_b"], r["order"], str(r["question_id"]), r["turn"]): r for r in recs}
    flip = {"A": "B", "B": "A", "tie": "tie"}
    n = 0
    for (ma, mb, order, q, t), r in by.items():
        if (ma, mb, order) == ("model-a", "model-b", "AB"):
            twin = by[("model-b", "model-d", "BA", q, t)]  # shows model-d (= a's answers) first, b second
            assert twin["key"] == r["key"] and twin["verdict_shown"] == r["verdict_shown"]
            assert twin["verdict"] == flip[r["verdict"]]  # a won as A <=> d won, i.e. model_b of its pair
            n += 1
    assert n == 6


def _run_logged(caplog, recipe, out):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ja_instruct.judge.run"):
        run_judging(recipe, out, progress=False)
    return caplog.text, json.loads((out / "summary.json").read_text(encoding="utf-8"))["run"]


def test_manifest_up_to_date_and_reasons_to_rerun(make_recipe, judge_inputs, tmp_path, caplog, monkeypatch):
    from ja_instruct.manifest import read_manifest

    out = tmp_path / "j"
    recipe = make_recipe()
    text, run = _run_logged(caplog, recipe, out)
    m = read_manifest(out, "judge")
    assert m is not None and run["judged"] == 18
    assert {"answers:model-a", "answers:model-b", "answers:model-c", "questions", "prompt:single-ja",
            "prompt:single-ja-ref", "prompt:single-ja-multi"} <= set(m.inputs)
    assert m.config["backend"]["api_key_env"] == "OPENAI_API_KEY" and "concurrency" not in m.config["backend"]
    assert m.details["counts"]["items"] == 18

    text, _ = _run_logged(caplog, make_recipe(backend={"backend": "fake", "concurrency": 2}), out)
    assert "judge: up to date" in text  # an execution knob is not a reason to redo anything

    # a prompt's wording: the stage runs, says why, and judges only the items that prompt renders
    monkeypatch.setattr(prompt_mod, "PROMPTS_DIR", _reworded_prompts(tmp_path))
    text, run = _run_logged(caplog, recipe, out)
    assert "input 'prompt:single-ja' changed" in text
    assert run["judged"] == 9 and run["cached"] == 9 and run["calls"] == 9
    assert "9 judged now, 9 from the cache" in text
    text, _ = _run_logged(caplog, recipe, out)
    assert "judge: up to date" in text

    # one answer file changes: only its changed answer is judged again
    path = tmp_path / "answers" / "model-c.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].replace("Kagawa", "香川")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    text, run = _run_logged(caplog, recipe, out)
    assert "input 'answers:model-c' changed" in text and run["calls"] == 1

    # a judge setting
    text, run = _run_logged(caplog, make_recipe(backend={"backend": "fake", "temperature": 0.3}), out)
    assert "config changed: backend.temperature 0.0 -> 0.3" in text and run["calls"] == 18


def test_explicit_out_is_registered_and_default_folders_come_from_the_layout(make_recipe, judge_inputs, tmp_path):
    from judge_helpers import write_recipe

    from ja_instruct.manifest import RunLayout
    from ja_instruct.recipe import load_recipe

    recipe = make_recipe()
    out = tmp_path / "elsewhere"
    run_judging(recipe, out, progress=False)
    assert RunLayout(recipe.root).stage_dir("judge") == out
    assert recipe.stage_dir("judge") == out

    # answers default to the generate stage's folder (here a registered one)
    gen = tmp_path / "gen-out"
    shutil.copytree(judge_inputs["answers_dir"], gen)
    RunLayout(tmp_path / "run2").register("generate", gen)
    r2 = load_recipe(write_recipe(tmp_path / "r2.yaml", {"questions": judge_inputs["questions"],
                                                         "backend": {"backend": "fake"}}, root=tmp_path / "run2"))
    j = run_judging(r2, progress=False)
    assert j == tmp_path / "run2" / "judge"
    assert json.loads((j / "summary.json").read_text(encoding="utf-8"))["answers_dir"] == str(gen)


@pytest.mark.parametrize("damage", ["torn", "middle"])
def test_store_recovers_a_torn_tail_and_refuses_a_corrupt_line(tmp_path, damage):
    from ja_instruct.errors import UserError
    from ja_instruct.judge.store import JudgmentStore

    path = tmp_path / "cache.jsonl"
    good = [json.dumps({"key": f"k{i}", "status": "ok"}) for i in range(3)]
    if damage == "torn":  # a writer killed mid-line
        path.write_text("\n".join(good) + '\n{"key": "k9", "sta', encoding="utf-8")
        with JudgmentStore(path) as store:
            assert set(store.records) == {"k0", "k1", "k2"}
            store.add({"key": "k3", "status": "ok"})
        assert [json.loads(x)["key"] for x in path.read_text(encoding="utf-8").splitlines()] == ["k0", "k1", "k2", "k3"]
    else:
        path.write_text(good[0] + "\n{oops\n" + good[1] + "\n", encoding="utf-8")
        with pytest.raises(UserError, match="line 2"):
            JudgmentStore(path)


def test_endpoint_from_the_environment_is_an_input_of_the_manifest(make_recipe, tmp_path, caplog, monkeypatch):
    """With base_url null the SDK calls $OPENAI_BASE_URL: pointing it at another server must not
    leave the judge folder 'up to date' with the first server's judgments."""
    from ja_instruct.testing.loopback import LoopbackJudgeServer

    backend = {"backend": "openai", "model": "loopback-judge", "api_key_env": "JT_NO_KEY", "backoff_base": 0.01,
               "timeout": 5.0}
    recipe = make_recipe(turns=[1], backend=backend)
    out = tmp_path / "j"
    with LoopbackJudgeServer() as one, LoopbackJudgeServer() as two:
        monkeypatch.setenv("OPENAI_BASE_URL", one.base_url)
        _run_logged(caplog, recipe, out)
        assert len(one.log) == 12
        text, _ = _run_logged(caplog, recipe, out)
        assert "judge: up to date" in text
        monkeypatch.setenv("OPENAI_BASE_URL", two.base_url)
        text, run = _run_logged(caplog, recipe, out)
        assert "judge: up to date" not in text and "input 'endpoint'" in text
        assert len(two.log) == 12 and len(one.log) == 12


def test_a_deleted_output_is_not_up_to_date(make_recipe, tmp_path, caplog):
    out = tmp_path / "j"
    recipe = make_recipe()
    _run_logged(caplog, recipe, out)
    (out / "summary.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ja_instruct.judge.run"):
        run_judging(recipe, out, progress=False)
    assert "output summary.json missing" in caplog.text and (out / "summary.json").is_file()


def test_cache_pointing_at_a_folder_is_a_user_error(make_recipe, tmp_path):
    from ja_instruct.errors import UserError

    (tmp_path / "cachedir").mkdir()
    with pytest.raises(UserError, match="cache is a folder"):
        run_judging(make_recipe(cache=str(tmp_path / "cachedir")), tmp_path / "j", progress=False)
