"""Judge-scored filtering (`ja_instruct.data.quality`) with the fake judge (and the loopback openai server)."""

from __future__ import annotations

import json
import math

import pytest

from ja_instruct.data import quality as Q
from ja_instruct.data.config import QualityConfig
from ja_instruct.errors import UserError
from ja_instruct.judge import backends
from ja_instruct.judge.backends import FakeBackend, JudgeCallError, JudgeReply, fake_quality

ANSWERS = ["東京です。", "大阪は日本第二の都市圏です。", "I don't know.", "はい。" * 30, "",
           "富士山は標高3776メートルで、日本で最も高い山です。", "わかりません", "水は100度で沸騰します（1気圧）。",
           "Paris", "桜は春に咲きます。日本各地でお花見が行われます。"]


def example(i: int, source: str = "a", answer: str | None = None, instruction: str | None = None) -> dict:
    return {"id": f"{source}:{i}", "source": source,
            "messages": [{"role": "user", "content": instruction or f"質問{i}: 日本について教えてください。"},
                         {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)] if answer is None else answer}]}


def mixture() -> list[dict]:
    return [example(i, "a") for i in range(12)] + [example(i, "b", answer=f"{ANSWERS[i % 10]}（{i}）") for i in range(7)]


def cfg(**kw) -> QualityConfig:
    data = {"judge": {"backend": "fake"}, "threshold": 6.0}
    data.update(kw)
    if "top_fraction" in kw:
        data.pop("threshold")
    return QualityConfig.model_validate(data)


def fake_score(answer: str) -> float:
    """What the fake judge gives (its own formula, not the module under test)."""
    return float(int(round(min(10.0, max(1.0, fake_quality(answer))))))


def last_answer(ex: dict) -> str:
    return [m["content"] for m in ex["messages"] if m["role"] == "assistant"][-1]


def quiet(_line: str) -> None:
    pass


def test_threshold_keeps_exactly_the_examples_at_or_above_it(tmp_path, calls):
    exs = mixture()
    lines: list[str] = []
    c = cfg(threshold=6.0)
    result = Q.score_examples(exs, c, tmp_path / "cache.jsonl", echo=lines.append, progress=False)
    assert len(calls) == len(exs) and result.judged_now == len(exs) and result.cached == 0
    # the scores returned are the judge's, for each example's own response
    assert result.scores == {ex["id"]: fake_score(last_answer(ex)) for ex in exs}
    stored = {json.loads(line)["id"]: json.loads(line)["score"] for line in (tmp_path / "cache.jsonl").open()}
    assert stored == result.scores
    kept, stats = Q.select(exs, result, c)
    expected = {i for i, s in result.scores.items() if s >= 6.0}
    assert 0 < len(expected) < len(exs)  # the test data straddles the bar
    assert [ex["id"] for ex in kept] == [ex["id"] for ex in exs if ex["id"] in expected]  # order kept
    assert all(ex["quality"] == result.scores[ex["id"]] and ex["messages"] for ex in kept)
    assert stats["scored"] == len(exs) and stats["kept"] == len(expected)
    assert stats["dropped"] == len(exs) - len(expected) and stats["errors"] == 0
    assert set(stats) == {"judge", "prompt", "threshold", "top_fraction", "scored", "judged_now", "cached", "kept",
                          "dropped", "errors", "histogram", "usage", "cost", "prices"}
    assert stats["judge"]["backend"] == "fake" and stats["prompt"] == "quality-ja@1"
    assert stats["threshold"] == 6.0 and stats["top_fraction"] is None and stats["cost"] is None
    for src in ("a", "b"):
        h = stats["histogram"][src]
        assert list(h) == [str(s) for s in range(1, 11)]
        want = {str(s): sum(1 for ex in exs if ex["source"] == src and result.scores[ex["id"]] == s)
                for s in range(1, 11)}
        assert h == want
    assert stats["usage"]["prompt_tokens"] > 0 and stats["usage"]["completion_tokens"] > 0
    assert Q.dropped_by_source(exs, kept) == {
        s: n for s in ("a", "b") if (n := sum(1 for ex in exs if ex["source"] == s and ex["id"] not in expected))}
    line = Q.describe(stats)
    assert line.startswith(f"quality: scored {len(exs)} ({len(exs)} now, 0 cached), kept {len(expected)}, "
                           f"dropped {len(exs) - len(expected)} below 6.0; ")
    assert "prompt" in line and "cost" not in line
    assert any("need a judge call" in s for s in lines) and any("judged 19 now" in s for s in lines)


