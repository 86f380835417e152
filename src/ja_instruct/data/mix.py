"""The mixture: licence policy, the held-out split and per-source weights.

Weights are applied per source with a random generator seeded by
``(seed, source name)``, so adding or re-weighting one source never changes
which rows another source contributes. The held-out split is decided per
split group by a hash of ``(seed, source name, group)`` for the same reason.

A group is a set of examples that share text: the threads of one ``oasst`` tree (same
prompt, same earlier answers), the answers of several models to one ``fastchat-answers``
question (same question); any other example is a group of its own (``group`` = its id, see
`ja_instruct.data.sources.read_source`). Whole groups go to one side, so no held-out turn is
ever trained on as part of a sibling example.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable

from ja_instruct.data.config import DataConfig, HeldoutConfig, SourceConfig, licence_forbids_commercial
from ja_instruct.errors import UserError


def check_licence_policy(cfg: DataConfig) -> None:
    """Under ``licence_policy: commercial``, refuse any source that forbids commercial use."""
    if cfg.licence_policy != "commercial":
        return
    for i, src in enumerate(cfg.sources):
        if src.weight == 0 or src.allows_commercial:
            continue
        if licence_forbids_commercial(src.license):
            why = f"licence {src.license} forbids commercial use"
        elif src.commercial is None:
            why = f"licence '{src.license}' does not say it allows commercial use (set commercial: true if it does)"
        else:
            why = f"it is marked commercial: false (licence {src.license})"
        raise UserError(f"source '{src.name}' cannot be used under licence_policy: commercial: {why}",
                        field=f"data.sources[{i}]",
                        hint="Remove the source (or give it weight 0), or set data.licence_policy: "
                             "noncommercial (the dataset is then for non-commercial use only).")


def heldout_key(seed: int, source: str, group: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, source name, split group).

    Source names cannot contain ``:`` (`SourceConfig.name`), so the joined string is unambiguous."""
    digest = hashlib.sha256(f"{seed}:{source}:{group}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_group(example: dict) -> str:
    """The held-out split group of a (cleaned) example: its ``group``, else its own id."""
    group = example.get("group")
    return group if group is not None else example["id"]


def select_heldout(cleaned: Iterable[tuple[str, list[dict]]], cfg: HeldoutConfig,
                   seed: int) -> list[tuple[str, dict]]:
    """The held-out examples of ``cleaned`` (``(source name, cleaned examples)`` per active source).

    A split group (`split_group`) is held out, all of its examples, iff its `heldout_key` is below
    ``cfg.fraction``. With ``cfg.max_examples`` whole groups are kept in ascending key order over
    all sources until the next one would exceed the cap (a group is never cut in two: one part
    would train on the other's shared turns). Returns ``(source name, example)`` pairs in ascending
    key order (a group's examples in source order), so any prefix of whole groups is itself a
    seeded uniform sample of the split (the first groups totalling at most n are what
    ``max_examples: n`` selects).
    """
    if cfg.fraction <= 0:
        return []
    groups: dict[tuple[str, str], list[dict]] = {}
    for name, examples in cleaned:
        for ex in examples:
            groups.setdefault((name, split_group(ex)), []).append(ex)
    keyed = sorted((heldout_key(seed, name, group), name, group) for name, group in groups)
    picked: list[tuple[str, dict]] = []
    for key, name, group in keyed:
        if key >= cfg.fraction:
            break
        members = groups[(name, group)]
        if cfg.max_examples is not None and len(picked) + len(members) > cfg.max_examples:
            break  # stop, not skip: a later, smaller group would make the cap depend on group sizes
        picked.extend((name, ex) for ex in members)
    return picked


def apply_weight(examples: list[dict], src: SourceConfig, seed: int) -> list[dict]:
    """Up- or down-sample one source's examples by ``src.weight``, deterministically.

    Every example is repeated floor(weight) times; then round(frac(weight) * n) more
    are drawn without replacement. Repeats get ``#k`` appended to their id so ids stay
    unique. The result keeps the source's order (the final shuffle mixes sources).
    """
    n = len(examples)
    whole = math.floor(src.weight)
    extra = round((src.weight - whole) * n)
    rng = random.Random(f"{seed}:{src.name}")
    picked = sorted(rng.sample(range(n), extra)) if extra else []
    out = []
    for copy in range(whole):
        out.extend(_copy(ex, copy) for ex in examples)
    out.extend(_copy(examples[i], whole) for i in picked)
    return out


def _copy(ex: dict, copy: int) -> dict:
    return ex if copy == 0 else {**ex, "id": f"{ex['id']}#{copy}"}  # a repeat keeps its score, group...


def shuffle(rows: list[dict], seed: int) -> list[dict]:
    """A seeded shuffle of the whole mixture."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows
