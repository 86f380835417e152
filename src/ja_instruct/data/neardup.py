"""Near-duplicate removal: MinHash LSH (``datasketch``) over character n-grams.

Japanese has no spaces to split words on, so a conversation's set is its character n-grams
(``clean.near_dedup.ngram`` characters) of `ja_instruct.data.clean.dedup_text`: the whole
conversation or only its prompt (``clean.dedup_key``), normalised like the exact dedupe
(NFKC, case folding, whitespace collapsed). Two conversations whose sets have an estimated
Jaccard similarity >= ``threshold`` are one: the sources are walked in recipe order, each
conversation is looked up in an LSH index of those kept so far, and a candidate is confirmed
with the MinHash estimate (`datasketch.MinHash.jaccard`) before the later copy is dropped
(``near_duplicate``). So the copy of the source listed first is kept.

Speed (100k conversations in well under a minute on two cores): hashing is the cost. The
datasketch default (SHA-1 of every shingle in Python) would take minutes, so the n-gram hashes
are computed with numpy for a whole batch of texts at once (`ngram_hashes`: a polynomial hash of
the code points, one vector pass per character of the window), and handed to datasketch as
integers (`MinHash.update_batch` with an identity ``hashfunc``), which applies its own
permutations (the "affine32" scheme: murmur finaliser, then ``a*h+b`` mod 2^32) with numpy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ja_instruct.data.clean import dedup_text
from ja_instruct.data.config import CleanConfig, NearDedupConfig
from ja_instruct.data.records import SourceStats

# odd 64-bit multiplier (the golden ratio's bits): arithmetic mod 2^64 keeps every bit in play
_BASE = np.uint64(0x9E3779B97F4A7C15)
_MASK = (1 << 64) - 1
# texts hashed per numpy pass: ~1M code points keeps the uint64 temporaries in cache-sized MBs
BATCH_CHARS = 1 << 20
# LSH weights that favour recall: every candidate is confirmed with the MinHash estimate, so a
# false candidate costs one comparison while a missed pair is a duplicate left in the data
# (128 permutations, threshold 0.8: bands 14 x 9 rows find 87% of pairs at J = 0.8, 97% at 0.85)
LSH_WEIGHTS = (0.1, 0.9)
MINHASH_SEED = 1


def codepoints(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The Unicode code points of ``texts`` concatenated (uint64) and the offsets of each text
    (``len(texts) + 1`` entries): text ``k`` is ``codes[offsets[k]:offsets[k + 1]]``."""
    joined = "".join(texts)
    # surrogatepass: JSON may carry a lone surrogate ("\ud800"); one code point each, like len()
    codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    return codes, offsets


def _poly_hash(codes) -> int:
    """The polynomial hash of one whole code sequence (what `ngram_hashes` gives its windows)."""
    h, base = 0, int(_BASE)
    for c in codes:
        h = (h * base + int(c)) & _MASK
    return h


