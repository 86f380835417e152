"""The inputs of a DPO run: pairs -> tokenised examples, pair rows, and the reference cache.

`prepare_pairs` reads the pairs only through `ja_instruct.pairs.records.load_pairs` (the
pairs stage's typed output), renders each pair with the run's template exactly as SFT
renders a conversation (`ja_instruct.data.tokenize.encode_conversation`) and keeps the
labels of the final answer only. A pair is kept whole or dropped whole (and counted):
DPO compares two complete answers, so a cut one (no EOS) would compare something else.

The reference log-probabilities (`ReferenceCache`) live beside the pairs, in
``<pairs>/reference/`` (``<file>.reference/`` for a JSONL file), named by a hash of
everything they depend on: the pairs' fingerprint, the reference model's fingerprint,
the template, ``max_length``, packing, dtype and attention kernel. A resumed run, or a
second run with other DPO settings, reads them instead of recomputing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ja_instruct.data.tokenize import IGNORE_INDEX, encode_conversation
from ja_instruct.errors import UserError
from ja_instruct.io import read_json, stable_hash, write_json
from ja_instruct.train.packing import Example, pack_best_fit

log = logging.getLogger(__name__)

REFERENCE_VERSION = 1


@dataclass
class PairData:
    """Tokenised pairs: example 2p is pair p's chosen answer, 2p + 1 its rejected one."""

    examples: list[Example]
    heldout: list[Example]
    ids: list[str]
    heldout_ids: list[str]
    stats: dict
    fingerprint: str
    path: Path
    meta: dict = field(default_factory=dict)
    shared: list[int] | None = None
    """Prompt tokens each training pair puts in its row once (`dpo.collate_shared`); None: not shared."""
    heldout_shared: list[int] | None = None

    @property
    def unit_lengths(self) -> list[int]:
        """Tokens of each training pair's row part (both examples, the prompt once when shared):
        what the sampler packs and counts."""
        return _unit_lengths(self.examples, self.shared)

    def heldout_rows(self, max_length: int, packing: bool, several: bool | None = None) -> list[list[int]]:
        """Rows of the held-out examples for evaluation, as training makes them: pairs whole,
        several per row when ``several`` (default: ``packing``)."""
        from ja_instruct.train.dpo import expand_rows

        lengths = _unit_lengths(self.heldout, self.heldout_shared)
        several = packing if several is None else several
        units = pack_best_fit(lengths, max_length) if several else [[p] for p in range(len(lengths))]
        return expand_rows(units, packing)


def _unit_lengths(examples: list[Example], shared: list[int] | None) -> list[int]:
    n = len(examples) // 2
    return [len(examples[2 * p].input_ids) + len(examples[2 * p + 1].input_ids) - (shared[p] if shared else 0)
            for p in range(n)]


