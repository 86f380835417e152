"""`generate.samples`: N answers per question in `choices`, sample k seeded seed + k, each its own conversation."""

from __future__ import annotations

import json
import logging

import pytest

from ja_instruct.generate import backends
from ja_instruct.generate.backends import FakeBackend, HFBackend
from ja_instruct.generate.config import ModelSpec
from ja_instruct.generate.run import run_generation
from ja_instruct.io import read_jsonl_store
from ja_instruct.manifest import read_manifest
from ja_instruct.recipe import load_recipe

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["京都旅行の計画を立ててください。", "予算を半分にしてください。"]},
    {"question_id": 2, "category": "math", "turns": ["1から10までの和は？"]},
    {"question_id": 3, "category": "地理", "turns": ["日本で一番長い川は？"]},
]
SEED = 7


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_recipe(tmp_path):
    qpath = tmp_path / "questions.jsonl"
    qpath.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")

    def make(models="[{id: fake-a, backend: fake, batch_size: 2}]", out="run", **generate):
        section = {"questions": str(qpath), "max_new_tokens": 200, "mt_bench_temperatures": True, **generate}
        body = "".join(f"  {k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in section.items())
        path = tmp_path / f"{out}.yaml"
        path.write_text(f"name: t\nseed: {SEED}\nout_dir: {tmp_path / out}\ngenerate:\n{body}  models: {models}\n",
                        encoding="utf-8")
        return load_recipe(path)
    return make


@pytest.fixture
def calls(monkeypatch):
    """Every backend construction and generate call: (model id, seed, conversations)."""
    log: dict[str, list] = {"built": [], "generate": []}

    def recording(base):
        class Recording(base):
            def __init__(self, spec, path):
                log["built"].append(spec.id)
                super().__init__(spec, path)

            def generate(self, conversations, params):
                log["generate"].append((self.spec.id, params.seed, conversations))
                return super().generate(conversations, params)
        return Recording

    monkeypatch.setitem(backends.BACKENDS, "fake", recording(FakeBackend))
    monkeypatch.setitem(backends.BACKENDS, "hf", recording(HFBackend))
    return log


def records(out, model="fake-a"):
    return {r["question_id"]: r for r in read_jsonl_store(out / f"{model}.jsonl")}


def content(rec):
    return {k: v for k, v in rec.items() if k not in ("answer_id", "tstamp")}


def test_each_sample_is_its_own_seeded_conversation(make_recipe, calls):
    recipe = make_recipe(samples=3)
    out = run_generation(recipe)
    assert read_manifest(out, "generate") is not None
    fake = FakeBackend(ModelSpec(id="fake-a", backend="fake"), None)
    recs = records(out)
    for q in QUESTIONS:
        rec = recs[q["question_id"]]
        assert [c["index"] for c in rec["choices"]] == [0, 1, 2]
        assert rec["generation"]["seed"] == SEED == recipe.seed
        for k, choice in enumerate(rec["choices"]):
            conv: list[dict] = []
            for t, turn in enumerate(q["turns"]):  # turn 2 of sample k follows sample k's turn 1
                conv.append({"role": "user", "content": turn})
                assert choice["turns"][t] == fake.answer(conv, SEED + k)
                conv.append({"role": "assistant", "content": choice["turns"][t]})
            assert len(choice["health"]) == len(q["turns"]) and choice["health"][0]["language"] == "ok"
        assert rec["health"] == rec["choices"][0]["health"]
    assert any(len({c["turns"][0] for c in r["choices"]}) > 1 for r in recs.values())
    # Every call is one sample of one params set; each sample is asked every turn.
    seeds = sorted({seed for _, seed, _ in calls["generate"]})
    assert seeds == [SEED, SEED + 1, SEED + 2]
    health = json.loads((out / "health.json").read_text())["fake-a"]
    assert health["turns"] == 3 * 4 and sum(health["language"].values()) == 12


def test_one_sample_is_what_it_always_was(make_recipe, tmp_path):
    plain = records(run_generation(make_recipe(out="plain")))
    one = records(run_generation(make_recipe(out="one", samples=1)))
    three = records(run_generation(make_recipe(out="three", samples=3)))
    assert {k: content(r) for k, r in one.items()} == {k: content(r) for k, r in plain.items()}
    for qid, rec in one.items():
        assert rec["choices"] == [{"index": 0, "turns": rec["choices"][0]["turns"]}]  # no per-choice health
        assert three[qid]["choices"][0]["turns"] == rec["choices"][0]["turns"]  # sample 0 = the single answer
        assert three[qid]["fingerprint"] == rec["fingerprint"]
    again = records(run_generation(make_recipe(out="again", samples=3)))
    assert {k: r["choices"] for k, r in again.items()} == {k: r["choices"] for k, r in three.items()}


def test_changing_samples_keeps_the_current_ones(make_recipe, calls, caplog):
    caplog.set_level(logging.INFO)
    out = run_generation(make_recipe())
    first = records(out)
    calls["generate"].clear()

    run_generation(make_recipe(samples=3))
    three = records(out)
    assert {seed for _, seed, _ in calls["generate"]} == {SEED + 1, SEED + 2}  # sample 0 not asked again
    for qid, rec in three.items():
        assert len(rec["choices"]) == 3 and rec["choices"][0]["turns"] == first[qid]["choices"][0]["turns"]
        assert rec["choices"][0]["health"] == first[qid]["health"]
    assert any("3 from 1 to 3 samples" in r.getMessage() for r in caplog.records)
    assert read_manifest(out, "generate") is not None

    built = len(calls["built"])
    run_generation(make_recipe(samples=2))
    assert len(calls["built"]) == built  # dropping samples loads no model
    assert {k: r["choices"] for k, r in records(out).items()} == {k: r["choices"][:2] for k, r in three.items()}
    assert any("3 from 3 to 2 samples" in r.getMessage() for r in caplog.records)

    run_generation(make_recipe(samples=1))
    assert len(calls["built"]) == built
    back = records(out)
    assert {k: (r["choices"], r["health"]) for k, r in back.items()} == \
        {k: (r["choices"], r["health"]) for k, r in first.items()}
    assert read_manifest(out, "generate") is not None

    caplog.clear()
    run_generation(make_recipe(samples=1))
    assert any(r.getMessage().startswith("generate: up to date") for r in caplog.records)


def test_hf_samples_differ_reproducibly_and_greedy_answers_once(make_recipe, calls, tiny_model_dir):
    model = f"[{{id: tiny, backend: hf, path: '{tiny_model_dir}', template: plamo, device: cpu, batch_size: 4}}]"
    out = run_generation(make_recipe(models=model, samples=3, max_new_tokens=8))
    recs = records(out, "tiny")
    # 地理: temperature 1.0 -> three different answers; writing (0.7) too.
    for qid in (1, 3):
        assert len({tuple(c["turns"]) for c in recs[qid]["choices"]}) == 3
    # math: greedy (MT-Bench temperature 0): answered once, the same answer three times.
    assert len({tuple(c["turns"]) for c in recs[2]["choices"]}) == 1
    math_calls = [seed for _, seed, convs in calls["generate"] if convs[0][-1]["content"] == QUESTIONS[1]["turns"][0]]
    assert math_calls == [SEED]
    again = records(run_generation(make_recipe(models=model, samples=3, max_new_tokens=8, out="again")), "tiny")
    assert {k: r["choices"] for k, r in again.items()} == {k: r["choices"] for k, r in recs.items()}
