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
* ``language``: `language_label` of the turn (its reasoning, `DEFAULT_THINK_PATTERN`, left out):
  ``ok`` / ``mixed`` / ``not-japanese``. Answers written before it existed lack the key: a
  reader computes it from the text.

With ``generate.samples`` > 1 each choice of an answer record carries its own ``health``
list and the record's ``health`` is choice 0's (`choice_health`).

The language guard and reasoning models (one implementation for generate, judge and report):

* `language_label`: the share of Japanese characters among the letters of what remains
  once fenced code blocks, inline code, TeX, URLs and code / data / maths lines without
  Japanese are removed (`prose_text`); see its docstring for the thresholds.
* `strip_reasoning`: remove a reasoning model's hidden reasoning (``<think>...</think>``)
  before an answer is judged, and say whether it was there, absent or never closed.
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


# --------------------------------------------------------------------------- language guard

LANGUAGE_LABELS = ("ok", "mixed", "not-japanese")
#: `language_label` thresholds on the Japanese share of the prose letters (see its docstring).
LANGUAGE_OK = 0.5
LANGUAGE_NOT_JAPANESE = 0.1

_FENCED = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_TEX = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\\begin\{(\w+\*?)\}.*?\\end\{\1\}|"
                  r"(?<![\w$\\])\$[^$\n]+?\$(?![\w$])", re.DOTALL)
_URL = re.compile(r"https?://\S+|www\.\S+")
_TAG = re.compile(r"</?[A-Za-z][^<>\n]*>")  # HTML/XML markup (answers that write a web page)
# A JSON/YAML key at the start of a line (`"country": "デンマーク"`, `- capital: パリ`): data.
_KEY = re.compile(r"^(\s*(?:[-*]\s+)?)[\"']?[A-Za-z_][\w-]*[\"']?\s*:(?=\s|$)", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z]{2,}")
_SENTENCE = re.compile(r"\b[A-Za-z][a-z']*(?: [A-Za-z][a-z']*){3}\b")
# A line of code or data: a statement keyword first, a JSON/YAML key, markup, braces or a
# semicolon at the end, or an assignment.
_CODE_LINE = re.compile(
    r"^\s*(?:(?:def|class|import|from|return|if|for|while|elif|else|try|except|with|print|public|private|"
    r"static|void|int|var|let|const|function|package|#include|#define|SELECT|INSERT)\b|[{}\[\]<@]|"
    r"[\"'][^\"']*[\"']\s*:|[\w.\[\]\"']+\s*[-+*/%|&]?=[^=])|[{};\[(,]\s*$|^\s*[)\]}]")
_INDENTED = re.compile(r"^(?:\t| {2,})(?![-*•]|\d+[.)] )\S")


def _prose_line(line: str) -> bool:
    """Whether a line without Japanese is natural-language prose (not code, data or maths)."""
    body = "".join(line.split())
    if not body:
        return False
    if _INDENTED.match(line) or _CODE_LINE.search(line):
        return False
    if _SENTENCE.search(line):  # four words in a row: a sentence, even around a formula
        return True
    words = _WORD.findall(line)
    # Maths and data: fewer than three words of two or more letters (`x - y = z`, `f(2) = 6`,
    # `[5, 1, 3]`), or words under 60% of the line (`sin(pi*x) - sqrt(7)`: 0.53; English
    # prose: 0.8-0.9 on the real answers).
    return len(words) >= 3 and sum(map(len, words)) >= 0.6 * len(body)


def prose_text(text: str) -> str:
    """``text`` without what the language guard does not judge: fenced code blocks (```` ``` ````,
    ``~~~``; an unclosed fence runs to the end), inline code, TeX (``$..$``, ``$$..$$``,
    ``\\(..\\)``, ``\\[..\\]``, ``\\begin{env}..\\end{env}``), URLs, HTML tags, JSON/YAML keys
    at the start of a line, and every line without a Japanese character that looks like code,
    data or maths (`_prose_line`)."""
    for pattern in (_FENCED, _INLINE_CODE, _TEX, _URL, _TAG):
        text = pattern.sub(" ", text)
    text = _KEY.sub(r"\1", text)
    keep = [line for line in text.splitlines() if any(is_japanese_char(c) for c in line) or _prose_line(line)]
    return "\n".join(keep)


def language_label(text: str) -> str:
    """``"ok"``, ``"mixed"`` or ``"not-japanese"``: whether an answer is written in Japanese.

    The share r = Japanese characters / letters (`ja_ratio`) of the answer's prose
    (`prose_text`: code, formulas and data left out) decides:

    * no letters left (a code-only, maths-only, data-only or empty answer): ``ok``;
    * r >= `LANGUAGE_OK` (0.5): ``ok``;
    * r < `LANGUAGE_NOT_JAPANESE` (0.1): ``not-japanese`` (no Japanese at all, or a stray word);
    * otherwise ``mixed``.

    Why these: one Japanese character carries about as much as two or three Latin letters,
    so Japanese prose with a few English technical terms (``Boyer-Moore投票アルゴリズム``) stays
    above 0.5, while an answer that is half English by content lands near 0.3. A short sentence
    dense with English terms (``Pythonのlist comprehensionはfor文より高速です。``) can come out
    ``mixed``: shown, never capped. Fewer than 3 words of English with no Japanese pass as ``ok``
    (too little text to judge a language).
    Measured on the 1,480 real answer turns in ``../shared/data`` (Rakuda: 15 models;
    JA MT-Bench: 9 models): the shares are bimodal, 1,390 turns >= 0.5 (lowest 0.54), 42
    under 0.1 (highest 0.098), 2 between (0.38, 0.39: an English list or product names in
    Japanese sentences), 21 without prose letters (code, JSON, formulas, one empty answer).
    The 42 are exactly the English answers (two base models that often answer in English,
    three of StableBeluga 2's); every answer of GPT-4, GPT-4o, Claude 2 and the Japanese
    models is ``ok``.
    """
    prose = prose_text(text)
    if not any(ch.isalpha() for ch in prose):
        return "ok"
    r = ja_ratio(prose)
    return "ok" if r >= LANGUAGE_OK else "not-japanese" if r < LANGUAGE_NOT_JAPANESE else "mixed"


