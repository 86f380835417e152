"""The report's "Preference tuning" section: how a DPO model was trained, from its train run.

Read only from the train stage's documented outputs (`ja_instruct.report.load._train_run`):
``manifest.json``'s ``details["method"] == "dpo"`` and ``details["dpo"]``::

    {"beta", "loss", "label_smoothing", "sft_weight",
     "pairs": {"train", "heldout", "path", "fingerprint", "meta": {"license", "judge", "judge_terms"}},
     "reference": {"cache", "reused"},
     "eval": [{"step", "accuracy", "margin", "loss", "pairs"}, ...],   # held-out pairs, step 0 first
     "train_last": {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "loss"}}

and the run's ``metrics.jsonl`` (per-step rewards, held-out evaluations) for the figure. A report
without a DPO model has no such section, and its files are exactly what they were before.

The held-out figures are the judge-free evidence that DPO learnt the judge's preferences on pairs
it never trained on: at step 0 the policy IS the reference, so every implicit reward is 0 (margin
0); a margin and an accuracy that rise on the held-out pairs mean it generalised. They say nothing
about answer quality beyond the judge's labels: the verdicts above compare the answers themselves.
"""

from __future__ import annotations

import math
from typing import Any

from ja_instruct.report.load import ReportData

# train_last keys, in the order shown, and how they read
TRAIN_LAST = (("rewards/chosen", "reward of the chosen answers"), ("rewards/rejected", "reward of the rejected answers"),
              ("rewards/margins", "reward margin (chosen - rejected)"),
              ("rewards/accuracies", "preference accuracy (chosen reward > rejected)"), ("loss", "loss"))
EVAL_ROWS = (("accuracy", "preference accuracy (chosen reward > rejected)"),
             ("margin", "reward margin (chosen - rejected)"), ("loss", "loss"))


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _eval(rec: Any) -> dict | None:
    if not isinstance(rec, dict):
        return None
    return {"step": rec.get("step"), "pairs": rec.get("pairs"), **{k: _num(rec.get(k)) for k, _ in EVAL_ROWS}}


def preference_blocks(data: ReportData, models: list[str]) -> dict[str, dict]:
    """summary.json's ``preference``: per DPO model among ``models``, its settings, pairs, judge,
    the held-out evaluation at step 0 and at the end, and the last training rewards."""
    out = {}
    for m in models:
        info = data.models.get(m)
        p = info.preference if info is not None else None
        if not p:
            continue
        pairs = p.get("pairs") if isinstance(p.get("pairs"), dict) else {}
        meta = pairs.get("meta") if isinstance(pairs.get("meta"), dict) else {}
        evals = [e for e in (_eval(r) for r in p.get("eval") or []) if e is not None]
        last = p.get("train_last") if isinstance(p.get("train_last"), dict) else {}
        ref = p.get("reference") if isinstance(p.get("reference"), dict) else {}
        out[m] = {
            "method": "dpo", "from": info.train_model,
            **{k: p.get(k) for k in ("beta", "loss", "label_smoothing", "sft_weight")},
            "pairs": {"train": pairs.get("train"), "heldout": pairs.get("heldout"), "path": pairs.get("path"),
                      "judge": meta.get("judge"), "license": meta.get("license"),
                      "judge_terms": meta.get("judge_terms")},
            "reference": {"cache": ref.get("cache"), "reused": ref.get("reused")},
            "eval_start": evals[0] if evals else None,
            "eval_end": evals[-1] if len(evals) > 1 else None,
            "train_last": {k: _num(last.get(k)) for k, _ in TRAIN_LAST if k in last},
        }
    return out


