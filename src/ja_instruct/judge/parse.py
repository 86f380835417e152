"""Parse a judge's text into a score on the prompt's scale (1-10, or ELYZA's 1-5) or an A/B/tie verdict.

Supported output formats (the prompt file says which one it asks for):

* ``rating``: a number in double brackets, as FastChat's ``[[rating]]`` (``Rating: [[5]]``)
  and the Japanese MT-Bench's ``[[評価]]`` (``評価：[[5]]``). A single bracket (``[5]``) is
  accepted as a fallback, as FastChat does. Full-width characters (``［［５］］``) are
  normalised first (NFKC). When the text holds several bracketed numbers, the LAST one
  wins: judges often quote the prompt's example (``[[5]]``) before their own verdict.
  A number outside the prompt's scale (``scale``, default 1-10; ELYZA-tasks' 1-5) is a
  parse error, not a score: a 7 from a judge asked for 1-5 has not followed the rubric.
* ``verdict``: ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (C = tie); the last one in the text wins.
* ``verdict123``: Rakuda's ``pair-ja``: ``1`` / ``2`` / ``3`` (3 = tie) on the last
  non-empty line.

Every parser returns ``None`` when it cannot find a value: the caller retries and
finally stores the judgment with ``status: parse_error``; nothing is ever guessed.
"""

from __future__ import annotations

import re
import unicodedata

OUTPUT_FORMATS = ("rating", "verdict", "verdict123")

_DOUBLE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SINGLE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_VERDICT_MAP = {"A": "A", "B": "B", "C": "tie"}


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text or "")


def parse_rating(text: str, lo: float = 1.0, hi: float = 10.0) -> float | None:
    """The score in ``text`` (``[[7]]``, ``評価：[[7]]``, ``Rating: [[7.5]]``), or None."""
    t = _norm(text)
    found = _DOUBLE.findall(t) or _SINGLE.findall(t)
    if not found:
        return None
    value = float(found[-1])
    return value if lo <= value <= hi else None


def parse_verdict(text: str) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (last wins), or None."""
    found = _VERDICT.findall(_norm(text))
    return _VERDICT_MAP[found[-1]] if found else None


def parse_verdict123(text: str) -> str | None:
    """Rakuda's verdict: the last non-empty line holds exactly one of 1 / 2 / 3."""
    lines = [ln.strip() for ln in _norm(text).splitlines() if ln.strip()]
    if not lines:
        return None
    digits = set(re.findall(r"(?<!\d)([123])(?!\d)", lines[-1]))
    if len(digits) != 1 or re.search(r"\d", re.sub(r"(?<!\d)[123](?!\d)", "", lines[-1])):
        return None
    return {"1": "A", "2": "B", "3": "tie"}[digits.pop()]


def parse_judgment(output_format: str, text: str,
                   scale: tuple[int, int] = (1, 10)) -> tuple[float | None, str | None]:
    """(score, verdict) for ``text`` under ``output_format``; the unused one is None. A rating
    outside ``scale`` (lowest, highest) is None."""
    if output_format == "rating":
        return parse_rating(text, float(scale[0]), float(scale[1])), None
    if output_format == "verdict":
        return None, parse_verdict(text)
    if output_format == "verdict123":
        return None, parse_verdict123(text)
    raise ValueError(f"unknown output format {output_format!r}; known: {OUTPUT_FORMATS}")


def unswap(verdict: str | None) -> str | None:
    """Map a verdict about the shown order back after the answers were shown swapped."""
    return {"A": "B", "B": "A"}.get(verdict, verdict) if verdict is not None else None
