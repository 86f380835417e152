"""``ja-instruct judge agree A B``: how far two judges, or a judge and human raters, agree.

A and B are judge output folders (their ``judgments.jsonl``; a judgments.jsonl file works too)
or, for B (or A), a human-ratings file: CSV, TSV, JSONL or a JSON list with the columns
``question_id, model, score`` and optionally ``turn`` (default 1), ``sample`` (default 0) and
``scale`` (``1-5``, ``1-10``). Several rows of one item (several raters) and a judge's repeats
are averaged into one score per item.

Items are matched by (model, question_id, turn, sample) in single mode; pairwise folders are
compared per (pair, question, turn, sample) on the verdict after both orders are combined
(`ja_instruct.stats.combine_orders`; grades 0 = the pair's first model by name lost, 1 = tie,
2 = won). The figures are `ja_instruct.stats.agreement`: Spearman, Kendall, quadratic-weighted
kappa on the scores rounded to integer grades of the shared scale, mean absolute difference,
with the number of items matched and left unmatched on each side; per model; and over the
per-model means of the matched items (do the two rank the models alike?).

A judge's score is its own (``score_unguarded``, before the language guard capped answers not
in Japanese), like the panel's agreement (`ja_instruct.judge.panel`): the guard caps both sides
alike and would inflate the agreement; ``guarded`` compares the capped scores instead.

Scores on different scales (an ELYZA 1-5 judge against MT-Bench 1-10 judgments) are refused
unless ``rescale`` maps B's scale linearly onto A's. A ratings file that states no scale is
taken to be on the other side's scale when every score lies within it.
"""

from __future__ import annotations

import math

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ja_instruct import stats
from ja_instruct.errors import UserError
from ja_instruct.io import atomic_write, iter_jsonl, read_json, write_json

log = logging.getLogger(__name__)

LEGACY_SCALE = (1.0, 10.0)  # single-mode judgments written before the scale was recorded: all 1-10
VERDICT_SCALE = (0.0, 2.0)  # pairwise: loss, tie, win of the pair's first model
RATING_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class Side:
    """One side of the comparison: one score per item."""

    path: Path
    kind: str                                   # "judge" | "ratings"
    mode: str                                   # "single" | "pairwise"
    scale: tuple[float, float] | None           # None: a ratings file that states none
    items: dict[tuple, float] = field(default_factory=dict)
    judge: str | None = None
    left_out: int = 0                           # records that did not count (parse errors, refusals)


def scale_label(scale: tuple[float, float] | None) -> str:
    if scale is None:
        return "unstated"
    return f"{scale[0]:g}-{scale[1]:g}"


def _parse_scale(value, path: Path, line: int | None) -> tuple[float, float]:
    """``"1-5"``, ``"1,5"`` or ``[1, 5]`` -> (1.0, 5.0)."""
    try:
        lo, hi = (value.replace(",", "-").split("-") if isinstance(value, str) else value)
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise UserError(f"scale {value!r} is not lo-hi (e.g. 1-5)", file=path, line=line) from None
    if not lo < hi:
        raise UserError(f"scale {value!r}: the lowest grade must be below the highest", file=path, line=line)
    return lo, hi


# --------------------------------------------------------------------------- loading

def _is_judgments(path: Path) -> bool:
    if path.suffix != ".jsonl":
        return False
    for _, rec in iter_jsonl(path, allow_empty=True):
        return "mode" in rec and ("score" in rec or "verdict" in rec)
    return False


def load_side(path: str | Path, judge: str | None = None, guarded: bool = False) -> Side:
    """A judge folder / judgments.jsonl, or a human-ratings file (see the module doc)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "judgments.jsonl").is_file():
            raise UserError("not a judge output folder (no judgments.jsonl)", file=p,
                            hint="Pass the folder `ja-instruct judge` or `judge import` wrote, or a ratings file.")
        return _load_judgments(p, p / "judgments.jsonl", judge, guarded)
    if not p.is_file():
        raise UserError("file not found", file=p, hint="Pass a judge output folder or a human-ratings file.")
    if _is_judgments(p):
        return _load_judgments(p, p, judge, guarded)
    if judge is not None:
        raise UserError("a judge was chosen for a human-ratings file", file=p, hint="Drop --judge-a/--judge-b.")
    return _load_ratings(p)


def _load_judgments(shown: Path, path: Path, judge: str | None, guarded: bool) -> Side:
    records = [r for _, r in iter_jsonl(path)]
    modes = {r.get("mode") for r in records}
    if len(modes) != 1 or not modes <= {"single", "pairwise"}:
        raise UserError(f"judgments of modes {sorted(map(str, modes))}: expected one of single, pairwise",
                        file=path)
    judges = sorted({str(r.get("judge")) for r in records})
    if judge is None and len(judges) > 1:
        raise UserError(f"judgments of {len(judges)} judges ({', '.join(judges)})", file=path,
                        hint="Choose one with --judge-a / --judge-b NAME (the same folder may be both sides).")
    if judge is not None:
        if judge not in judges:
            raise UserError(f"no judgments by judge {judge!r} (judges here: {', '.join(judges)})", file=path)
        records = [r for r in records if str(r.get("judge")) == judge]
    mode = modes.pop()
    side = Side(shown, "judge", mode, None, judge=judge or judges[0])
    values: dict[tuple, list[float]] = defaultdict(list)
    if mode == "single":
        scales = set()
        for r in records:
            if not stats.is_ok(r) or r.get("score") is None:
                side.left_out += 1
                continue
            scales.add(tuple(map(float, r["scale"])) if r.get("scale") else LEGACY_SCALE)
            score = r["score"] if guarded or r.get("score_unguarded") is None else r["score_unguarded"]
            values[(r.get("model"), str(r["question_id"]), int(r.get("turn") or 1),
                    int(r.get("sample") or 0))].append(float(score))
        if len(scales) > 1:
            raise UserError(f"judgments on more than one scale ({', '.join(map(scale_label, sorted(scales)))})",
                            file=path, hint="Compare one question set at a time.")
        side.scale = scales.pop() if scales else LEGACY_SCALE
    else:
        side.scale = VERDICT_SCALE
        side.left_out = sum(not stats.is_ok(r) for r in records)
        samples = {}
        for r in records:
            samples[(str(r["question_id"]), r.get("turn", 1), r["model_a"], r["model_b"])] = int(r.get("sample") or 0)
        for c in stats.combine_orders(records):
            if c["verdict"] is None:
                continue
            w = stats.VERDICT_VALUE[c["verdict"]]
            (ma, mb), w = ((c["model_a"], c["model_b"]), w) if c["model_a"] <= c["model_b"] else \
                ((c["model_b"], c["model_a"]), 1.0 - w)
            s = samples.get((str(c["question_id"]), c["turn"], c["model_a"], c["model_b"]), 0)
            values[(f"{ma} vs {mb}", str(c["question_id"]), int(c["turn"] or 1), s)].append(2.0 * w)
    side.items = {k: float(np.mean(v)) for k, v in values.items()}
    return side


def _rating_rows(path: Path) -> list[tuple[int | None, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                return [(i + 2, row) for i, row in enumerate(reader)]  # line 1 is the header
        except UnicodeDecodeError:
            raise UserError("not valid UTF-8", file=path, hint="Re-save the file as UTF-8.") from None
    if suffix == ".jsonl":
        return [(line, rec) for line, rec in iter_jsonl(path)]
    if suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
            raise UserError("expected a JSON list of objects", file=path)
        return [(None, rec) for rec in data]
    raise UserError(f"unknown ratings format {suffix or '(no suffix)'!r}", file=path,
                    hint=f"Use one of {', '.join(RATING_SUFFIXES)}, or pass a judge output folder.")


def _load_ratings(path: Path) -> Side:
    rows = _rating_rows(path)
    if not rows:
        raise UserError("no ratings", file=path)
    missing = [c for c in ("question_id", "model", "score") if c not in rows[0][1]]
    if missing:
        raise UserError(f"no column {', '.join(missing)} (columns: {', '.join(map(str, rows[0][1]))})", file=path,
                        hint="A ratings file needs question_id, model and score (optional: turn, sample, scale).")
    side = Side(path, "ratings", "single", None)
    values: dict[tuple, list[float]] = defaultdict(list)
    scales = set()
    for line, row in rows:
        raw = row.get("score")
        if raw is None or str(raw).strip() == "":
            side.left_out += 1  # an item a rater skipped
            continue
        try:
            score = float(raw)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise UserError(f"score {raw!r} is not a finite number", file=path, line=line, field="score",
                            hint="Give each rating as a number on the rating scale (leave it empty to skip the item).")
        try:
            turn, sample = int(row.get("turn") or 1), int(row.get("sample") or 0)
        except (TypeError, ValueError):
            raise UserError(f"turn {row.get('turn')!r} / sample {row.get('sample')!r} is not a whole number",
                            file=path, line=line, field="turn") from None
        if row.get("scale"):
            scales.add(_parse_scale(row["scale"], path, line))
        values[(str(row["model"]), str(row["question_id"]), turn, sample)].append(score)
    if len(scales) > 1:
        raise UserError(f"ratings on more than one scale ({', '.join(map(scale_label, sorted(scales)))})", file=path)
    side.scale = scales.pop() if scales else None
    side.items = {k: float(np.mean(v)) for k, v in values.items()}
    return side


# --------------------------------------------------------------------------- comparing

def _shared_scale(a: Side, b: Side, rescale: bool) -> tuple[tuple[float, float], dict[tuple, float], list[str]]:
    """(the scale both are compared on, B's items on it, notes), or a UserError."""
    if a.mode != b.mode:
        raise UserError(f"{a.path} holds {a.mode} judgments and {b.path} {b.mode} ones: nothing to compare",
                        hint="Compare single-mode scores with scores, pairwise verdicts with verdicts.")
    notes = []
    for one, other in ((a, b), (b, a)):
        if one.scale is None and other.scale is not None:
            lo, hi = other.scale
            if not all(lo <= v <= hi for v in one.items.values()):
                raise UserError(f"scores outside {scale_label(other.scale)}, the scale of {other.path}",
                                file=one.path, hint="Add a 'scale' column (e.g. 1-5); --rescale then maps it "
                                                    "onto the other side's.")
            one.scale = other.scale
            notes.append(f"{one.path} states no scale: taken as {scale_label(other.scale)}")
    if a.scale is None or b.scale is None:  # two ratings files, neither states its scale
        values = [*a.items.values(), *b.items.values()]
        a.scale = b.scale = (float(np.floor(min(values))), float(np.ceil(max(values))))
        notes.append(f"neither side states a scale: {scale_label(a.scale)}, the range of the scores")
    if a.scale == b.scale:
        return a.scale, b.items, notes
    if not rescale:
        raise UserError(f"{a.path} grades on {scale_label(a.scale)} and {b.path} on {scale_label(b.scale)}: their "
                        "scores cannot be compared as they are",
                        hint="Pass --rescale to map B's scale linearly onto A's (kappa then uses the rescaled "
                             "scores rounded to A's grades).")
    (alo, ahi), (blo, bhi) = a.scale, b.scale
    mapped = {k: alo + (v - blo) * (ahi - alo) / (bhi - blo) for k, v in b.items.items()}
    notes.append(f"B's {scale_label(b.scale)} mapped linearly onto A's {scale_label(a.scale)}")
    return a.scale, mapped, notes


def _model_of(key: tuple) -> str:
    return str(key[0])


def compare(a: Side, b: Side, *, rescale: bool = False) -> dict:
    """The agree.json dict of two loaded sides (see the module doc)."""
    scale, b_items, notes = _shared_scale(a, b, rescale)
    common = sorted(set(a.items) & set(b_items), key=lambda k: tuple(map(str, k)))
    if not common:
        ex_a, ex_b = (next(iter(sorted(s, key=lambda k: tuple(map(str, k)))), None) for s in (a.items, b_items))
        models_a = sorted({_model_of(k) for k in a.items})
        models_b = sorted({_model_of(k) for k in b_items})
        raise UserError(f"no item of {b.path} matches one of {a.path} (items match by model, question_id, turn, "
                        f"sample; e.g. {ex_a} vs {ex_b})",
                        hint=f"Models in A: {', '.join(models_a[:6]) or 'none'}; "
                             f"in B: {', '.join(models_b[:6]) or 'none'}.")
    x = np.array([a.items[k] for k in common])
    y = np.array([b_items[k] for k in common])
    by_model: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(common):
        by_model[_model_of(k)].append(i)
    means = {m: (float(x[ix].mean()), float(y[ix].mean())) for m, ix in sorted(by_model.items())}
    lo = int(np.floor(scale[0] + 0.5))
    k = int(np.floor(scale[1] + 0.5)) - lo + 1
    conf = np.zeros((k, k), dtype=int)
    ga, gb = np.clip(stats.to_grades(x) - lo, 0, k - 1), np.clip(stats.to_grades(y) - lo, 0, k - 1)
    np.add.at(conf, (ga, gb), 1)
    return {
        "a": {"path": str(a.path), "kind": a.kind, "judge": a.judge, "scale": scale_label(a.scale),
              "items": len(a.items), "left_out": a.left_out},
        "b": {"path": str(b.path), "kind": b.kind, "judge": b.judge, "scale": scale_label(b.scale),
              "items": len(b.items), "left_out": b.left_out},
        "mode": a.mode, "scale": scale_label(scale), "rescaled": a.scale != b.scale, "notes": notes,
        "matched": len(common),
        "unmatched": {"a": len(a.items) - len(common), "b": len(b_items) - len(common)},
        "overall": stats.agreement(x, y, ordinal=True),
        "by_model": {m: stats.agreement(x[ix], y[ix], ordinal=True) for m, ix in sorted(by_model.items())},
        "models": (stats.agreement([v[0] for v in means.values()], [v[1] for v in means.values()], ordinal=False)
                   if len(means) > 1 else None),
        "means": {m: {"a": va, "b": vb} for m, (va, vb) in means.items()},
        "grades": list(range(lo, lo + k)), "confusion": conf.tolist(),
    }


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(result: dict) -> str:
    """The printed summary of a `compare` result."""
    def who(side: dict) -> str:
        kind = f"judge {side['judge']}" if side["kind"] == "judge" else "human ratings"
        return f"{side['path']} ({kind}, scale {side['scale']}, {side['items']} items)"

    lines = [f"A: {who(result['a'])}", f"B: {who(result['b'])}",
             f"compared on {result['scale']} ({result['mode']}): {result['matched']} items matched; unmatched: "
             f"{result['unmatched']['a']} in A, {result['unmatched']['b']} in B"]
    lines += [f"note: {n}" for n in result["notes"]]
    width = max([10] + [len(m) for m in result["by_model"]])
    lines.append(f"{'':<{width}}  {'n':>6}  {'Spearman':>8}  {'Kendall':>8}  {'QWK':>6}  {'MAD':>6}")
    rows = [("all items", result["overall"])] + list(result["by_model"].items())
    if result["models"]:
        rows.append(("model means", result["models"]))
    for name, a in rows:
        lines.append(f"{name:<{width}}  {a['n']:>6}  {_fmt(a['spearman']):>8}  {_fmt(a['kendall']):>8}  "
                     f"{_fmt(a['qwk']):>6}  {_fmt(a['mad']):>6}")
    return "\n".join(lines)


def agree(a: str | Path, b: str | Path, out: str | Path | None = None, *, rescale: bool = False,
          judge_a: str | None = None, judge_b: str | None = None, guarded: bool = False) -> dict:
    """Compare A and B (see the module doc); with ``out``, write ``agree.json`` and ``agree.png``
    there. Returns the agree.json dict."""
    result = compare(load_side(a, judge_a, guarded), load_side(b, judge_b, guarded), rescale=rescale)
    result["guarded"] = guarded
    if out is not None:
        from ja_instruct.manifest import file_fingerprint
        from ja_instruct.report.plots import agreement_figure

        out = Path(out)
        for side, path in (("a", a), ("b", b)):
            p = Path(path)
            result[side]["fingerprint"] = file_fingerprint(p / "judgments.jsonl" if p.is_dir() else p)
        fig = agreement_figure(result)
        with atomic_write(out / "agree.png", "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
        import matplotlib.pyplot as plt

        plt.close(fig)
        write_json(out / "agree.json", result)
        log.info("judge agree: wrote %s", out / "agree.json")
    return result