def _f(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _settings(b: dict) -> str:
    loss = {"sigmoid": "sigmoid (DPO)", "ipo": "IPO"}.get(str(b.get("loss")), str(b.get("loss") or "–"))
    out = f"loss {loss}, beta {b.get('beta', '–')}"
    if _num(b.get("label_smoothing")):  # 0 / absent: plain DPO, not worth a word
        out += f", label smoothing {b['label_smoothing']:g}"
    if _num(b.get("sft_weight")):
        out += f", SFT term weight {b['sft_weight']:g}"
    return out


def headline(model: str, b: dict) -> str | None:
    """One sentence: the held-out preference accuracy and reward margin before and after DPO."""
    s, e = b["eval_start"], b["eval_end"]
    if not s or not e:
        return None
    return (f"{model}: held-out preference accuracy {_f(s['accuracy'])} -> {_f(e['accuracy'])}, reward margin "
            f"{_f(s['margin'], True)} -> {_f(e['margin'], True)} (step {s['step']} -> {e['step']}, "
            f"{e.get('pairs') or b['pairs']['heldout'] or '?'} held-out pairs never trained on).")


def preference_context(blocks: dict[str, dict], figures: dict[str, str] | None = None) -> list[dict]:
    """The section as strings: per DPO model its lines, the held-out table and the last rewards."""
    out = []
    for m, b in blocks.items():
        pr = b["pairs"]
        lines = [f"Trained from {b['from'] or 'unknown'} with {_settings(b)}.",
                 f"Pairs: {pr['train'] if pr['train'] is not None else '?'} train, "
                 f"{pr['heldout'] if pr['heldout'] is not None else '?'} held out"
                 + (f", from {pr['path']}" if pr["path"] else "") + ".",
                 f"Labelled by the judge {pr['judge'] or 'unknown'}"
                 + (f" (terms: {pr['judge_terms']})" if pr["judge_terms"] else "")
                 + (f"; prompts' licence: {pr['license']}" if pr["license"] else "") + "."]
        ref = b["reference"]
        if ref.get("cache"):
            lines.append(f"Reference log-probabilities: {ref['cache']}"
                         + (" (reused from the cache)" if ref.get("reused") else " (computed for this run)") + ".")
        s, e = b["eval_start"] or {}, b["eval_end"] or {}
        table = []
        if s:
            table = [[label, _f(s.get(k), k == "margin"), _f(e.get(k), k == "margin") if e else "–"]
                     for k, label in EVAL_ROWS]
        out.append({"model": m, "lines": lines, "headline": headline(m, b),
                    "steps": [str(s.get("step", "–")), str(e.get("step", "–")) if e else "–"],
                    "eval": table,
                    "train_last": [[label, _f(b["train_last"][k], k in ("rewards/chosen", "rewards/rejected",
                                                                         "rewards/margins"))]
                                   for k, label in TRAIN_LAST if k in b["train_last"]],
                    "figure": (figures or {}).get(f"dpo:{m}")})
    return out


def preference_md(sections: list[dict]) -> list[str]:
    """summary.md's "Preference tuning" section (empty list without a DPO model)."""
    if not sections:
        return []
    out = ["## Preference tuning", ""]
    for sec in sections:
        out += [f"### {sec['model']}", ""] + [f"- {x}" for x in sec["lines"]] + [""]
        if sec["headline"]:
            out += [sec["headline"], ""]
        if sec["eval"]:
            out += ["| held-out pairs | step " + sec["steps"][0] + " | step " + sec["steps"][1] + " |",
                    "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in sec["eval"]] + [""]
        if sec["train_last"]:
            out += ["Last training steps (mean over the last 10% of steps): "
                    + "; ".join(f"{a} {b}" for a, b in sec["train_last"]) + ".", ""]
    return out


def curves(steps: list[dict]) -> dict[str, list]:
    """Per-step series of a DPO run's metrics.jsonl, the last line kept for a step logged twice
    (a resumed run repeats the steps after its checkpoint)."""
    train, ev = {}, {}
    for r in steps:
        if not isinstance(r, dict) or not isinstance(r.get("step"), int):
            continue
        if r.get("eval"):
            ev[r["step"]] = r
        elif _num(r.get("rewards/margins")) is not None:
            train[r["step"]] = r
    ts, es = sorted(train), sorted(ev)
    return {"step": ts, "margin": [_num(train[s].get("rewards/margins")) for s in ts],
            "accuracy": [_num(train[s].get("rewards/accuracies")) for s in ts],
            "eval_step": es, "eval_margin": [_num(ev[s].get("eval/margin")) for s in es],
            "eval_accuracy": [_num(ev[s].get("eval/accuracy")) for s in es]}
