"""Prompt files: ours load strictly and render; FastChat / JA MT-Bench / Rakuda files load and render."""

from __future__ import annotations

import pytest

from ja_instruct.errors import UserError
from ja_instruct.judge.prompt import (PromptSet, build_context, builtin_prompt_names, load_fastchat_prompts,
                                      load_prompt_file)


def test_builtin_prompts_load_and_render():
    names = builtin_prompt_names()
    assert {"single-ja", "single-ja-ref", "single-ja-multi", "pair-ja", "pair-ja-multi"} <= set(names)
    ps = PromptSet()
    p = ps.get("single", ref=False, multi=False)
    assert p.id == "single-ja@2" and p.output_format == "rating"
    text = p.render(build_context(["日本の首都は？"], ["東京です。"]))
    assert "日本の首都は？" in text and "東京です。" in text and "評価：[[" in text
    ref = ps.get("single", ref=True, multi=False)
    assert ref.name == "single-ja-ref"
    text = ref.render(build_context(["1+1は？"], ["2"], references=["2です。"]))
    assert "2です。" in text
    multi = ps.get("single", ref=True, multi=True)
    text = multi.render(build_context(["Q1", "Q2"], ["A1", "A2"], references=["R1", "R2"]))
    assert all(s in text for s in ("Q1", "Q2", "A1", "A2", "R1", "R2"))
    text = multi.render(build_context(["Q1", "Q2"], ["A1", "A2"]))
    assert "参照解答ここから" not in text
    pair = ps.get("pairwise", ref=False, multi=False)
    text = pair.render(build_context(["Q"], ["first"], ["second"]))
    assert text.index("first") < text.index("second") and "[[C]]" in text
    pm = ps.get("pairwise", ref=False, multi=True)
    text = pm.render(build_context(["Q1", "Q2"], ["a1", "a2"], ["b1", "b2"]))
    assert all(s in text for s in ("a1", "a2", "b1", "b2"))


def test_unknown_key_in_prompt_file_is_an_error(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("name: x\nversion: 1\nkind: single\nsystem: s\ntemplate: t\noutput_format: rating\n"
                   "score_prefix: '[['\ntemperature: 0\n", encoding="utf-8")
    with pytest.raises(UserError, match="unknown key 'temperature'"):
        load_prompt_file(bad)


def test_prompt_kind_mismatch_and_unknown_family():
    with pytest.raises(UserError, match="pairwise prompt"):
        PromptSet("pair-ja").get("single", False, False)
    with pytest.raises(UserError, match="no built-in prompt"):
        PromptSet("nope").get("single", False, False)
    with pytest.raises(UserError, match="unknown prompt role"):
        PromptSet(names={"singel": "x"})


def test_fastchat_prompt_files_load_and_render(shared_data):
    d = shared_data / "judge_prompts"
    fc = load_fastchat_prompts(d / "fastchat_judge_prompts.jsonl")
    assert fc["single-v1"].output_format == "rating" and fc["single-v1"].score_prefix == "Rating: [["
    assert fc["pair-v2"].output_format == "verdict"
    ps = PromptSet(fastchat_file=d / "fastchat_judge_prompts.jsonl")
    ctx2 = build_context(["Q1", "Q2"], ["A1", "A2"], references=["R1", "R2"])
    text = ps.get("single", True, True).render(ctx2)
    assert ps.get("single", True, True).name == "single-math-v1-multi-turn"
    assert all(s in text for s in ("Q1", "Q2", "A1", "A2", "R1", "R2"))
    text = ps.get("pairwise", True, True).render(build_context(["Q1", "Q2"], ["a1", "a2"], ["b1", "b2"], ["R1", "R2"]))
    assert all(s in text for s in ("a1", "a2", "b1", "b2", "R1"))
    assert ps.get("pairwise", False, False).render(build_context(["Q"], ["x"], ["y"])).count("x") >= 1

    ja = PromptSet(fastchat_file=d / "ja_mt_bench_judge_prompts.jsonl")
    p = ja.get("single", True, False)
    assert p.name == "single-math-v1" and p.score_prefix == "評価：[["
    assert "参考回答" in p.render(build_context(["Q"], ["A"], references=["R"]))
    with pytest.raises(UserError, match="single-multi"):
        ja.get("single", False, True)  # the JA MT-Bench file has no multi-turn prompt

    rk = PromptSet(fastchat_file=d / "rakuda_judge_prompts.jsonl")
    p = rk.get("pairwise", False, False)
    assert p.name == "pair-ja" and p.output_format == "verdict123"
    text = p.render(build_context(["四国の県は？"], ["香川"], ["徳島"]))
    assert text.index("香川") < text.index("徳島")
    assert p.version.startswith("fc-") and p.id != load_fastchat_prompts(d / "fastchat_judge_prompts.jsonl")["pair-v2"].id


def test_fastchat_file_with_bad_record(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"name": "x", "type": "single", "system_prompt": "", "prompt_template": "{question}", '
                 '"output_format": "[[stars]]"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="output_format"):
        load_fastchat_prompts(f)