# --------------------------------------------------------------------------- reasoning

#: The hidden reasoning of DeepSeek-R1, Qwen3 and most open reasoning models (the judge's
#: default `judge.think_pattern`); the answer files' ``language`` leaves it out.
DEFAULT_THINK_PATTERN = r"<think>.*?</think>"

_REGEX_SPECIAL = set(".^$*+?{}[]|()")


def opening_tag(pattern: str) -> str:
    """The literal text a reasoning pattern starts with (``<think>`` for ``<think>.*?</think>``,
    ``[THINK]`` for ``\\[THINK\\].*?...``), or ``<think>`` when it starts with no literal text."""
    out: list[str] = []
    flags = re.match(r"\(\?[aiLmsux]+\)", pattern)  # a leading inline flag group, e.g. (?s)
    i = flags.end() if flags else 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            out.append(pattern[i + 1])  # an escaped special character is literal
            i += 2
            continue
        if ch in _REGEX_SPECIAL or ch == "\\":
            break
        out.append(ch)
        i += 1
    if out and i < len(pattern) and pattern[i] in "*?{":  # `ab*`: the last character is optional
        out.pop()
    return "".join(out).strip() or "<think>"


def strip_reasoning(text: str, pattern: str | None = DEFAULT_THINK_PATTERN) -> tuple[str, str]:
    """``(text to judge, "none" | "stripped" | "unclosed")`` for one answer turn.

    Every match of ``pattern`` (a regular expression, DOTALL) is removed -> ``"stripped"``.
    An answer that holds the closing part but not the opening (chat templates that put
    ``<think>`` at the end of the prompt, as DeepSeek-R1's does) counts as opened at its start.
    When the opening tag (`opening_tag`) is still there after that, the reasoning never
    closed (the model ran out of tokens thinking): the text comes back unchanged ->
    ``"unclosed"``. ``pattern`` None or no reasoning: ``(text, "none")``.
    """
    if not pattern:
        return text, "none"
    rx = re.compile(pattern, re.DOTALL)
    opening = opening_tag(pattern)
    stripped = rx.sub("", text)
    if stripped == text and opening not in text:
        m = rx.match(opening + text)  # opened by the prompt
        if m and m.end() > len(opening):
            stripped = text[m.end() - len(opening):]
    if opening in stripped:
        return text, "unclosed"
    if stripped == text:
        return text, "none"
    return stripped.strip(), "stripped"


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
        "language": language_label(strip_reasoning(text)[0]),
    }


def choice_health(record: dict, index: int = 0) -> list[dict]:
    """The health list of choice ``index`` of an answer record: the choice's own ``health``
    (written when ``generate.samples`` > 1), else the record's (choice 0); [] when absent."""
    choices = record.get("choices") or []
    if 0 <= index < len(choices) and isinstance(choices[index], dict) and "health" in choices[index]:
        return choices[index]["health"] or []
    return (record.get("health") or []) if index == 0 else []


def _all_health(record: dict) -> list[dict]:
    """Every turn's health of every sample of ``record``."""
    choices = record.get("choices") or []
    if any(isinstance(c, dict) and "health" in c for c in choices):
        return [h for k in range(len(choices)) for h in choice_health(record, k)]
    return record.get("health") or []


def language_counts(records: Iterable[dict]) -> dict[str, int]:
    """``{"ok": n, "mixed": n, "not-japanese": n}`` over every turn of every sample; a turn whose
    health lacks ``language`` (older answers) or that has no health is labelled from its text."""
    counts = dict.fromkeys(LANGUAGE_LABELS, 0)
    for rec in records:
        for k, choice in enumerate(rec.get("choices") or []):
            health = choice_health(rec, k)
            for t, text in enumerate(choice.get("turns") or [] if isinstance(choice, dict) else []):
                label = health[t].get("language") if t < len(health) else None
                counts[label if label in counts else language_label(strip_reasoning(text)[0])] += 1
    return counts


def summarize(records: Iterable[dict]) -> dict:
    """Counts over answer records' health (every sample's): turns, empty, truncated, loop, low
    Japanese share (non-empty turns under `LOW_JA_THRESHOLD`), and the mean ja_ratio of the
    non-empty turns."""
    turns = empty = truncated = loop = low_ja = 0
    ja_sum, ja_n = 0.0, 0
    for rec in records:
        for h in _all_health(rec):
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