def test_top_fraction_keeps_the_best_of_each_source_ties_by_id(tmp_path, calls):
    exs = mixture()
    c = cfg(top_fraction=0.3)
    result = Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=quiet, progress=False)
    kept, stats = Q.select(exs, result, c)
    want = set()
    for src, n in (("a", 12), ("b", 7)):
        ids = sorted((ex["id"] for ex in exs if ex["source"] == src), key=lambda i: (-result.scores[i], i))
        want |= set(ids[:math.ceil(0.3 * n)])  # ceil: 4 of 12 (3.6), 3 of 7 (2.1)
    assert {ex["id"] for ex in kept} == want and len(kept) == 4 + 3
    assert stats["top_fraction"] == 0.3 and stats["threshold"] is None and stats["kept"] == 7
    assert "outside the best 30% of each source" in Q.describe(stats)
    # exact products are not rounded up by float noise: 0.3 * 10 keeps 3, not 4
    assert Q._top_count(10, 0.3) == 3 and Q._top_count(7, 0.3) == 3 and Q._top_count(1, 0.01) == 1


def test_second_scoring_makes_no_judge_call(tmp_path, calls, monkeypatch):
    exs = mixture()
    c = cfg()
    first = Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=quiet, progress=False)
    calls.clear()

    def no_backend(_cfg):
        raise AssertionError("a backend was built although everything is cached")

    monkeypatch.setattr(backends, "make_backend", no_backend)
    lines: list[str] = []
    second = Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=lines.append, progress=False)
    assert calls == [] and second.judged_now == 0 and second.cached == len(exs)
    assert second.scores == first.scores and second.usage == first.usage
    assert second.run_usage == {"prompt_tokens": 0, "completion_tokens": 0}
    s1, s2 = Q.select(exs, first, c)[1], Q.select(exs, second, c)[1]
    assert {k: v for k, v in s1.items() if k not in ("judged_now", "cached")} == \
        {k: v for k, v in s2.items() if k not in ("judged_now", "cached")}
    assert "(0 now, 19 cached)" in Q.describe(s2)
    assert any("no judge call made" in s for s in lines)


def test_a_changed_example_is_rescored_and_only_it(tmp_path, calls):
    exs = mixture()
    c = cfg()
    Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=quiet, progress=False)
    calls.clear()
    edited = [dict(ex) for ex in exs]
    edited[3] = example(3, "a", answer=ANSWERS[3] + "（修正）")  # response edited
    edited[15] = {**exs[15], "messages": [{"role": "user", "content": "別の質問です。"}, exs[15]["messages"][1]]}
    result = Q.score_examples(edited, c, tmp_path / "c.jsonl", echo=quiet, progress=False)
    assert sorted(calls) == sorted([ANSWERS[3] + "（修正）", last_answer(exs[15])])
    assert result.judged_now == 2 and result.cached == len(exs) - 2
    assert result.scores["a:3"] == fake_score(ANSWERS[3] + "（修正）")


def test_unselected_sources_are_untouched(tmp_path, calls):
    exs = mixture()
    c = cfg(sources=["a"], threshold=7.0)
    result = Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=quiet, progress=False)
    assert len(calls) == 12 and set(result.scores) == {ex["id"] for ex in exs if ex["source"] == "a"}
    kept, stats = Q.select(exs, result, c)
    b_kept = [ex for ex in kept if ex["source"] == "b"]
    assert [ex["id"] for ex in b_kept] == [ex["id"] for ex in exs if ex["source"] == "b"]
    assert all(ex["quality"] is None for ex in b_kept)
    assert list(stats["histogram"]) == ["a"] and stats["scored"] == 12
    assert stats["kept"] + stats["dropped"] == 12
    assert {ex["id"] for ex in kept if ex["source"] == "a"} == {i for i, s in result.scores.items() if s >= 7.0}


def test_estimate_makes_no_call_and_counts_what_is_cached(tmp_path, monkeypatch):
    class Exploding(FakeBackend):
        async def judge(self, req):
            raise AssertionError("estimate called the judge")

    monkeypatch.setitem(backends.BACKENDS, "fake", Exploding)
    exs = mixture() + [example(0, "a")]  # an exact copy of a:0: the same request, one call
    c = cfg(judge={"backend": "fake", "price_prompt_per_1k": 0.5, "price_completion_per_1k": 1.0, "max_tokens": 100})
    cache = tmp_path / "data.quality-cache.jsonl"
    est = Q.estimate(exs, c, cache)
    assert not cache.exists() and not (tmp_path / "data.quality-cache.jsonl.lock").exists()
    assert est["examples"] == 20 and est["to_judge"] == 20 and est["cached"] == 0 and est["calls"] == 19
    assert est["prompt_tokens"] > 19 * 500  # the rubric alone is several hundred tokens
    assert est["completion_tokens"] == 19 * 100  # capped by max_tokens
    assert est["cost"] == pytest.approx((est["prompt_tokens"] * 0.5 + est["completion_tokens"] * 1.0) / 1000)
    assert "19 distinct requests" in Q.describe_estimate(est) and "cost about" in Q.describe_estimate(est)
    # after scoring the first half, only the rest needs a call
    monkeypatch.setitem(backends.BACKENDS, "fake", FakeBackend)
    Q.score_examples(exs[:10], c, cache, echo=quiet, progress=False)
    est = Q.estimate(exs, c, cache)
    assert est["cached"] == 11 and est["to_judge"] == 9 and est["calls"] == 9


