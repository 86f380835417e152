"""Answer health metrics: Japanese share, loops, truncation, empty."""

from __future__ import annotations

import pytest

from ja_instruct.generate.health import ja_ratio, repeat_ratio, summarize, turn_health


def test_ja_ratio_counts_kana_and_kanji_over_letters():
    assert ja_ratio("日本の首都は東京です。") == 1.0
    assert ja_ratio("Tokyo です") == pytest.approx(2 / 7)  # 5 Latin letters + 2 kana
    assert ja_ratio("ﾃｽﾄ ok") == pytest.approx(3 / 5)  # half-width katakana count
    assert ja_ratio("12345 !?。") == 0.0  # no letters at all
    assert ja_ratio("") == 0.0


def test_repeat_ratio_flags_loops_not_prose():
    prose = "日本の首都は東京です。東京には多くの人が住んでいて、経済や文化の中心になっています。"
    loop = "これはループです。" * 30
    assert repeat_ratio(prose) == 0.0
    assert repeat_ratio(loop) > 0.9
    assert repeat_ratio("短い") == 0.0
    h = turn_health(loop, truncated=True, n_tokens=512)
    assert h["loop"] and h["truncated"] and not h["empty"] and h["n_tokens"] == 512
    assert not turn_health(prose)["loop"]


def test_empty_and_summary():
    h = turn_health("  \n ")
    assert h["empty"] and h["ja_ratio"] == 0.0 and not h["loop"]
    recs = [{"health": [turn_health("東京です。"), turn_health("")]},
            {"health": [turn_health("This answer is in English.", truncated=True)]},
            {"question_id": 1}]  # real FastChat answers have no health: skipped
    s = summarize(recs)
    assert s == {"turns": 3, "empty": 1, "truncated": 1, "loop": 0, "low_ja": 1, "mean_ja_ratio": 0.5}
