"""Parsers over every output format: FastChat [[rating]], JA MT-Bench [[評価]], [[A]]/[[B]]/[[C]], Rakuda 1/2/3."""

from __future__ import annotations

import pytest

from ja_instruct.judge.parse import parse_judgment, parse_rating, parse_verdict, parse_verdict123, unswap


@pytest.mark.parametrize("text,score", [
    ("The answer is fine.\nRating: [[7]]", 7.0),
    ("説明……\n評価：[[5]]", 5.0),
    ("評価：［［８］］", 8.0),  # full-width brackets and digit
    ("Rating: [[8.5]]", 8.5),
    ("形式は \"[[評価]]\"、例えば \"評価：[[5]]\" に従います。本回答は良い。評価：[[9]]", 9.0),  # last wins
    ("Rating: [6]", 6.0),  # FastChat's single-bracket fallback
    ("[[10]]", 10.0),
    ("no score here", None),
    ("評価：[[11]]", None),  # out of range is not a score
    ("評価：[[0]]", None),
    ("", None),
])
def test_parse_rating(text, score):
    assert parse_rating(text) == score


@pytest.mark.parametrize("text,verdict", [
    ("A is better. [[A]]", "A"),
    ("[[B]]", "B"),
    ("互角です。[[C]]", "tie"),
    ("Format: [[A]] or [[B]] or [[C]]. My verdict: [[B]]", "B"),
    ("判定：［［Ａ］］", "A"),
    ("I prefer A", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("text,verdict", [
    ("アシスタント1の方が詳しい。\n1", "A"),
    ("説明\n\n2\n", "B"),
    ("どちらとも言えない。\n３", "tie"),
    ("理由...\n12", None),
    ("1と2を比べました", None),
    ("", None),
])
def test_parse_verdict123(text, verdict):
    assert parse_verdict123(text) == verdict


def test_dispatch_and_unswap():
    assert parse_judgment("rating", "評価：[[3]]") == (3.0, None)
    assert parse_judgment("verdict", "[[A]]") == (None, "A")
    assert parse_judgment("verdict123", "x\n2") == (None, "B")
    with pytest.raises(ValueError):
        parse_judgment("nope", "")
    assert [unswap(v) for v in ("A", "B", "tie", None)] == ["B", "A", "tie", None]