def test_prompt_shows_instruction_input_and_response_and_earlier_turns(tmp_path, calls):
    c = cfg()
    prompt = Q.load_quality_prompt(c)
    assert prompt.id == "quality-ja@1" and prompt.score_prefix == "評価：[[" and prompt.output_format == "rating"
    single = {"id": "s:1", "source": "s", "messages": [
        {"role": "user", "content": "次の文を要約してください。"}, {"role": "input", "content": "吾輩は猫である。名前はまだ無い。"},
        {"role": "assistant", "content": "猫が名無しだと語る。"}]}
    user, answer = Q.render_request(single, prompt)
    assert "次の文を要約してください。" in user and "吾輩は猫である。" in user and "猫が名無しだと語る。" in user
    assert answer == "猫が名無しだと語る。" and "評価：[[" in user and "【これまでの会話】\n" not in user
    assert user.index("次の文を要約") < user.index("吾輩は猫") < user.index("猫が名無しだと語る")
    multi = {"id": "m:1", "source": "s", "messages": [
        {"role": "system", "content": "敬語で答えること。"},
        {"role": "user", "content": "日本の首都は？"}, {"role": "assistant", "content": "東京です。"},
        {"role": "user", "content": "人口は？"}, {"role": "assistant", "content": "約1400万人です。"}]}
    user, answer = Q.render_request(multi, prompt)
    assert answer == "約1400万人です。"
    order = ["【指示ここから】", "敬語で答えること。", "【これまでの会話】\n", "日本の首都は？", "東京です。", "【最後の指示】", "人口は？",
             "【応答ここから】", "約1400万人です。"]
    assert [user.index(s) for s in order] == sorted(user.index(s) for s in order)
    Q.score_examples([multi], c, tmp_path / "c.jsonl", echo=quiet, progress=False)
    assert calls == ["約1400万人です。"]  # the judge grades the last response


def test_unscored_examples_are_dropped_and_counted(tmp_path, monkeypatch):
    class HalfBroken(FakeBackend):
        async def judge(self, req):
            if "わかりません" in req.answers[0]:
                return JudgeReply("採点できません。", 10, 5)
            return await super().judge(req)

    monkeypatch.setitem(backends.BACKENDS, "fake", HalfBroken)
    exs = mixture()
    lines: list[str] = []
    for c in (cfg(threshold=1.0), cfg(top_fraction=1.0)):  # both rules would keep every scored example
        result = Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=lines.append, progress=False)
        broken = {ex["id"] for ex in exs if "わかりません" in last_answer(ex)}
        assert broken and {i for i, s in result.scores.items() if s is None} == broken
        kept, stats = Q.select(exs, result, c)
        assert {ex["id"] for ex in kept} == {ex["id"] for ex in exs} - broken
        assert stats["errors"] == len(broken) and stats["dropped"] == len(broken)
        assert sum(sum(h.values()) for h in stats["histogram"].values()) == len(exs) - len(broken)
        assert f"({len(broken)} of them unscored)" in Q.describe(stats)
    assert any("could not be scored" in s for s in lines)


def test_a_failed_run_keeps_its_judgments_and_the_rerun_does_the_rest(tmp_path, monkeypatch):
    asked: list[str] = []

    class Flaky(FakeBackend):
        async def judge(self, req):
            asked.append(req.answers[0])
            if "Paris" in req.answers[0] or "I don't" in req.answers[0]:
                raise JudgeCallError("gave up after 7 tries: APIConnectionError")
            return await super().judge(req)

    monkeypatch.setitem(backends.BACKENDS, "fake", Flaky)
    exs = mixture()
    failing = [ex for ex in exs if "Paris" in last_answer(ex) or "I don't" in last_answer(ex)]
    with pytest.raises(UserError, match=f"{len(failing)} judge call"):
        Q.score_examples(exs, cfg(), tmp_path / "c.jsonl", echo=quiet, progress=False)
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == len(exs) - len(failing)
    asked.clear()
    monkeypatch.setitem(backends.BACKENDS, "fake", type("Fixed", (Flaky,), {"judge": FakeBackend.judge}))
    result = Q.score_examples(exs, cfg(), tmp_path / "c.jsonl", echo=quiet, progress=False)
    assert result.judged_now == len(failing) and result.cached == len(exs) - len(failing)
    assert all(s is not None for s in result.scores.values())


