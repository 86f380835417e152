"""Preference sets the pairs stage reads as they are (``pairs.input``): JSONL files, HF dataset
folders (``save_to_disk``) and HF hub datasets (``datasets.load_dataset``, offline from the
local cache when ``HF_HUB_OFFLINE=1``).

Every row goes through `ja_instruct.pairs.records.record_from_json`, so every layout it knows
(ours, plain ``prompt``/``chosen``/``rejected``, UltraFeedback-binarized message lists with
``score_chosen``/``score_rejected``, HH-RLHF transcripts) is read the same way from any of them,
and a bad row is a `UserError` naming the file (or dataset), the row and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.pairs.records import PAIRS_FILE, PairRecord, PairSet, record_from_json


def records_from_rows(rows: Iterable[tuple[int, dict]], where: str | Path, limit: int | None = None
                      ) -> tuple[list[PairRecord], set[str]]:
    """(the pairs of ``rows``, the ids of those that carry their own ``split``), strictly: ids must
    be unique and there must be at least one pair. ``rows`` are ``(number, row)``: a JSONL file's
    line, or a dataset row's 1-based position; ``where`` names the source in errors. Null values
    (a dataset column a row lacks) count as absent."""
    out, seen, own = [], set(), set()
    for n, row in rows:
        obj = {k: v for k, v in row.items() if v is not None} if isinstance(row, dict) else row
        rec = record_from_json(obj, file=Path(str(where)), line=n, default_id=str(n))
        if rec.id in seen:
            raise UserError(f"id {rec.id!r} is repeated", file=where, line=n, field="id")
        seen.add(rec.id)
        if isinstance(obj, dict) and "split" in obj:
            own.add(rec.id)
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise UserError("no preference pairs", file=where)
    return out, own


def _pick_split(ds, split: str, where: str):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"no split '{split}'", file=where, field="pairs.split",
                            hint=f"Its splits: {', '.join(ds)}.")
        return ds[split]
    return ds


def _dataset_from_disk(path: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # not a save_to_disk folder: FileNotFoundError, ValueError...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"not a preference set (no pairs.jsonl, not a saved HF dataset: {first})", file=path,
                        hint="Point at a `ja-instruct pairs` folder, a JSONL file or a `save_to_disk` folder."
                        ) from None
    return _pick_split(ds, split, str(path))


def load_pairs_dataset(path: str | Path, split: str = "train") -> PairSet:
    """The pairs of an HF dataset folder written by ``save_to_disk`` (split ``split`` of a
    DatasetDict); the fingerprint is the folder's content hash."""
    from ja_instruct.manifest import file_fingerprint

    p = Path(path)
    ds = _dataset_from_disk(p, split)
    records, _ = records_from_rows(enumerate(ds, 1), p)
    return PairSet(records, file_fingerprint(p), {"path": str(p)})


def _hub_dataset(repo_id: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(repo_id, split=split)
    except Exception as e:  # offline without a cached copy, unknown id, missing split...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = ("Offline (HF_HUB_OFFLINE=1): the dataset must already be in the local HF cache." if offline
                else "Check the id and pairs.split.")
        raise UserError(f"cannot load the HF dataset '{repo_id}' (split {split}): {first}", field="pairs.input",
                        hint=hint) from None


def _hub_fingerprint(ds) -> str:
    """The content of a loaded hub dataset: the hash of its Arrow cache files (what was read)."""
    from ja_instruct.io import stable_hash
    from ja_instruct.manifest import file_fingerprint

    files = [f["filename"] for f in getattr(ds, "cache_files", []) if os.path.isfile(f.get("filename", ""))]
    if files:
        return stable_hash([file_fingerprint(f) for f in sorted(files)])
    return stable_hash([dict(r) for r in ds])  # an in-memory dataset


@dataclass
class InputSet:
    """A preference set read as ``pairs.input``: its pairs, which of them carry their own split,
    its fingerprint and what it is (``path``, and ``license`` / ``judge`` / ``judge_terms`` where
    a `ja-instruct pairs` folder recorded them)."""

    records: list[PairRecord]
    own_split: set[str]
    fingerprint: str
    meta: dict = field(default_factory=dict)


def read_input(spec: str, split: str = "train", limit: int | None = None) -> InputSet:
    """Read ``pairs.input``: a `ja-instruct pairs` folder (its pairs keep their splits), a JSONL
    file, a ``save_to_disk`` folder, or an HF hub dataset id (``owner/name``)."""
    from ja_instruct.config import looks_local, resolve_path
    from ja_instruct.io import iter_jsonl
    from ja_instruct.pairs.records import _file_hash, load_pairs

    p = resolve_path(spec)
    if p.is_dir() and (p / PAIRS_FILE).is_file():
        ps = load_pairs(p)  # a folder whose run did not finish is an error there
        records = ps.records[:limit] if limit is not None else ps.records
        return InputSet(records, {r.id for r in records}, ps.fingerprint, ps.meta)
    if p.is_file():
        records, own = records_from_rows(iter_jsonl(p), p, limit)
        return InputSet(records, own, _file_hash(p), {"path": str(p)})
    if p.is_dir():
        ds = _dataset_from_disk(p, split)
        records, own = records_from_rows(enumerate(ds, 1), p, limit)
        from ja_instruct.manifest import file_fingerprint

        return InputSet(records, own, file_fingerprint(p), {"path": str(p)})
    if looks_local(spec):
        raise UserError("preference set not found", file=p, field="pairs.input",
                        hint="Check the path (relative to the current folder), or give an HF hub id like "
                             "HuggingFaceH4/ultrafeedback_binarized.")
    ds = _hub_dataset(spec, split)
    records, own = records_from_rows(enumerate(ds, 1), spec, limit)
    return InputSet(records, own, _hub_fingerprint(ds), {"path": spec})
