"""Benchmark contamination check: which training (and held-out) examples contain a benchmark question.

Each configured question set (``data.contamination.benchmarks``) is read with
`ja_instruct.generate.questions.load_questions`, the loader the generate and judge stages use,
so Rakuda, Japanese MT-Bench, ELYZA-tasks-100 style files, hub ids and ``embedded:`` sets all
work and agree on question ids.

Texts are compared as character n-grams (Japanese has no spaces to split words on) after the
normalisation of the exact dedupe (`ja_instruct.data.clean.normalize_text`: NFKC, case folding)
with every whitespace, punctuation and control character removed, so re-punctuating or
re-spacing a question does not hide it. An example contains a question when at least
``min_overlap`` of the distinct n-grams of one of the question's turns occur in the example's
text (every turn, prompt and answer). A turn shorter than n characters has no n-gram and is
not checked (it cannot be told from an ordinary phrase). docs/data.md measures the choice of n.

Speed: the benchmark n-grams are few (hundreds of questions), so they are indexed and the
examples are streamed past them in batches: the n-gram hashes of a batch are computed with numpy
(`ja_instruct.data.neardup.ngram_hashes`), a 2^24-bit table of the benchmark hashes rejects
almost every window in one vector lookup, and only the examples with a surviving window are
scored exactly (in hash space: a 64-bit hash collision is the only error).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ja_instruct.config import EMBEDDED_PREFIX, resolve_path
from ja_instruct.data.clean import dedup_text, normalize_text
from ja_instruct.data.config import ContaminationConfig
from ja_instruct.data.neardup import text_batches, codepoints, ngram_hashes
from ja_instruct.data.records import SourceStats
from ja_instruct.errors import UserError
from ja_instruct.io import stable_hash
from ja_instruct.manifest import file_fingerprint

MATCHED_CHARS = 200
_TABLE_BITS = 24


@dataclass
class BenchmarkSet:
    """One configured question set: its stats label, its recipe spec and its questions."""

    label: str
    spec: str
    questions: list  # list[ja_instruct.generate.questions.Question]


@dataclass
class Hit:
    """One (benchmark question, example) pair where the example contains the question."""

    benchmark: str
    question_id: str
    source: str
    id: str
    group: str
    overlap: float
    matched: str
    uid: int  # which example: ids may repeat within a source, so never matched by id
    dropped: bool = False
    split: str = "train"  # where the example ended: train | heldout | removed (`mark_splits`)

    def as_dict(self) -> dict:
        """The record of ``stats["contamination"]["hits"]``."""
        return {"benchmark": self.benchmark, "question_id": self.question_id, "source": self.source,
                "id": self.id, "split": self.split, "overlap": round(self.overlap, 4), "matched": self.matched,
                "dropped": self.dropped}


def benchmark_labels(specs: list[str]) -> list[str]:
    """Short readable names of the sets: ``rakuda`` (``.../rakuda/questions.jsonl``), ``ja_mt_bench``
    (``.../ja_mt_bench/question.jsonl``), ``embedded:questions_ja``, the file stem (or the hub
    id's name) otherwise; a repeated name gets ``-2``, ``-3``..."""
    labels: list[str] = []
    for spec in specs:
        p = Path(spec[len(EMBEDDED_PREFIX):] if spec.startswith(EMBEDDED_PREFIX) else spec)
        if spec.startswith(EMBEDDED_PREFIX):
            label = f"embedded:{p.stem}"
        elif p.stem in ("question", "questions") and p.parent.name not in ("", ".", ".."):
            label = p.parent.name
        else:
            label = p.stem or spec
        base, k = label, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


def _field(i: int) -> str:
    return f"data.contamination.benchmarks[{i}]"


def _local(spec: str, i: int) -> Path | None:
    """The local file or folder of a spec, None for a hub id; a path that is missing is an error."""
    from ja_instruct.config import looks_local

    path = resolve_path(spec)
    if path.exists():
        return path
    if looks_local(spec):
        raise UserError("benchmark question set not found", file=path, field=_field(i),
                        hint="Give a FastChat question JSONL (Rakuda, Japanese MT-Bench), a question set "
                             "file or folder, an HF hub id, or embedded:questions_ja.jsonl.")
    return None


def _load(spec: str, i: int) -> list:
    from ja_instruct.generate.questions import load_questions

    try:
        return load_questions(spec)
    except UserError as err:  # the loader names generate.questions; here it is this recipe key
        err.field = _field(i)
        raise


def benchmark_inputs(cfg: ContaminationConfig) -> dict[str, str]:
    """The manifest inputs ``benchmark:<label>`` -> content fingerprint of each question set (its
    file(s), or for a hub id the questions read), so editing a benchmark re-runs the check."""
    out = {}
    for i, (spec, label) in enumerate(zip(cfg.benchmarks, benchmark_labels(cfg.benchmarks))):
        path = _local(spec, i)
        out[f"benchmark:{label}"] = (file_fingerprint(path) if path is not None else
                                     stable_hash([[q.key, q.turns] for q in _load(spec, i)]))
    return out


def load_benchmarks(cfg: ContaminationConfig) -> list[BenchmarkSet]:
    """Every configured question set, loaded (a bad one is a `UserError` naming
    ``data.contamination.benchmarks[i]``)."""
    sets = []
    for i, (spec, label) in enumerate(zip(cfg.benchmarks, benchmark_labels(cfg.benchmarks))):
        _local(spec, i)
        sets.append(BenchmarkSet(label=label, spec=spec, questions=_load(spec, i)))
    return sets


@lru_cache(maxsize=1)
def _dropped_chars() -> np.ndarray:
    """Code point -> True for whitespace (Z*), punctuation (P*) and control/format (C*) characters."""
    table = np.zeros(0x110000, dtype=bool)
    table[[cp for cp in range(0x110000) if unicodedata.category(chr(cp))[0] in "ZPC"]] = True
    return table


def comparable(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`codepoints` of ``texts`` (already `normalize_text`-ed) without whitespace, punctuation and
    control characters: ``(codes, offsets)``."""
    codes, offsets = codepoints(texts)
    keep = ~_dropped_chars()[codes.astype(np.int64)]
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return codes[keep], kept_before[offsets]


def comparable_text(text: str) -> str:
    """What the check compares of one text (for tests and the docs' measurement)."""
    codes, _ = comparable([normalize_text(text)])
    return codes.astype(np.uint32).tobytes().decode("utf-32-le", "surrogatepass")


class QuestionIndex:
    """The distinct n-gram hashes of every benchmark question turn, for `find_hits`."""

    def __init__(self, benchmarks: list[BenchmarkSet], n: int) -> None:
        self.n = n
        self.turns: list[tuple[int, object, str, int]] = []  # (set index, question, turn text, #n-grams)
        self.gram_turns: dict[int, list[int]] = {}
        texts, owners = [], []
        for b, bench in enumerate(benchmarks):
            for q in bench.questions:
                for turn in q.turns:
                    texts.append(normalize_text(turn))
                    owners.append((b, q, turn))
        codes, offsets = comparable(texts)
        hashes, counts = ngram_hashes(codes, offsets, n)
        end = 0
        for owner, count in zip(owners, counts.tolist()):
            grams = np.unique(hashes[end:end + count])
            end += count
            if not len(grams):
                continue  # shorter than n: not checked (module doc)
            t = len(self.turns)
            self.turns.append((*owner, len(grams)))
            for g in grams.tolist():
                self.gram_turns.setdefault(g, []).append(t)
        self.sorted = np.array(sorted(self.gram_turns), dtype=np.uint64)
        self.table = np.zeros(1 << _TABLE_BITS, dtype=bool)
        self.table[(self.sorted & np.uint64((1 << _TABLE_BITS) - 1)).astype(np.int64)] = True

    def overlaps(self, hashes: np.ndarray) -> dict[int, float]:
        """Turn index -> share of its n-grams among ``hashes`` (one example's), for touched turns."""
        found: Counter = Counter()
        for g in np.unique(hashes).tolist():
            found.update(self.gram_turns.get(g, ()))
        return {t: k / self.turns[t][3] for t, k in found.items()}

    def candidates(self, hashes: np.ndarray) -> np.ndarray:
        """Mask of the windows whose hash is a benchmark n-gram hash."""
        maybe = self.table[(hashes & np.uint64((1 << _TABLE_BITS) - 1)).astype(np.int64)]
        idx = np.flatnonzero(maybe)
        if len(idx) and len(self.sorted):
            pos = np.minimum(np.searchsorted(self.sorted, hashes[idx]), len(self.sorted) - 1)
            maybe[idx] = self.sorted[pos] == hashes[idx]
        return maybe


def find_hits(sources: list[tuple[str, list[dict]]], cfg: ContaminationConfig,
              benchmarks: list[BenchmarkSet]) -> list[Hit]:
    """Every (benchmark question, example) pair of ``sources`` (``(source name, cleaned
    examples)``) where at least ``cfg.min_overlap`` of one question turn's n-grams occur in the
    example (one hit per pair, with the best turn's overlap)."""
    index = QuestionIndex(benchmarks, cfg.ngram)
    hits: list[Hit] = []
    flat = [(name, ex) for name, examples in sources for ex in examples]
    for run, texts in text_batches(flat, lambda item: dedup_text(item[1]["messages"], "conversation")):
        codes, offsets = comparable(texts)
        hashes, counts = ngram_hashes(codes, offsets, cfg.ngram)
        mask = index.candidates(hashes)
        if not mask.any():
            continue
        found = np.flatnonzero(mask)
        owners = np.repeat(np.arange(len(run)), counts)[found]
        ks, firsts = np.unique(owners, return_index=True)  # owners ascend: each example's run of windows
        for k, lo, hi in zip(ks.tolist(), firsts.tolist(), [*firsts[1:].tolist(), len(found)]):
            best: dict[tuple[int, str], tuple[float, int]] = {}
            for t, share in index.overlaps(hashes[found[lo:hi]]).items():
                b, q, _, _ = index.turns[t]
                if share >= cfg.min_overlap and share > best.get((b, q.key), (0.0, -1))[0]:
                    best[(b, q.key)] = (share, t)
            name, ex = run[k]
            for (b, qid), (share, t) in best.items():
                hits.append(Hit(benchmark=benchmarks[b].label, question_id=qid, source=name, id=ex["id"],
                                group=ex.get("group") or ex["id"], overlap=share,
                                matched=index.turns[t][2][:MATCHED_CHARS], uid=example_uid(ex)))
    return hits


def drop_hits(sources: list[tuple[str, list[dict]]], hits: list[Hit],
              stats: dict[str, SourceStats]) -> tuple[list[list[dict]], Counter]:
    """``drop`` mode: each source's examples without the contaminated ones (counted in ``stats``
    as ``contaminated``, ``kept`` lowered); the hits are marked dropped. Returns the kept lists
    (in ``sources`` order) and the removed count per source."""
    bad = {h.uid for h in hits}
    for h in hits:
        h.dropped = True
    removed: Counter = Counter()
    kept = []
    for name, examples in sources:
        keep = [ex for ex in examples if example_uid(ex) not in bad]
        removed[name] = len(examples) - len(keep)
        if removed[name]:
            stats[name].drop("contaminated", removed[name])
            stats[name].kept -= removed[name]
        kept.append(keep)
    return kept, +removed


def run_check(cfg: ContaminationConfig, benchmarks: list[BenchmarkSet], cleaned: list[tuple[Any, list[dict]]],
              stats: dict[str, SourceStats]) -> tuple[list[tuple[Any, list[dict]]], list[Hit], Counter]:
    """The build's step over ``cleaned`` (``(SourceConfig, examples)`` in recipe order): the
    hits, and with ``drop`` the pairs without the contaminated examples. Returns the pairs, the
    hits (`mark_splits` sets their split once the training and held-out sets are made) and the removed
    count per source."""
    pairs = [(src.name, exs) for src, exs in cleaned]
    hits = find_hits(pairs, cfg, benchmarks)
    if cfg.mode != "drop" or not hits:
        return cleaned, hits, Counter()
    kept, removed = drop_hits(pairs, hits, stats)
    return [(src, exs) for (src, _), exs in zip(cleaned, kept)], hits, removed


def example_uid(ex: dict) -> int:
    """The identity of one cleaned example: the build's ``uid`` (kept by every later copy: weight
    repeats, quality-scored copies), else the object itself."""
    return ex["uid"] if "uid" in ex else id(ex)


def mark_splits(hits: list[Hit], trained: set[int], held: set[int]) -> None:
    """Set each hit's ``split`` from where its example really ended (``trained`` / ``held``: the
    `example_uid` of the training and held-out examples): ``removed`` when a later step (the
    contamination drop, the quality filter, a weight below 1) left it out of both."""
    for h in hits:
        h.split = "train" if h.uid in trained else "heldout" if h.uid in held else "removed"


def contamination_stats(cfg: ContaminationConfig, benchmarks: list[BenchmarkSet], hits: list[Hit]) -> dict:
    """``stats["contamination"]`` (the shared stats.json contract)."""
    sets = {}
    for bench in benchmarks:
        found = {h.question_id for h in hits if h.benchmark == bench.label}
        ids = [q.key for q in bench.questions if q.key in found]
        sets[bench.label] = {"spec": bench.spec, "questions": len(bench.questions), "found": len(ids),
                             "question_ids": ids}
    return {"mode": cfg.mode, "ngram": cfg.ngram, "min_overlap": cfg.min_overlap, "benchmarks": sets,
            "hits": [h.as_dict() for h in hits]}
