"""The pairs stage's typed output, and every preference-set layout it reads.

    load_pairs(path) -> PairSet     # a `ja-instruct pairs` folder, a JSONL file, an HF dataset

This is the contract between the pairs stage and DPO training: training reads pairs only
through `load_pairs`, never the folder's other files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ja_instruct.errors import UserError

PAIRS_FILE = "pairs.jsonl"
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class PairRecord:
    """One preference pair: two answers to the same prompt, ``chosen`` preferred."""

    id: str
    prompt: list[dict]
    """The conversation before the answer: ``[{"role", "content"}, ...]``, ending with a user turn."""
    chosen: str
    rejected: str
    split: str = "train"
    """``train`` or ``heldout`` (never trained on; DPO's preference accuracy is measured on them)."""
    scores: dict | None = None
    """The judge's ``{"chosen": x, "rejected": y}`` (single grades, or wins in pairwise mode)."""
    margin: float | None = None
    judge: str | None = None
    source: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairSet:
    """Pairs and where they come from."""

    records: list[PairRecord]
    fingerprint: str
    """Content fingerprint: the stage manifest's for a pairs folder, a hash of the file(s) otherwise."""
    meta: dict = field(default_factory=dict)
    """``path``, ``license``, ``judge``, ``judge_terms`` where known."""

    def split(self, name: str) -> list[PairRecord]:
        """The pairs of split ``name`` (``train`` or ``heldout``)."""
        return [r for r in self.records if r.split == name]


def is_pairs_dir(path: str | Path) -> bool:
    """Whether ``path`` is a complete folder written by ``ja-instruct pairs`` (its manifest exists)."""
    from ja_instruct.manifest import read_manifest

    p = Path(path)
    return p.is_dir() and (p / PAIRS_FILE).is_file() and read_manifest(p, "pairs") is not None


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def record_from_json(obj: object, *, file: Path, line: int, default_id: str) -> PairRecord:
    """A `PairRecord` from one JSON object in any accepted layout; `UserError` naming the file,
    line and field otherwise. Layouts: ours (`PairRecord.as_dict`), plain ``prompt``/``chosen``/
    ``rejected`` strings, UltraFeedback-binarized (``chosen``/``rejected`` message lists whose last
    message is the answer; its ``score_chosen``/``score_rejected`` become ``scores``), HH-RLHF
    (``chosen``/``rejected`` transcripts with ``Human:`` and ``Assistant:`` turns sharing everything
    but the last answer)."""
    if not isinstance(obj, dict):
        raise UserError("a preference record must be a JSON object", file=file, line=line)
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise UserError(f"missing '{key}'", file=file, line=line, field=key,
                            hint="Each line needs prompt, chosen and rejected (or HH-RLHF's chosen/rejected).")
    chosen, rejected, prompt = obj["chosen"], obj["rejected"], obj.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list):  # UltraFeedback: message lists
        c_msgs, r_msgs = _messages(chosen, file, line, "chosen"), _messages(rejected, file, line, "rejected")
        for key, msgs in (("chosen", c_msgs), ("rejected", r_msgs)):
            if not msgs or msgs[-1]["role"] != "assistant":
                raise UserError(f"the '{key}' message list must end with an assistant message", file=file,
                                line=line, field=key)
        prompt_msgs = c_msgs[:-1]
        if r_msgs[:-1] != prompt_msgs:
            raise UserError("the 'rejected' messages before its answer differ from the 'chosen' ones: a pair "
                            "answers one prompt", file=file, line=line, field="rejected")
        chosen, rejected = c_msgs[-1]["content"], r_msgs[-1]["content"]
        if not prompt_msgs and isinstance(prompt, str):
            prompt_msgs = [{"role": "user", "content": prompt}]
    elif prompt is None and isinstance(chosen, str) and isinstance(rejected, str):  # HH-RLHF transcripts
        prompt_msgs, chosen, rejected = _split_hh(chosen, rejected, file, line)
    elif isinstance(prompt, str):
        prompt_msgs = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        prompt_msgs = _messages(prompt, file, line, "prompt")
    else:
        raise UserError("'prompt' must be a string or a list of messages", file=file, line=line, field="prompt")
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"'{key}' must be a non-empty string", file=file, line=line, field=key)
    if not prompt_msgs or prompt_msgs[-1]["role"] != "user":
        raise UserError("the prompt must end with a user message", file=file, line=line, field="prompt")
    split = obj.get("split", "train")
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", file=file, line=line, field="split")
    scores, margin = obj.get("scores"), obj.get("margin")
    if not isinstance(scores, dict):
        scores = None
        sc, sr = obj.get("score_chosen"), obj.get("score_rejected")  # UltraFeedback-binarized's ratings
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (sc, sr)):
            scores = {"chosen": sc, "rejected": sr}
            margin = sc - sr if margin is None else margin
    return PairRecord(id=str(obj.get("id", default_id)), prompt=prompt_msgs, chosen=chosen, rejected=rejected,
                      split=split, scores=scores, margin=margin, judge=obj.get("judge"), source=obj.get("source"))


