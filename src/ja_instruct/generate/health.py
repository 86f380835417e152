"""Answer health: cheap checks that flag broken generations before anyone pays a judge.

Per answer turn (stored in the answer record's ``health`` list, one dict per turn):

* ``ja_ratio``: share of Japanese characters (hiragana, katakana, kanji) among the letters
  (``str.isalpha``: kana, kanji, Latin, ...); digits, spaces and punctuation do not count.
  A Japanese model that drifts into English scores low. 0.0 when there are no letters.
* ``repeat_ratio``: share of character n-grams (n = `NGRAM`, whitespace squeezed) that repeat
  an earlier n-gram: ~0 for normal prose, close to 1 for a model stuck in a loop.
* ``loop``: ``repeat_ratio >= LOOP_THRESHOLD``.
* ``truncated``: generation stopped at ``max_new_tokens`` instead of ending by itself.
* ``empty``: nothing but whitespace.
* ``n_tokens``: generated tokens (as the backend counted them; None if unknown).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NGRAM = 10
LOOP_THRESHOLD = 0.5
LOW_JA_THRESHOLD = 0.5

_WS = re.compile(r"\s+")


def is_japanese_char(ch: str) -> bool:
    """Hiragana, katakana (full and half width, phonetic extensions) or CJK ideograph (kanji, 々〆ヶ)."""
    o = ord(ch)
    return (
        0x3040 <= o <= 0x309F  # hiragana
        or 0x30A0 <= o <= 0x30FF  # katakana (incl. ー)
        or 0x31F0 <= o <= 0x31FF  # katakana phonetic extensions
        or 0xFF66 <= o <= 0xFF9F  # half-width katakana
        or 0x4E00 <= o <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= o <= 0x4DBF  # extension A
        or 0xF900 <= o <= 0xFAFF  # compatibility ideographs
        or 0x20000 <= o <= 0x2FA1F  # extensions B+ and compatibility supplement
        or ch in "々〆ヶ"
    )


def ja_ratio(text: str) -> float:
    """Japanese characters / letters (see module doc); 0.0 for text without letters."""
    letters = ja = 0
    for ch in text:
        if is_japanese_char(ch):
            ja += 1
            letters += 1
        elif ch.isalpha():
            letters += 1
    return ja / letters if letters else 0.0


def repeat_ratio(text: str, n: int = NGRAM) -> float:
    """Share of character n-grams that already occurred earlier in the text (0 = no repetition)."""
    s = _WS.sub(" ", text.strip())
    total = len(s) - n + 1
    if total <= 1:
        return 0.0
    seen: set[str] = set()
    repeats = 0
    for i in range(total):
        g = s[i:i + n]
        if g in seen:
            repeats += 1
        else:
            seen.add(g)
    return repeats / total


def turn_health(text: str, *, truncated: bool = False, n_tokens: int | None = None) -> dict:
    """The health dict of one answer turn (keys: see module doc)."""
    rr = repeat_ratio(text)
    return {
        "ja_ratio": round(ja_ratio(text), 4),
        "repeat_ratio": round(rr, 4),
        "loop": rr >= LOOP_THRESHOLD,
        "truncated": bool(truncated),
        "empty": not text.strip(),
        "n_tokens": n_tokens,
    }


def summarize(records: Iterable[dict]) -> dict:
    """Counts over answer records' health: turns, empty, truncated, loop, low Japanese share (non-empty
    turns under `LOW_JA_THRESHOLD`), and the mean ja_ratio of the non-empty turns."""
    turns = empty = truncated = loop = low_ja = 0
    ja_sum, ja_n = 0.0, 0
    for rec in records:
        for h in rec.get("health") or []:
            turns += 1
            empty += bool(h.get("empty"))
            truncated += bool(h.get("truncated"))
            loop += bool(h.get("loop"))
            low_ja += (h.get("ja_ratio") or 0.0) < LOW_JA_THRESHOLD and not h.get("empty")
            if not h.get("empty"):  # an empty turn is counted as empty, not as "not Japanese"
                ja_sum += h.get("ja_ratio") or 0.0
                ja_n += 1
    return {
        "turns": turns,
        "empty": empty,
        "truncated": truncated,
        "loop": loop,
        "low_ja": low_ja,
        "mean_ja_ratio": round(ja_sum / ja_n, 4) if ja_n else None,
    }
