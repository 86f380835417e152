"""ELYZA-tasks-style items graded 1-5 (scale on every record, never averaged across scales), the
Japanese-language guard, and hidden reasoning removed before judging: through the judge stage."""

from __future__ import annotations

import json

import pytest
from judge11_helpers import (ELYZA_ROWS, ScaledFakeBackend, SevenJudge, judge_recipe, write_jsonl,
                             write_sample_answers)

from ja_instruct.io import read_jsonl
from ja_instruct.judge import backends
from ja_instruct.judge.run import plan, resolve_config, run_judging
from ja_instruct.judge.summary import build_summary

ENGLISH = "The capital of France is Paris. It is a large city on the Seine with many famous museums."
# short Japanese prose around a long code block: with the code counted, under 10% Japanese
CODE_JA = ("次のように書けます。\n```python\ndef fibonacci_numbers(count):\n    values = [0, 1]\n"
           "    while len(values) < count:\n        values.append(values[-1] + values[-2])\n"
           "    return values[:count]\n\nprint(fibonacci_numbers(10))\n```\n最初の十個を返します。")


@pytest.fixture
def scaled_fake(monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "fake", ScaledFakeBackend)


def _elyza_inputs(tmp_path):
    q = write_jsonl(tmp_path / "elyza.jsonl", ELYZA_ROWS)
    answers = {"m-ja": {1: [["とても忙しいことのたとえです。"]], 2: [["1人1個で、1個余ります。"]],
                        3: [["菜の花や 春の小道を 風がゆく"]]},
               "m-en": {1: [["It means you are very busy."]], 2: [["One each, one left over."]],
                        3: [["Spring breeze blows, flowers open wide, birds sing along."]]}}
    return q, write_sample_answers(tmp_path / "answers", answers)


def test_elyza_items_are_judged_1_to_5_with_reference_and_aspect(tmp_path, scaled_fake):
    q, a = _elyza_inputs(tmp_path)
    recipe = judge_recipe(tmp_path, q, a)
    items, _, _ = plan(resolve_config(recipe))
    first = next(it for it in items if (it.record["question_id"], it.record["model"]) == (2, "m-ja"))
    # the judge sees the task, the reference, the item's own aspect and the answer
    for text in (ELYZA_ROWS[1]["input"], ELYZA_ROWS[1]["output"], "片方だけなら3点", "1人1個で、1個余ります。"):
        assert text in first.user
    assert "1から5" in first.user and first.record["reference_guided"]  # category "elyza" is not a ref category

    out = run_judging(recipe, tmp_path / "j", progress=False)
    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs)
    assert all(r["scale"] == [1, 5] and r["prompt"] == "single-ja-elyza@1" for r in recs)
    assert all(1 <= r["score"] <= 5 for r in recs)
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert {m: b["scale"] for m, b in summ["models"].items()} == {"m-ja": "1-5", "m-en": "1-5"}
    assert summ["models"]["m-en"]["mean"] == 1.0  # English everywhere: floored to the scale's lowest grade
    own = [r["score"] for r in read_jsonl(out / "cache.jsonl") if r["model"] == "m-en"]
    assert summ["models"]["m-en"]["unguarded"]["mean"] == pytest.approx(sum(own) / 3)
    assert all(r["guarded"] for r in recs if r["model"] == "m-en")
    assert not any(r["guarded"] for r in recs if r["model"] == "m-ja")
    assert summ["models"]["m-en"]["language"] == {"ok": 0, "mixed": 0, "not-japanese": 3}


def test_a_grade_outside_the_prompts_scale_is_a_parse_error(tmp_path, monkeypatch):
    monkeypatch.setitem(backends.BACKENDS, "fake", SevenJudge)
    q, a = _elyza_inputs(tmp_path)
    out = run_judging(judge_recipe(tmp_path, q, a), tmp_path / "j", progress=False)
    recs = read_jsonl(out / "judgments.jsonl")
    # 7 is a fine grade on 1-10 but not on ELYZA's 1-5: asked again, then stored as a parse error
    assert all(r["status"] == "parse_error" and r["attempts"] == 3 for r in recs)


def test_scales_are_never_averaged_together():
    def rec(model, qid, score, scale):
        return {"mode": "single", "question_id": qid, "category": "c", "turn": 1, "model": model, "score": score,
                "status": "ok", "judge": "j", "prompt": "p@1", "repeat": 0, "scale": scale}

    recs = [rec("a", 1, 4, [1, 5]), rec("a", 2, 2, [1, 5]), rec("a", 3, 9, [1, 10]), rec("b", 3, 7, [1, 10])]
    s = build_summary(recs, "single", ["a", "b"], judge="j", question_set=None, answers_dir=None, bootstrap=0)
    a = s["models"]["a"]
    assert a["scale"] == "mixed" and a["mean"] is None and a["n"] == 3
    assert a["by_scale"]["1-5"]["mean"] == 3.0 and a["by_scale"]["1-10"]["mean"] == 9.0
    assert s["models"]["b"]["scale"] == "1-10" and s["models"]["b"]["mean"] == 7.0


