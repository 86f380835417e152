"""A panel of judges (``judge.panel``, PoLL): each judge's scores, the panel mean, the agreement.

Single mode only. From the records of every judge (their ``judge`` field tells them apart):

* ``judges``: ``{judge: {model: {mean, ci, n}}}``: each judge's own mean score (after the
  language guard, like the model blocks), its cluster-bootstrap interval and count;
* ``panel``: ``{model: {mean}}``: the mean of the judges' means (each judge weighs the same);
* ``agreement``: ``{"<judge A> vs <judge B>": {spearman, kendall, qwk, mad, n}}`` for every
  pair of judges in panel order, by `ja_instruct.stats.agreement` over the items both judged
  (model, question, turn, sample; repeats averaged). It compares the judges' OWN scores
  (``score_unguarded``): the language guard caps both alike and would inflate the agreement.
  ``qwk`` (quadratic-weighted kappa) is given when every score is a whole grade.

Scores on different scales are never mixed: a model (or judge pair) with judgments on several
scales gets ``{"scale": "mixed", "by_scale": {label: ...}}`` instead (`summary.by_scale`).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np

from ja_instruct import stats


def _judge_blocks(records: list[dict], models: list[str], bootstrap: int, seed: int) -> dict:
    from ja_instruct.judge.summary import single_models

    def slim(block: dict) -> dict:
        if block.get("scale") == "mixed":
            return {"scale": "mixed", "mean": None, "by_scale": {k: slim(b) for k, b in block["by_scale"].items()}}
        return {"mean": block["mean"], "ci": block.get("ci95"), "n": block["n"], "scale": block["scale"]}

    return {m: slim(b) for m, b in single_models(records, models, bootstrap, seed).items()}


def _panel_mean(per_judge: dict[str, dict], models: list[str]) -> dict:
    out = {}
    for m in models:
        blocks = [blocks[m] for blocks in per_judge.values() if m in blocks]
        labels = {b.get("scale") for b in blocks}
        if "mixed" in labels or len(labels) > 1:
            out[m] = {"scale": "mixed", "mean": None}
            continue
        means = [b["mean"] for b in blocks if b.get("mean") is not None]
        out[m] = {"mean": float(np.mean(means)) if means else None}
    return out


def item_scores(records: list[dict], judge: str) -> dict[tuple, float]:
    """``{(model, question_id, turn, sample): score}`` of one judge's counted single judgments
    (the judge's own score, before the language guard; repeats averaged)."""
    per: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r.get("mode") == "single" and r.get("judge") == judge and stats.is_ok(r):
            score = r.get("score_unguarded", r.get("score"))
            if score is not None:
                per[(r.get("model"), str(r["question_id"]), int(r.get("turn") or 1), r.get("sample", 0))].append(
                    float(score))
    return {k: float(np.mean(v)) for k, v in per.items()}


def judge_agreement(records: list[dict], judge_a: str, judge_b: str) -> dict:
    """`ja_instruct.stats.agreement` of two judges over the items both judged (see module doc)."""
    a, b = item_scores(records, judge_a), item_scores(records, judge_b)
    common = sorted(set(a) & set(b), key=str)
    x, y = [a[k] for k in common], [b[k] for k in common]
    ordinal = all(float(v).is_integer() for v in x + y)
    return stats.agreement(x, y, ordinal=ordinal)


def panel_summary(records: list[dict], models: list[str], judges: list[str], bootstrap: int = 200,
                  seed: int = 0) -> dict:
    """``{"judges", "panel", "agreement"}`` of the single-mode ``records`` (see module doc)."""
    from ja_instruct.judge.summary import scale_label

    single = [r for r in records if r.get("mode") == "single"]
    per_judge = {j: _judge_blocks([r for r in single if r.get("judge") == j], models, bootstrap, seed)
                 for j in judges}
    scales: dict[str, list[dict]] = defaultdict(list)
    for r in single:
        scales[scale_label(r)].append(r)
    agreement = {}
    for ja, jb in combinations(judges, 2):
        if len(scales) <= 1:
            agreement[f"{ja} vs {jb}"] = judge_agreement(single, ja, jb)
        else:
            agreement[f"{ja} vs {jb}"] = {"scale": "mixed", "by_scale": {
                label: judge_agreement(recs, ja, jb) for label, recs in sorted(scales.items())}}
    return {"judges": per_judge, "panel": _panel_mean(per_judge, models), "agreement": agreement}
