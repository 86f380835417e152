"""`run_pairs` with sampling and judging: exactly the pairs at or above the margin, a re-run that
asks nothing, what each change redoes, pairwise verdicts that must agree in both orders."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import QUESTIONS
from pairs_helpers import PositionBiasedJudge, score

from ja_instruct.errors import UserError
from ja_instruct.pairs import load_pairs, run_pairs
from ja_instruct.recipe import load_recipe

TEXT = {q["question_id"]: q["turns"][0] for q in QUESTIONS}


def samples_by_prompt(generations) -> dict[str, list[str]]:
    """question id -> the model's samples in sample order (seed + k), as the fake model wrote them."""
    ids = {t: qid for qid, t in TEXT.items()}
    by: dict[str, dict[int, str]] = defaultdict(dict)
    for question, seed, text in generations:
        by[ids[question]][seed] = text
    return {qid: [s[k] for k in sorted(s)] for qid, s in by.items()}


def expected_single(samples: dict[str, list[str]], margin: float) -> dict[str, tuple[int, int]]:
    """question id -> (best grade, worst grade) for the prompts whose grades differ by >= margin and > 0."""
    out = {}
    for qid, texts in samples.items():
        grades = [score(t) for t in texts]
        if max(grades) - min(grades) >= margin and max(grades) > min(grades):
            out[qid] = (max(grades), min(grades))
    return out


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_single_keeps_exactly_the_pairs_at_or_above_the_margin(write_recipe, judge_calls, generations):
    out = run_pairs(load_recipe(write_recipe(margin=3)))
    samples = samples_by_prompt(generations)
    assert len(samples) == len(QUESTIONS) and all(len(s) == 4 for s in samples.values())
    expected = expected_single(samples, 3)
    assert 0 < len(expected) < len(QUESTIONS)  # the margin really separates prompts here
    pairs = load_pairs(out)
    got = {r.id: r for r in pairs.records}
    assert set(got) == set(expected)
    for qid, (best, worst) in expected.items():
        r = got[qid]
        assert (score(r.chosen), score(r.rejected), r.margin) == (best, worst, best - worst)
        assert r.chosen in samples[qid] and r.rejected in samples[qid]
        assert r.prompt == [{"role": "user", "content": TEXT[qid]}] and r.judge == "fake-judge"
    # every distinct answer was graded once (identical answers share one request)
    assert len(judge_calls) == len({(q, t) for q, ts in samples.items() for t in ts})
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    ties = sum(len({score(t) for t in ts}) == 1 for ts in samples.values())
    assert stats["dropped"] == {k: v for k, v in {"tie": ties, "margin_below": len(QUESTIONS) - len(expected) - ties
                                                  }.items() if v}
    assert sum(b["prompts"] for b in stats["margin_histogram"]) == len(QUESTIONS)
    assert sum(b["kept"] for b in stats["margin_histogram"]) == len(expected)
    assert stats["pairs"]["kept"] == len(expected) == stats["pairs"]["train"] + stats["pairs"]["heldout"]
    assert stats["pairs"]["heldout"] >= 1 and {r.split for r in pairs.records} == {"train", "heldout"}
    assert pairs.meta["judge"] == "fake-judge" and pairs.meta["license"] == "unknown"
    assert (out / "stats.md").read_text(encoding="utf-8").count("margin_below") == ("margin_below" in stats["dropped"])


def test_rerun_asks_nothing_and_each_change_redoes_only_what_it_must(write_recipe, judge_calls, generations,
                                                                     caplog, tmp_path):
    caplog.set_level(logging.INFO)
    path = write_recipe(margin=3)
    out = run_pairs(load_recipe(path))
    samples = samples_by_prompt(generations)
    n_texts = len(judge_calls)

    # 1. nothing changed: no generation, no judge call, not a file touched, one line says so
    judge_calls.clear(), generations.clear(), caplog.clear()
    before = _mtimes(out)
    assert run_pairs(load_recipe(path)) == out
    assert (judge_calls, generations, _mtimes(out)) == ([], [], before)
    assert [r.message for r in caplog.records if r.name.startswith("ja_instruct")] == \
        [f"pairs: up to date ({len(load_pairs(out).records)} pairs: train "
         f"{len(load_pairs(out).split('train'))}, held out {len(load_pairs(out).split('heldout'))} in {out})"]

    # 2. another margin: re-selected from the same answers and judgments
    caplog.clear()
    run_pairs(load_recipe(path, ["pairs.margin=1"]))
    assert (judge_calls, generations) == ([], [])
    assert {r.id for r in load_pairs(out).records} == set(expected_single(samples, 1))
    assert "margin 3.0 -> 1.0" in caplog.text

    # 3. another judge model: every answer judged again, none generated; back again: all from the cache
    run_pairs(load_recipe(path, ["pairs.judge.backend.model=other-judge"]))
    assert len(judge_calls) == n_texts and generations == []
    assert {r.judge for r in load_pairs(out).records} == {"other-judge"}
    judge_calls.clear()
    run_pairs(load_recipe(path))
    assert judge_calls == []

    # 4. another judge prompt, then the same file edited: judged again each time
    prompt = {"name": "mine", "type": "single", "system_prompt": "採点者です。", "category": "general",
              "prompt_template": "質問：{question_1}\n回答：{answer_1}\n評価：[[数字]]", "description": "test",
              "output_format": "[[評価]]"}
    pfile = tmp_path / "judge_prompt.jsonl"
    pfile.write_text(json.dumps(prompt, ensure_ascii=False) + "\n", encoding="utf-8")
    with_prompt = write_recipe(judge={"backend": {"backend": "fake"}, "judge_prompts": str(pfile)})
    run_pairs(load_recipe(with_prompt))
    assert len(judge_calls) == n_texts and generations == []
    judge_calls.clear()
    pfile.write_text(json.dumps(dict(prompt, prompt_template="Q: {question_1}\nA: {answer_1}"), ensure_ascii=False)
                     + "\n", encoding="utf-8")
    run_pairs(load_recipe(with_prompt))
    assert len(judge_calls) == n_texts and generations == []

    # 5. more samples: only the new ones generated; restart: everything again
    judge_calls.clear()
    run_pairs(load_recipe(with_prompt, ["pairs.samples=5"]))
    assert len(generations) == len(QUESTIONS) and 0 < len(judge_calls) <= len(QUESTIONS)
    generations.clear()
    run_pairs(load_recipe(with_prompt, ["pairs.samples=5"]), restart=True)
    assert len(generations) == 5 * len(QUESTIONS)


