"""Cleaning: whitespace, empty / length filters and de-duplication across sources.

(Near-duplicates are removed afterwards, across all cleaned sources, by
`ja_instruct.data.neardup`; it compares `dedup_text`.)

De-duplication keys are hashes of the conversation (or of its prompt only):
``exact`` hashes the texts as they are; ``normalized`` hashes them after NFKC
(full-width ASCII -> ASCII, half-width kana -> full-width), case folding and
whitespace collapsing, so that the same instruction scraped twice with
different spacing or width counts as one. Alpaca's ``input`` turn is folded
into the preceding user turn for the key, so the same example in ``alpaca``
and in ``messages`` form is recognised as a duplicate too.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from ja_instruct.data.config import CleanConfig
from ja_instruct.data.records import SourceStats

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC + case folding + whitespace collapsed to single spaces, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def dedup_key(messages: list[dict], mode: str, key: str) -> bytes:
    """A 16-byte hash identifying a conversation (``key="conversation"``) or its prompt."""
    parts: list[list[str]] = []  # [role, text] with input merged into the user turn before it
    for m in messages:
        role = "user" if m["role"] == "input" else m["role"]
        if key == "prompt" and role == "assistant":
            continue
        text = normalize_text(m["content"]) if mode == "normalized" else m["content"]
        if parts and parts[-1][0] == role and m["role"] == "input":
            parts[-1][1] += ("\n\n" if mode == "exact" else " ") + text
        else:
            parts.append([role, text])
    h = hashlib.blake2b(digest_size=16)
    for role, text in parts:
        h.update(role.encode() + b"\x1e" + text.encode("utf-8") + b"\x1f")
    return h.digest()


def dedup_text(messages: list[dict], key: str) -> str:
    """The text near-duplicate removal compares: the turns (``key="prompt"``: all but the
    assistant's) joined and normalised like `normalize_text`. Turn boundaries become spaces, so
    Alpaca's separate ``input`` turn and the same text merged into the user turn are one text."""
    return normalize_text("\n".join(m["content"] for m in messages
                                     if key != "prompt" or m["role"] != "assistant"))


class Cleaner:
    """Applies `CleanConfig` to the sources in order; remembers keys across sources."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.seen: set[bytes] = set()

    def clean(self, examples: list[dict], stats: SourceStats) -> list[dict]:
        """The examples that pass every filter; the others are counted in ``stats.dropped``."""
        cfg, out = self.cfg, []
        for ex in examples:
            messages = ex["messages"]
            if cfg.strip:
                messages = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
            if any(not m["content"].strip() for m in messages):
                stats.drop("empty")
                continue
            response_chars = sum(len(m["content"]) for m in messages if m["role"] == "assistant")
            if response_chars < cfg.min_chars:
                stats.drop("too_short")
                continue
            if cfg.max_chars is not None and sum(len(m["content"]) for m in messages) > cfg.max_chars:
                stats.drop("too_long")
                continue
            if cfg.max_turns is not None and sum(m["role"] == "assistant" for m in messages) > cfg.max_turns:
                stats.drop("too_many_turns")
                continue
            if cfg.dedup != "none":
                key = dedup_key(messages, cfg.dedup, cfg.dedup_key)
                if key in self.seen:
                    stats.drop("duplicate")
                    continue
                self.seen.add(key)
            out.append({"id": ex["id"], "messages": messages})
        stats.kept = len(out)
        return out