def test_language_guard_caps_english_and_spares_japanese_with_code(tmp_path):
    q = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "category": "c", "turns": ["フランスの首都は？"]},
                                           {"question_id": 2, "category": "coding", "turns": ["フィボナッチ数列を出力して"]}])
    a = write_sample_answers(tmp_path / "answers", {"m": {1: [[ENGLISH]], 2: [[CODE_JA]]}})
    out = run_judging(judge_recipe(tmp_path, q, a), tmp_path / "j", progress=False)
    by = {r["question_id"]: r for r in read_jsonl(out / "judgments.jsonl")}
    judged = {r["question_id"]: r["score"] for r in read_jsonl(out / "cache.jsonl")}  # the judge's own scores
    en, code = by[1], by[2]
    assert en["language"] == "not-japanese" and en["guarded"] is True
    assert en["score"] == 1.0 and en["score_unguarded"] == judged[1] > 1.0
    assert code["language"] == "ok" and code["guarded"] is False
    assert code["score"] == code["score_unguarded"] == judged[2]
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))["models"]["m"]
    assert summ["mean"] == pytest.approx((1.0 + judged[2]) / 2)
    assert summ["unguarded"]["mean"] == pytest.approx((judged[1] + judged[2]) / 2)
    assert summ["language"] == {"ok": 1, "mixed": 0, "not-japanese": 1} and summ["guarded"] == 1

    # only flagged: the same judgments from the cache (no call), scores as the judge gave them
    out2 = run_judging(judge_recipe(tmp_path, q, a, language_guard="flag"), tmp_path / "j", progress=False)
    summary2 = json.loads((out2 / "summary.json").read_text(encoding="utf-8"))
    assert summary2["run"]["calls"] == 0
    en2 = {r["question_id"]: r for r in read_jsonl(out2 / "judgments.jsonl")}[1]
    assert en2["score"] == judged[1] and en2["language"] == "not-japanese" and en2["guarded"] is False


def test_reasoning_is_stripped_before_judging_and_counted(tmp_path):
    q = write_jsonl(tmp_path / "q.jsonl", [{"question_id": i, "category": "c", "turns": [f"質問{i}"]}
                                           for i in (1, 2, 3)])
    thought = "<think>Let me think in English about this carefully.</think>"
    answers = {"r1": {1: [[thought + "東京です。"]], 2: [["<think>ずっと考えていて終わらない"]], 3: [["大阪です。"]]}}
    a = write_sample_answers(tmp_path / "answers", answers)
    recipe = judge_recipe(tmp_path, q, a)
    items, _, _ = plan(resolve_config(recipe))
    by = {it.record["question_id"]: it for it in items}
    assert "Let me think" not in by[1].user and "東京です。" in by[1].user and by[1].answers == ["東京です。"]
    assert [by[i].record["reasoning"] for i in (1, 2, 3)] == ["stripped", "unclosed", "none"]
    assert by[1].record["language"] == "ok"  # the English reasoning is not what is judged
    out = run_judging(recipe, tmp_path / "j", progress=False)
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))["models"]["r1"]
    assert summ["reasoning"] == {"stripped": 1, "unclosed": 1}
    assert summ["length"]["chars"] == pytest.approx((len("東京です。") + len(answers["r1"][2][0][0]) + 5) / 3)

    # think_pattern null: answers judged as written (another request, another key)
    items2, _, _ = plan(resolve_config(judge_recipe(tmp_path, q, a, think_pattern=None)))
    first = next(it for it in items2 if it.record["question_id"] == 1)
    assert "Let me think" in first.user and first.record["reasoning"] == "none" and first.key != by[1].key


def test_prompt_file_scale_must_be_increasing(tmp_path):
    from ja_instruct.errors import UserError
    from ja_instruct.judge.prompt import load_prompt_file

    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\nversion: 1\nkind: single\nsystem: s\ntemplate: t\noutput_format: rating\n"
                   "score_prefix: '[['\nscale: [5, 1]\n", encoding="utf-8")
    with pytest.raises(UserError, match="lowest < highest"):
        load_prompt_file(bad)
    bad.write_text(bad.read_text(encoding="utf-8").replace("[5, 1]", "[1, 5]"), encoding="utf-8")
    assert load_prompt_file(bad).scale == (1, 5)


def test_bad_think_pattern_is_a_user_error(tmp_path):
    from ja_instruct.errors import UserError

    q, a = _elyza_inputs(tmp_path)
    with pytest.raises(UserError, match="think_pattern"):
        plan(resolve_config(judge_recipe(tmp_path, q, a, think_pattern="<think>(.*")))


def test_config_mistakes_are_refused_when_the_recipe_loads(tmp_path):
    from ja_instruct.errors import UserError

    q, a = _elyza_inputs(tmp_path)
    for judge, words in (({"think_pattern": ".*"}, "ordinary answer"),
                         ({"mode": "pairwise", "panel": [{"backend": "fake", "model": "b"}]}, "not supported"),
                         ({"panel": [{"backend": "fake"}]}, "own model id")):
        with pytest.raises(UserError, match=words):
            judge_recipe(tmp_path, q, a, **judge)  # loading alone, before any stage runs


def test_an_answer_in_the_language_the_question_asked_for_is_flagged_not_floored():
    from ja_instruct.judge.single import apply_language_guard, asks_for_other_language

    assert asks_for_other_language("次の文を英語に翻訳してください。「今日は晴れです。」")
    assert asks_for_other_language("Write a short poem about the sea.")
    assert not asks_for_other_language("日本の首都について説明してください。")
    base = {"mode": "single", "score": 8.0, "scale": [1, 10], "language": "not-japanese"}
    asked = apply_language_guard({**base, "language_exempt": True}, "floor")
    assert asked["score"] == 8.0 and asked["guarded"] is False and asked["language"] == "not-japanese"
    capped = apply_language_guard({**base, "language_exempt": False}, "floor")
    assert capped["score"] == 1.0 and capped["guarded"] is True and capped["score_unguarded"] == 8.0
