"""Who is compared with whom: the base, the tuned models, and the lineage between them.

**Roles.** Tuned models are those the generate stage answered with ``path: trained``. The base
is `ReportConfig.baseline` when set, else the generate model whose ``path`` is the train config's
``model`` (the model the tuned one started from). Without a base nothing is compared, and the
report says so.

**Lineage** (base -> SFT -> DPO). When the model a tuned one started from is itself a model our
train stage exported (a DPO run starting from an SFT model folder), and the model THAT one
started from is also reported, the report follows the chain back: the base is its first model,
each model's role is its train method (``sft``, ``dpo``), and every step is compared (base -> SFT,
SFT -> DPO) as well as the base with the last model (base -> DPO). Each verdict record then names
its ``step``. With one step (base -> tuned) nothing changes: roles ``base`` and ``tuned``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from ja_instruct.errors import UserError
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.load import TRAINED, ModelInfo, ReportData


def _spec_path(info: ModelInfo) -> str | None:
    """The path a model was generated from, as the generate config wrote it (default: its id)."""
    if info.spec:
        return info.spec.get("path") or info.spec.get("id")
    return info.path


def _same_model(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def _lineage(data: ReportData, cfg: ReportConfig, trained: list[str], notes: list[str]) -> list[str]:
    """The reported models the tuned ones descend from, first to last ([base] for one step; [] when
    no base is found): the generate model whose path is the tuned models' start, then, while that
    model was itself exported by our train stage, the reported model IT started from."""
    starts = {data.models[m].train_model for m in trained if data.models[m].train_model}
    cands = [m for m, i in sorted(data.models.items())
             if m not in trained and any(_same_model(_spec_path(i), s) for s in starts)]
    if len(cands) != 1:
        if cfg.baseline is None and len(cands) > 1:
            notes.append(f"Several models were generated from the train config's base model ({', '.join(cands)}): "
                         "nothing is compared. Set report.baseline to one of them.")
        elif cfg.baseline is None:
            notes.append("No base model found (the generate model whose path is the train config's `model`): "
                         "nothing is compared. Set report.baseline to name one.")
        return []
    chain = cands
    while data.models[chain[0]].train_model:
        start = data.models[chain[0]].train_model
        prev = [m for m, i in sorted(data.models.items())
                if m not in chain and m not in trained and _same_model(_spec_path(i), start)]
        if len(prev) > 1:
            notes.append(f"Several models were generated from the model {chain[0]} started from "
                         f"({', '.join(prev)}): the comparison starts at {chain[0]}. Set report.baseline to choose.")
        if len(prev) != 1:
            break
        chain.insert(0, prev[0])
    return chain


class Lineage(NamedTuple):
    """Who is compared with whom (`find_lineage`)."""

    base: str | None
    roles: dict[str, str | None]  # model id -> "base" | "tuned" | "sft" | "dpo" | None
    notes: list[str]  # what could not be decided
    chain: list[str]  # base first, then each model the tuned ones descend from ([base] for one step)
    pairs: list[tuple[str, str]]  # (baseline, model) comparisons in reading order


def find_roles(data: ReportData, cfg: ReportConfig) -> tuple[str | None, dict[str, str | None], list[str]]:
    """(base model id or None, model id -> "base" | "tuned" | None, notes on what could not be decided).

    With a lineage of several steps (`find_lineage`) a tuned or intermediate model's role is its
    train method ("sft", "dpo")."""
    found = find_lineage(data, cfg)
    return found.base, found.roles, found.notes


def find_lineage(data: ReportData, cfg: ReportConfig) -> Lineage:
    """Roles, and the pairs to compare in reading order: every step of the lineage (base -> SFT,
    SFT -> DPO), then the base with each tuned model (base -> DPO); just (base, tuned) for each
    tuned model when there is one step."""
    trained = [m for m, i in sorted(data.models.items()) if i.spec.get("path") == TRAINED]
    notes: list[str] = []
    if cfg.baseline is not None and cfg.baseline not in data.models:
        raise UserError(f"the baseline model '{cfg.baseline}' is not among the reported models",
                        field="report.baseline", hint=f"Use one of: {', '.join(sorted(data.models))}.")
    chain = _lineage(data, cfg, trained, notes)
    if cfg.baseline is not None:
        # a named base inside the lineage starts it there; anywhere else it is compared directly
        chain = chain[chain.index(cfg.baseline):] if cfg.baseline in chain else [cfg.baseline]
    base = chain[0] if chain else None
    tuned = [m for m in trained if m != base]
    if base is not None and not tuned:
        notes.append(f"No tuned model (generated with `path: trained`) to compare with the base {base}.")
    steps = list(zip(chain, chain[1:]))
    pairs = steps + [(chain[-1], t) for t in tuned if chain] + [(base, t) for t in tuned if steps]
    roles: dict[str, str | None] = {m: None for m in data.models}
    for m in chain[1:] + tuned:
        roles[m] = (data.models[m].method or "tuned") if steps else "tuned"
    if base is not None:
        roles[base] = "base"
    return Lineage(base, roles, notes, chain, pairs)


def step_name(roles: dict[str, str | None], baseline: str, model: str) -> str:
    """A comparison's step in words: "base -> SFT", "SFT -> DPO", "base -> DPO"."""
    def name(m: str) -> str:
        r = roles.get(m) or m
        return r if r in ("base", "tuned") else r.upper()

    return f"{name(baseline)} -> {name(model)}"