def ngram_hashes(codes: np.ndarray, offsets: np.ndarray, n: int,
                 short_whole: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every character n-gram of each text (see `codepoints`), without the
    windows that straddle two texts.

    Returns ``(hashes, counts)``: text ``k``'s hashes are the ``counts[k]`` entries after the
    ``sum(counts[:k])`` first ones, in text order. A text shorter than ``n`` has no n-gram; with
    ``short_whole`` it gets one hash, of the whole text (so it still has a non-empty set)."""
    lengths = np.diff(offsets)
    counts = np.maximum(lengths - n + 1, 0)
    m = len(codes) - n + 1
    if m > 0:
        h = codes[:m].copy()
        for j in range(1, n):  # Horner: h = sum_j c[i+j] * B^(n-1-j) mod 2^64
            h *= _BASE
            h += codes[j:j + m]
        first = np.cumsum(counts) - counts
        pos = np.repeat(offsets[:-1] - first, counts) + np.arange(int(counts.sum()))
        windows = h[pos]
    else:
        windows = np.zeros(0, dtype=np.uint64)
    if short_whole and (lengths < n).any():
        parts, out_counts = [], counts.copy()
        ends = np.cumsum(counts)
        for k in np.flatnonzero(lengths < n):
            parts.append((ends[k], _poly_hash(codes[offsets[k]:offsets[k + 1]])))
            out_counts[k] = 1
        windows = np.insert(windows, [p for p, _ in parts], np.array([v for _, v in parts], dtype=np.uint64))
        counts = out_counts
    return windows, counts


def text_batches(items: list, texts_of, limit: int = BATCH_CHARS) -> Iterator[tuple[list, list[str]]]:
    """``items`` in runs of about ``limit`` characters of text, with their texts."""
    run, texts, size = [], [], 0
    for item in items:
        t = texts_of(item)
        run.append(item)
        texts.append(t)
        size += len(t)
        if size >= limit:
            yield run, texts
            run, texts, size = [], [], 0
    if run:
        yield run, texts


def _identity(x: int) -> int:
    return x


class NearDuplicateIndex:
    """The conversations kept so far, as an LSH index of their MinHashes; `add` says whether a
    new conversation is a near duplicate of one of them (and keeps it when it is not)."""

    def __init__(self, cfg: NearDedupConfig) -> None:
        from datasketch import MinHash, MinHashLSH

        self.cfg = cfg
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=LSH_WEIGHTS)
        # copies share the permutations: making one per conversation costs no RNG
        self.empty = MinHash(num_perm=cfg.num_perm, seed=MINHASH_SEED, hashfunc=int)
        self.kept: list = []

    def minhash(self, hashes: np.ndarray):
        """The MinHash of one set of n-gram hashes (64-bit; their top 32 bits are hashed in)."""
        m = self.empty.copy()
        m.update_batch((hashes >> np.uint64(32)).tolist())
        return m

    def add(self, m) -> bool:
        """True when ``m`` is a near duplicate of a kept set; otherwise keep it and return False."""
        for key in self.lsh.query(m):
            if m.jaccard(self.kept[key]) >= self.cfg.threshold:
                return True
        self.lsh.insert(len(self.kept), m, check_duplication=False)
        self.kept.append(m)
        return False


def near_dedup(sources: list[tuple[str, list[dict]]], cfg: NearDedupConfig, key: str,
               stats: dict[str, SourceStats]) -> tuple[list[list[dict]], Counter]:
    """Drop near duplicates across ``sources`` (``(source name, cleaned examples)`` in recipe
    order): a conversation is dropped when one kept before it (same or earlier source) is as
    similar as ``cfg.threshold``. ``key`` is ``clean.dedup_key`` (``conversation``/``prompt``).

    Returns each source's kept examples (same order as ``sources``) and the removed count per
    source; the removals are counted in ``stats`` (``near_duplicate``, ``kept`` lowered)."""
    index = NearDuplicateIndex(cfg)
    flat = [(si, ex) for si, (_, examples) in enumerate(sources) for ex in examples]
    keep = [[] for _ in sources]
    removed: Counter = Counter()
    for run, texts in text_batches(flat, lambda item: dedup_text(item[1]["messages"], key)):
        codes, offsets = codepoints(texts)
        hashes, counts = ngram_hashes(codes, offsets, cfg.ngram, short_whole=True)
        ends = np.cumsum(counts)
        for (si, ex), end, count in zip(run, ends.tolist(), counts.tolist()):
            if index.add(index.minhash(hashes[end - count:end])):
                removed[sources[si][0]] += 1
            else:
                keep[si].append(ex)
    for name, n in removed.items():
        stats[name].drop("near_duplicate", n)
        stats[name].kept -= n
    return keep, removed


def run_near_dedup(clean: CleanConfig, cleaned: list[tuple[Any, list[dict]]], stats: dict[str, SourceStats],
                   echo: Callable[[str], Any]) -> tuple[list[tuple[Any, list[dict]]], dict]:
    """The build's step: `near_dedup` over ``cleaned`` (``(SourceConfig, examples)`` in recipe
    order) with ``clean.near_dedup``; prints its line. Returns the pairs with the kept examples
    and ``stats["near_dedup"]``."""
    cfg = clean.near_dedup
    kept, removed = near_dedup([(src.name, exs) for src, exs in cleaned], cfg, clean.dedup_key, stats)
    echo(summary_line(cfg, removed))
    return [(src, exs) for (src, _), exs in zip(cleaned, kept)], near_dedup_stats(cfg, removed)


def near_dedup_stats(cfg: NearDedupConfig, removed: Counter) -> dict:
    """``stats["near_dedup"]`` of a build."""
    return {"threshold": cfg.threshold, "ngram": cfg.ngram, "num_perm": cfg.num_perm,
            "removed": sum(removed.values())}


def summary_line(cfg: NearDedupConfig, removed: Counter) -> str:
    """The one line the build prints for this step."""
    per = ", ".join(f"{name} {n}" for name, n in removed.items())
    return (f"data: near dedupe (MinHash LSH, {cfg.ngram}-character shingles, Jaccard >= {cfg.threshold}, "
            f"{cfg.num_perm} permutations): removed {sum(removed.values())}" + (f" ({per})" if per else ""))