def _messages(msgs: object, file: Path, line: int, key: str) -> list[dict]:
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                             and m.get("role") in ("system", "user", "assistant") for m in msgs):
        raise UserError(f"'{key}' must be a list of {{role, content}} messages", file=file, line=line, field=key)
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _split_hh(chosen: str, rejected: str, file: Path, line: int) -> tuple[list[dict], str, str]:
    """HH-RLHF: two transcripts ``\\n\\nHuman: ...\\n\\nAssistant: ...`` differing in the last answer."""
    import re

    def turns(text: str) -> list[dict]:
        parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + text.lstrip("\n"))
        out = []
        for role, content in zip(parts[1::2], parts[2::2]):
            out.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
        return out

    c, r = turns(chosen), turns(rejected)
    if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant" or c[:-1] != r[:-1]:
        raise UserError("HH-RLHF layout: chosen and rejected must be 'Human:'/'Assistant:' transcripts that share "
                        "everything but the last Assistant answer", file=file, line=line, field="chosen")
    return c[:-1], c[-1]["content"], r[-1]["content"]


def read_pairs_jsonl(path: Path) -> list[PairRecord]:
    """Every pair of a JSONL file (any accepted layout), strictly: ids must be unique."""
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"not valid JSON ({e.msg})", file=path, line=n,
                                hint="Each line must be one JSON object.") from None
            rec = record_from_json(obj, file=path, line=n, default_id=str(n))
            if rec.id in seen:
                raise UserError(f"id {rec.id!r} is repeated", file=path, line=n, field="id")
            seen.add(rec.id)
            out.append(rec)
    if not out:
        raise UserError("no preference pairs in the file", file=path)
    return out


def load_pairs(path: str | Path) -> PairSet:
    """The pairs at ``path``: a folder written by ``ja-instruct pairs`` (its ``pairs.jsonl`` and
    manifest), a JSONL file, or an HF dataset folder saved with ``save_to_disk``."""
    from ja_instruct.manifest import read_manifest

    p = Path(path)
    if p.is_dir() and (p / PAIRS_FILE).is_file():
        m = read_manifest(p, "pairs")
        if m is None:
            raise UserError(f"{p} has no pairs manifest: the pairs stage did not finish there", file=p,
                            hint="Run `ja-instruct pairs RECIPE` again (it resumes).")
        return PairSet(read_pairs_jsonl(p / PAIRS_FILE), m.fingerprint, {"path": str(p), **(m.details or {}).get("meta", {})})
    if p.is_file():
        return PairSet(read_pairs_jsonl(p), _file_hash(p), {"path": str(p)})
    if p.is_dir():
        from ja_instruct.pairs.hub import load_pairs_dataset  # an HF dataset folder

        return load_pairs_dataset(p)
    raise UserError(f"preference pairs not found: {p}", file=p,
                    hint="Point train.dpo.pairs at a `ja-instruct pairs` folder, a JSONL file or a dataset folder.")
