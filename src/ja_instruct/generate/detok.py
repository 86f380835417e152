"""Decoding generated ids without a broken last character.

An answer cut by ``max_new_tokens`` can stop inside a multi-byte character: byte-level BPE
(GPT-2, Llama 3, Qwen, SmolLM2) and SentencePiece byte fallback (Llama 2, llm-jp, PLaMo)
spell a rare kanji as several byte tokens, and decoding the first of them gives U+FFFD.
`SafeDecoder` drops exactly that unfinished character. It works on the tokens' BYTES, so
a genuine U+FFFD the model wrote (a complete EF BF BD sequence) or one from invalid bytes
is kept: only a valid-but-unfinished UTF-8 sequence at the very end is removed.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte-fallback tokens
_MAX_CHAR_BYTES = 4


def _uses_byte_level(tokenizer: Any) -> bool:
    """Whether the (fast) tokenizer's decoder is, or contains, the GPT-2 ByteLevel decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    try:
        state = json.loads(decoder.__getstate__())
    except Exception:  # an exotic decoder we cannot inspect: treat its pieces as text
        return False

    def has(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        return isinstance(node, list) and any(has(v) for v in node)

    return has(state)


class SafeDecoder:
    """``decode(ids, cut)``: the tokenizer's decoding, minus an unfinished last character when ``cut``."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", None) or [])
        self.byte_of: dict[str, int] | None = None
        if _uses_byte_level(tokenizer):
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self.byte_of = {ch: b for b, ch in bytes_to_unicode().items()}

    def token_bytes(self, token_id: int) -> bytes | None:
        """The bytes a token stands for, or None when it is not made of raw bytes (a special
        token, or a SentencePiece text piece, which always holds whole characters)."""
        if token_id in self.special:
            return None
        piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
        if not isinstance(piece, str):
            return None
        if self.byte_of is not None:
            try:
                return bytes(self.byte_of[ch] for ch in piece)
            except KeyError:  # an added token written as plain text
                return None
        m = _BYTE_PIECE.match(piece)
        return bytes([int(m.group(1), 16)]) if m else None

    def unfinished(self, ids: list[int]) -> tuple[int, int, int]:
        """``(pending, k, covered)``: the unfinished character's bytes at the end of ``ids``
        (0 when it ends on a character boundary), the number of final tokens holding them,
        and how many bytes those k tokens hold."""
        tail: list[bytes] = []  # last token first
        for tid in reversed(ids):
            b = self.token_bytes(tid)
            if b is None:
                break
            tail.append(b)
            if sum(map(len, tail)) >= _MAX_CHAR_BYTES:  # enough to contain the last lead byte
                break
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        dec.decode(b"".join(reversed(tail)), final=False)
        pending = len(dec.getstate()[0])  # a valid prefix of a character, waiting for more bytes
        k = covered = 0
        for b in tail:
            if covered >= pending:
                break
            k += 1
            covered += len(b)
        return pending, k, covered

    def decode(self, ids: list[int], cut: bool) -> str:
        """Decode ``ids`` (special tokens skipped); when the answer was ``cut`` short, without the
        partial character at its end."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not cut or not text.endswith("\ufffd"):
            return text
        pending, k, covered = self.unfinished(list(ids))
        if not pending:
            return text  # a genuine U+FFFD (or the model's own invalid bytes): not ours to drop
        if covered == pending:
            # Those tokens hold nothing but the unfinished character: decode without them (byte
            # fallback turns a whole run of byte tokens into U+FFFDs when it ends unfinished).
            return self.tokenizer.decode(list(ids)[:len(ids) - k], skip_special_tokens=True)
        # One byte-level token holds complete characters and the start of the cut one: lossy
        # UTF-8 decoding made the unfinished sequence exactly one U+FFFD at the end.
        return text[:-1]