def test_cache_path_prompt_choice_and_manifest_helpers(tmp_path):
    c = cfg()
    assert Q.quality_cache_path(c, tmp_path / "runs" / "data") == tmp_path / "runs" / "data.quality-cache.jsonl"
    assert Q.quality_cache_path(cfg(cache=str(tmp_path / "x.jsonl")), tmp_path / "d") == tmp_path / "x.jsonl"
    # a prompt file by path (same schema), and one of the wrong kind
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\nversion: 3\nkind: single\nsystem: s\ntemplate: '{{ question }} / {{ answer }}'\n"
                   "output_format: rating\nscore_prefix: '[['\n", encoding="utf-8")
    assert Q.load_quality_prompt(cfg(prompt=str(own))).id == "mine@3"
    with pytest.raises(UserError, match="kind single"):
        Q.load_quality_prompt(cfg(prompt="pair-ja"))
    with pytest.raises(UserError, match="no prompt file"):
        Q.load_quality_prompt(cfg(prompt="nope"))
    # the hashed config leaves out where the cache is and how fast the judge is called
    a = Q.hashed_quality_config(cfg(judge={"backend": "fake", "concurrency": 2}, cache="/tmp/a.jsonl"))
    b = Q.hashed_quality_config(cfg(judge={"backend": "fake", "concurrency": 64}))
    assert a == b and a["threshold"] == 6.0 and "concurrency" not in a["judge"]
    assert Q.hashed_quality_config(cfg(threshold=7.0)) != b
    inputs = Q.quality_inputs(c)
    assert set(inputs) == {"quality_prompt"}
    assert Q.quality_inputs(cfg(prompt=str(own)))["quality_prompt"] != inputs["quality_prompt"]


def test_published_judge_identity_hides_url_credentials():
    ident = {"backend": "openai", "model": "m", "base_url": "https://user:sk-secret@host.example/v1?key=abc"}
    assert Q._public_identity(ident)["base_url"] == "https://host.example/v1"


def test_openai_judge_on_the_loopback_server(tmp_path):
    from ja_instruct.testing.loopback import LoopbackJudgeServer

    exs = mixture()
    with LoopbackJudgeServer() as srv:
        c = cfg(threshold=5.0, judge={"backend": "openai", "model": "loopback", "base_url": srv.base_url,
                                      "api_key_env": "JT_NO_KEY", "price_prompt_per_1k": 0.002,
                                      "price_completion_per_1k": 0.004})
        result = Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=quiet, progress=False)
        assert len(srv.log) == len(exs)
        again = Q.score_examples(exs, c, tmp_path / "c.jsonl", echo=quiet, progress=False)
        assert len(srv.log) == len(exs) and again.judged_now == 0  # no request the second time
    prompt = Q.load_quality_prompt(c)
    import hashlib

    for ex in exs:  # the server's score: 1 + a hash of the user message % 10
        user, _ = Q.render_request(ex, prompt)
        assert result.scores[ex["id"]] == 1 + int(hashlib.sha256(user.encode()).hexdigest()[:8], 16) % 10
    kept, stats = Q.select(exs, result, c)
    assert {ex["id"] for ex in kept} == {i for i, s in result.scores.items() if s >= 5.0}
    assert stats["judge"]["base_url"] == srv.base_url and stats["usage"]["prompt_tokens"] > 0
    assert stats["cost"] == pytest.approx((stats["usage"]["prompt_tokens"] * 0.002
                                           + stats["usage"]["completion_tokens"] * 0.004) / 1000, abs=1e-6)
    assert "cost" in Q.describe(stats)


@pytest.mark.slow
def test_estimate_with_an_hf_judge_counts_with_its_tokenizer_and_loads_no_model(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    from ja_instruct.judge.backends import HFBackend

    def no_model(self):
        raise AssertionError("estimate loaded the judge model")

    monkeypatch.setattr(HFBackend, "_load", no_model)
    c = cfg(judge={"backend": "hf", "model": str(tiny_model_dir), "device": "cpu"})
    exs = mixture()
    est = Q.estimate(exs, c, tmp_path / "c.jsonl")
    assert est["tokens_counted_by"] == f"the tokenizer of {tiny_model_dir}"
    assert est["calls"] == len(exs) and est["completion_tokens"] == 0  # the hf judge generates nothing
    # the tokenizer's count, not the character rule's
    assert est["prompt_tokens"] > 0 and est["prompt_tokens"] != Q.estimate(exs, cfg(), tmp_path / "c.jsonl")[
        "prompt_tokens"]
    assert set(Q.quality_inputs(c)) == {"quality_prompt", "quality_judge_model"}
