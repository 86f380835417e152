"""The mixture: licence policy, the held-out split and per-source weights.

Weights are applied per source with a random generator seeded by
``(seed, source name)``, so adding or re-weighting one source never changes
which rows another source contributes. The held-out split is decided per
example by a hash of ``(seed, source name, example id)`` for the same reason.
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


def heldout_key(seed: int, source: str, example_id: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, source name, example id).

    Source names cannot contain ``:`` (`SourceConfig.name`), so the joined string is unambiguous."""
    digest = hashlib.sha256(f"{seed}:{source}:{example_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def select_heldout(cleaned: Iterable[tuple[str, list[dict]]], cfg: HeldoutConfig,
                   seed: int) -> list[tuple[str, dict]]:
    """The held-out examples of ``cleaned`` (``(source name, cleaned examples)`` per active source).

    An example is held out iff its `heldout_key` is below ``cfg.fraction``; with ``cfg.max_examples``
    only the smallest keys over all sources are kept. Returns ``(source name, example)`` pairs in
    ascending key order, so any prefix of the split is itself a seeded uniform sample of it (the
    first n equal what ``max_examples: n`` would select).
    """
    if cfg.fraction <= 0:
        return []
    picked = []
    for name, examples in cleaned:
        for ex in examples:
            key = heldout_key(seed, name, ex["id"])
            if key < cfg.fraction:
                picked.append((key, name, ex))
    picked.sort(key=lambda t: (t[0], t[1], t[2]["id"]))
    if cfg.max_examples is not None:
        picked = picked[:cfg.max_examples]
    return [(name, ex) for _, name, ex in picked]


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
    return ex if copy == 0 else {"id": f"{ex['id']}#{copy}", "messages": ex["messages"]}


def shuffle(rows: list[dict], seed: int) -> list[dict]:
    """A seeded shuffle of the whole mixture."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows
