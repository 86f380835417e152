"""Near-duplicate removal (`clean.near_dedup`): MinHash LSH over character n-grams, across sources
in recipe order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ja_instruct.data import build_dataset, load_dataset_dir
from ja_instruct.data.build import build_dataset as build
from ja_instruct.data.clean import dedup_text
from ja_instruct.data.config import DataConfig, NearDedupConfig
from ja_instruct.data.neardup import NearDuplicateIndex, _poly_hash, codepoints, ngram_hashes

FUJI_Q = "富士山について簡単に説明してください。"
FUJI_A = ("富士山は静岡県と山梨県にまたがる標高3776メートルの活火山で、日本で最も高い山です。"
          "古くから信仰の対象とされ、多くの芸術作品の題材にもなってきました。2013年には「富士山－信仰の"
          "対象と芸術の源泉」として世界文化遺産に登録されました。")
# the same answer with a few characters changed (one inserted, two replaced)
FUJI_A_EDITED = FUJI_A.replace("多くの芸術", "数多くの芸術").replace("登録されました", "登録されています")
# same topic, a different question and answer
FUJI_CLIMB_Q = "富士山の登山シーズンと注意点を教えてください。"
FUJI_CLIMB_A = ("富士山の一般的な登山シーズンは、山小屋が営業する7月上旬から9月上旬までです。山頂付近は夏でも"
                "気温が0度近くまで下がることがあるため、防寒着を必ず用意しましょう。また、高山病を防ぐために、"
                "五合目で体を慣らしてからゆっくり登ることが大切です。")
TEA_Q = "日本茶の種類を教えてください。"
TEA_A = ("日本茶には、煎茶、玉露、抹茶、ほうじ茶、玄米茶などがあります。煎茶は最も多く飲まれている緑茶で、"
         "玉露は日光を遮って育てた茶葉から作られ、甘みとうま味が強いのが特徴です。")


def conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def write_source(path, convs: list[list[dict]]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for i, messages in enumerate(convs):
            f.write(json.dumps({"id": str(i), "messages": messages}, ensure_ascii=False) + "\n")
    return str(path)


def shingles(text: str, n: int) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
    x, y = shingles(a, n), shingles(b, n)
    return len(x & y) / len(x | y)


def test_ngram_hashes_are_the_windows_of_each_text_only():
    texts = ["あいうえおかき", "abc", "", "日本語のテキスト"]
    codes, offsets = codepoints(texts)
    hashes, counts = ngram_hashes(codes, offsets, 4)
    assert counts.tolist() == [4, 0, 0, 5]  # no window straddles two texts
    want = [_poly_hash([ord(c) for c in t[i:i + 4]]) for t in texts for i in range(len(t) - 3)]
    assert hashes.tolist() == want
    # short texts get one hash of themselves when asked (a near-dedup set is never empty)
    whole, counts = ngram_hashes(codes, offsets, 4, short_whole=True)
    assert counts.tolist() == [4, 1, 1, 5]
    assert whole.tolist() == want[:4] + [_poly_hash(map(ord, "abc")), _poly_hash([])] + want[4:]
    assert len(set(want)) == len(want)  # distinct n-grams, distinct hashes
    # a lone surrogate (JSON allows "\ud800") is one code point, as len() counts it
    codes, offsets = codepoints(["x\ud800y", "z"])
    assert offsets.tolist() == [0, 3, 4] and codes[1] == 0xD800


def test_minhash_estimates_the_character_ngram_jaccard():
    cfg = NearDedupConfig()
    index = NearDuplicateIndex(cfg)
    texts = [dedup_text(conv(FUJI_Q, a), "conversation") for a in (FUJI_A, FUJI_A_EDITED, FUJI_CLIMB_A)]
    codes, offsets = codepoints(texts)
    hashes, counts = ngram_hashes(codes, offsets, cfg.ngram, short_whole=True)
    ends = np.cumsum(counts)
    m = [index.minhash(hashes[e - c:e]) for e, c in zip(ends, counts)]
    for i, j in ((0, 1), (0, 2)):
        assert m[i].jaccard(m[j]) == pytest.approx(jaccard(texts[i], texts[j]), abs=0.12)
    assert jaccard(texts[0], texts[1]) > 0.8 > jaccard(texts[0], texts[2])


def test_near_duplicates_removed_same_topic_kept(tmp_path):
    path = write_source(tmp_path / "a.jsonl", [conv(FUJI_Q, FUJI_A), conv(FUJI_Q, FUJI_A_EDITED),
                                               conv(FUJI_CLIMB_Q, FUJI_CLIMB_A), conv(TEA_Q, TEA_A)])
    src = {"name": "a", "path": path, "format": "messages", "license": "MIT"}
    out = tmp_path / "out"
    lines: list[str] = []
    steps: dict[str, float] = {}
    s = build(DataConfig(sources=[src], clean={"near_dedup": {}}), out, echo=lines.append,
              timer=steps.__setitem__)
    assert list(steps) == ["read", "clean", "near_dedup", "write"] and min(steps.values()) >= 0
    assert s["sources"]["a"]["dropped"] == {"near_duplicate": 1} and s["sources"]["a"]["kept"] == 3
    assert sorted(load_dataset_dir(out)["id"]) == ["a:0", "a:2", "a:3"]  # the first copy stays
    assert s["near_dedup"] == {"threshold": 0.8, "ngram": 5, "num_perm": 128, "removed": 1}
    assert any(line.startswith("data: near dedupe") and "removed 1 (a 1)" in line for line in lines)
    # off: both copies stay, and no near_dedup section
    s = build_dataset(DataConfig(sources=[src]), tmp_path / "off", echo=lines.append)
    assert s["sources"]["a"]["kept"] == 4 and "near_dedup" not in s
    # a strict threshold keeps the edited copy
    s = build_dataset(DataConfig(sources=[src], clean={"near_dedup": {"threshold": 0.99}}), tmp_path / "strict",
                      echo=lines.append)
    assert s["sources"]["a"]["kept"] == 4 and s["near_dedup"]["removed"] == 0


def test_recipe_order_decides_the_copy_kept_and_counts_per_source(tmp_path):
    first = write_source(tmp_path / "x.jsonl", [conv(FUJI_Q, FUJI_A), conv(TEA_Q, TEA_A)])
    second = write_source(tmp_path / "y.jsonl", [conv(FUJI_Q, FUJI_A_EDITED), conv(FUJI_CLIMB_Q, FUJI_CLIMB_A),
                                                 conv(TEA_Q, TEA_A.replace("特徴です", "特長です"))])
    x = {"name": "x", "path": first, "format": "messages", "license": "MIT"}
    y = {"name": "y", "path": second, "format": "messages", "license": "MIT"}
    for order, keeper, loser in (([x, y], "x", "y"), ([y, x], "y", "x")):
        out = tmp_path / keeper
        s = build_dataset(DataConfig(sources=order, clean={"near_dedup": {}}), out, echo=lambda _: None)
        assert s["sources"][loser]["dropped"] == {"near_duplicate": 2}
        assert "near_duplicate" not in s["sources"][keeper]["dropped"]
        assert s["near_dedup"]["removed"] == 2
        rows = load_dataset_dir(out)
        answers = {r["messages"][1]["content"]: r["source"] for r in rows}
        assert answers.get(FUJI_A if keeper == "x" else FUJI_A_EDITED) == keeper
        assert (FUJI_A_EDITED if keeper == "x" else FUJI_A) not in answers
        assert answers[FUJI_CLIMB_A] == "y"


def test_dedup_key_prompt_compares_prompts_only(tmp_path):
    # the same question asked twice with a near-identical wording, answered differently
    path = write_source(tmp_path / "p.jsonl", [conv(FUJI_CLIMB_Q + "初心者です。", FUJI_CLIMB_A),
                                               conv(FUJI_CLIMB_Q + "初心者です!", TEA_A)])
    src = {"name": "p", "path": path, "format": "messages", "license": "MIT"}
    s = build_dataset(DataConfig(sources=[src], clean={"near_dedup": {}, "dedup_key": "prompt"}),
                      tmp_path / "prompt", echo=lambda _: None)
    assert s["sources"]["p"]["dropped"] == {"near_duplicate": 1}
    s = build_dataset(DataConfig(sources=[src], clean={"near_dedup": {}}), tmp_path / "conv", echo=lambda _: None)
    assert s["sources"]["p"]["kept"] == 2