def expected_pairwise(samples: dict[str, list[str]], margin: float) -> dict[str, tuple[str, str]]:
    """Under `ScoringJudge`: a comparison agrees in both orders iff the grades differ (equal ones
    go to whichever is shown first); wins = agreed wins; best and worst by wins, lowest index on
    ties; kept when they differ by >= margin and the best beat the worst."""
    out = {}
    for qid, texts in samples.items():
        g = [score(t) for t in texts]
        wins = [sum(g[i] > g[j] for j in range(len(g))) for i in range(len(g))]
        best = min(range(len(g)), key=lambda i: (-wins[i], i))
        worst = min((i for i in range(len(g)) if i != best), key=lambda i: (wins[i], i))
        if wins[best] - wins[worst] >= margin and g[best] > g[worst]:
            out[qid] = (texts[best], texts[worst])
    return out


def test_pairwise_counts_only_verdicts_that_agree_in_both_orders(write_recipe, judge_calls, generations):
    out = run_pairs(load_recipe(write_recipe(margin=2, judge={"mode": "pairwise", "backend": {"backend": "fake"}})))
    samples = samples_by_prompt(generations)
    expected = expected_pairwise(samples, 2)
    assert 0 < len(expected) < len(QUESTIONS)
    assert {r.id: (r.chosen, r.rejected) for r in load_pairs(out).records} == expected
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["mode"] == "pairwise" and stats["judged"]["items"] == len(QUESTIONS) * 6 * 2  # 6 pairs x 2 orders


def test_pairwise_a_judge_that_prefers_the_first_answer_gives_no_pair(write_recipe, generations, monkeypatch):
    from ja_instruct.judge import backends

    monkeypatch.setitem(backends.BACKENDS, "fake", PositionBiasedJudge)
    recipe = load_recipe(write_recipe(margin=1, judge={"mode": "pairwise", "backend": {"backend": "fake"}}))
    with pytest.raises(UserError, match="no pair kept") as err:
        run_pairs(recipe)
    assert "tie 12" in str(err.value)
    out = recipe.stage_dir("pairs")
    assert json.loads((out / "stats.json").read_text(encoding="utf-8"))["dropped"] == {"tie": len(QUESTIONS)}
    assert not (out / "manifest.json").exists()


def test_cut_off_answers_are_never_chosen(write_recipe, judge_calls, generations):
    recipe = load_recipe(write_recipe(margin=0, max_new_tokens=10))
    with pytest.raises(UserError, match="truncated_chosen 12.*Raise pairs.max_new_tokens"):
        run_pairs(recipe)


def test_trained_model_of_a_dpo_recipe_is_refused(write_recipe):
    path = write_recipe(model={"id": "pol", "path": "trained"},
                        recipe_keys={"train": {"model": "embedded:smollm2-135m-instruct", "method": "dpo"}})
    with pytest.raises(UserError, match="DPO run these pairs feed") as err:
        run_pairs(load_recipe(path))
    assert err.value.field == "pairs.model.path"


def test_trained_model_not_there_yet_names_the_pairs_key(write_recipe):
    path = write_recipe(model={"id": "pol", "path": "trained"},
                        recipe_keys={"train": {"model": "embedded:smollm2-135m-instruct"}})
    with pytest.raises(UserError, match="holds no complete trained model") as err:
        run_pairs(load_recipe(path))
    assert err.value.field == "pairs.model.path" and "runs pairs before train" in err.value.hint