def last_answer_only(labels: list[int]) -> list[int]:
    """``labels`` with every labelled run but the last set to -100: in a multi-turn prompt the
    earlier assistant turns are context, only the final answer is compared."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [IGNORE_INDEX] * start + labels[start:end] + [IGNORE_INDEX] * (len(labels) - end)


def tokenize_pairs(records, tokenizer, template, max_length: int, packing: bool,
                   share: bool = False) -> tuple[list[Example], list[str], dict]:
    """Examples (chosen, rejected, chosen, ...) of the pairs that fit, their ids and the counts
    (``stats["shared"]``: each kept pair's shared prompt tokens, with ``share``).

    With packing a pair must fit in one row (both answers: ``max_length`` tokens together, the
    prompt counted once with ``share``); without, each answer in its own row of ``max_length``."""
    from ja_instruct.train.dpo import shared_prefix_len

    examples: list[Example] = []
    ids: list[str] = []
    stats = {"total": 0, "kept": 0, "dropped_overlong": 0, "dropped_special_tokens": 0, "tokens": 0}
    shared: list[int] = []
    for rec in records:
        stats["total"] += 1
        pair = []
        for answer in (rec.chosen, rec.rejected):
            out, status = encode_conversation(tokenizer, template, [*rec.prompt, {"role": "assistant", "content": answer}],
                                              None, "drop")
            if out is None:
                stats["dropped_special_tokens" if status == "dropped_special_tokens" else "dropped_overlong"] += 1
                break
            pair.append(Example(list(out["input_ids"]), last_answer_only(list(out["labels"]))))
        if len(pair) < 2:
            continue
        n = [len(e.input_ids) for e in pair]
        s = shared_prefix_len(*pair) if share and packing else 0
        if (sum(n) - s if packing else max(n)) > max_length:
            stats["dropped_overlong"] += 1
            continue
        examples += pair
        ids.append(rec.id)
        shared.append(s)
        stats["kept"] += 1
        stats["tokens"] += sum(n) - s
    if share and packing:
        stats["shared"] = shared
    return examples, ids, stats


def describe_pair_stats(stats: dict, heldout: dict, max_length: int, packing: bool) -> str:
    """One line: what the run trains on and what it left out."""
    fit = "both answers of a pair in one row" if packing else "each answer in one row"
    shared = (f", {stats['shared_prompt_tokens']:,} prompt tokens computed once instead of twice"
              if stats.get("shared_prompt_tokens") is not None else "")
    line = (f"dpo: {stats['kept']:,} of {stats['total']:,} training pairs kept ({stats['tokens']:,} tokens{shared}); "
            f"{stats['dropped_overlong']:,} over max_length {max_length} ({fit}) dropped")
    if stats["dropped_special_tokens"]:
        line += f", {stats['dropped_special_tokens']:,} with special-token strings dropped"
    return line + f"; {heldout['kept']:,} held-out pairs for preference accuracy"


def prepare_pairs(path: Path, tokenizer, template, max_length: int, packing: bool, share: bool = False) -> PairData:
    """Load, split and tokenise the pairs at ``path`` (prompts shared per pair with ``share`` and
    packing); `UserError` when none is left to train on."""
    from ja_instruct.pairs.records import load_pairs

    ps = load_pairs(path)
    train, held = ps.split("train"), ps.split("heldout")
    examples, ids, stats = tokenize_pairs(train, tokenizer, template, max_length, packing, share)
    hex_, hids, hstats = tokenize_pairs(held, tokenizer, template, max_length, packing, share)
    shared, hshared = stats.pop("shared", None), hstats.pop("shared", None)
    stats["heldout"] = hstats
    if not ids:
        raise UserError(f"no training pair of {path} is left after tokenisation "
                        f"({stats['dropped_overlong']} over max_length {max_length})", field="train.max_length",
                        hint="Raise train.max_length (with packing both answers of a pair share a row).")
    if shared is not None:
        stats["shared_prompt_tokens"] = sum(shared)
    return PairData(examples, hex_, ids, hids, stats, ps.fingerprint, Path(path), ps.meta, shared, hshared)


def scored_hash(pairs: PairData) -> str:
    """Content hash of what the reference scores: every token and label of every training and
    held-out example, and the shared prompt lengths. A pairs folder's fingerprint is its stage's
    manifest (settings and inputs), which a re-judged or hand-edited pairs.jsonl would keep."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for part in (pairs.examples, pairs.heldout):
        h.update(np.asarray([len(e.input_ids) for e in part], dtype=np.int64).tobytes())
        for e in part:
            h.update(np.asarray(e.input_ids, dtype=np.int64).tobytes())
            h.update(np.asarray(e.labels, dtype=np.int64).tobytes())
    for sh in (pairs.shared, pairs.heldout_shared):
        h.update(np.asarray(sh if sh is not None else [-1], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


class ReferenceCache:
    """Reference log-probabilities of a run's pairs, beside the pairs, under a key of their inputs."""

    def __init__(self, pairs: PairData, inputs: dict, fallback_dir: Path) -> None:
        self.inputs = {"version": REFERENCE_VERSION, "pairs": pairs.fingerprint, **inputs}
        self.key = stable_hash(self.inputs)
        p = pairs.path
        folder = p / "reference" if p.is_dir() else p.with_name(p.name + ".reference")
        self.path = folder / f"{self.key}.json"
        self.fallback = Path(fallback_dir) / "reference" / f"{self.key}.json"
        self.n_train, self.n_heldout = len(pairs.examples), len(pairs.heldout)

    def load(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(train, held-out) log-probabilities when a cache of this key exists and fits; else None."""
        for path in (self.path, self.fallback):
            if not path.is_file():
                continue
            try:
                obj = read_json(path)
                tr, he = obj["train"], obj["heldout"]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("dpo: ignoring the unreadable reference cache %s (it will be recomputed)", path)
                continue
            if obj.get("inputs") != self.inputs or len(tr) != self.n_train or len(he) != self.n_heldout:
                log.warning("dpo: the reference cache %s does not match these pairs; recomputing", path)
                continue
            self.where = path
            return torch.tensor(tr, dtype=torch.float64), torch.tensor(he, dtype=torch.float64)
        return None

    def save(self, train: torch.Tensor, heldout: torch.Tensor) -> Path:
        """Write atomically (float64 values round-trip exactly through JSON); the pairs' folder
        first, the run's own folder when that one cannot be written."""
        obj = {"inputs": self.inputs, "train": train.tolist(), "heldout": heldout.tolist()}
        for path in (self.path, self.fallback):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json(path, obj, indent=None)
                self.where = path
                return path
            except OSError:
                continue
        raise UserError(f"cannot write the reference cache to {self.path} or {self.fallback}",
                        hint="Check the permissions of the pairs folder and the train output folder.")
