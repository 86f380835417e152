"""The mixture: licence policy and per-source weights.

Weights are applied per source with a random generator seeded by
``(seed, source name)``, so adding or re-weighting one source never changes
which rows another source contributes.
"""

from __future__ import annotations

import math
import random

from ja_instruct.data.config import DataConfig, SourceConfig, licence_forbids_commercial
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
