"""Did tuning help? Judge-free signals per model, and one verdict per signal against the base.

**Roles.** Tuned models are those the generate stage answered with ``path: trained``. The base
is `ReportConfig.baseline` when set, else the generate model whose ``path`` is the train config's
``model`` (the model the tuned one started from). Without a base nothing is compared, and the
report says so.

**Signals** (what each number means is in `definitions`, shown beside it everywhere):

* held-out reference NLL per token (``reference_nll.json`` beside the answers; lower is better);
* answer health shares over answer turns: ended by EOS (higher is better), in Japanese (among
  non-empty turns; higher is better), looping (lower is better);
* the judge's mean score (higher is better; a demo judge's says little).

**Verdict rule** (tuned vs base, per signal): for the NLL and the judge score, the interval of the
paired difference (tuned - base over the references / questions both have, cluster bootstrap,
`ja_instruct.stats.paired_ratio_difference`) at the report's confidence level: wholly on the
better side of 0 = "helped", wholly on the worse side = "hurt", containing 0 = "no clear
difference". For the shares, which count every answer rather than estimate from a sample, a
plain comparison with the counts shown: better share = "helped", worse = "hurt", equal = "no
clear difference".

Every verdict is a record (`summary.json`'s ``verdicts``); summary.md and index.html print the
record's ``sentence``, so the files cannot disagree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.load import TRAINED, ModelInfo, ReportData
from ja_instruct.report.stats import ModelScores, turn_flags
from ja_instruct.stats import ci_key, is_ok, paired_ratio_difference

HELPED, HURT, UNCLEAR = "helped", "hurt", "no clear difference"
HEALTH_SIGNALS = ("eos", "japanese", "loop")
LABELS = {"reference_nll": "Held-out NLL", "eos": "Ended by EOS", "japanese": "In Japanese", "loop": "Looping",
          "judge": "Judge score"}
# signal -> (key in a model's health block, count key, total key, higher is better)
_SHARES = {"eos": ("eos_share", "eos", "turns", True), "japanese": ("japanese_share", "japanese", "non_empty", True),
           "loop": ("loop_share", "loop", "turns", False)}


def definitions(cfg: ReportConfig) -> dict[str, str]:
    """One line per signal: what the number means and which direction is better."""
    return {
        "reference_nll": "Mean negative log-likelihood per token of held-out reference answers (assistant tokens "
                         "only, each model's own chat template); perplexity = exp(NLL). Lower is better.",
        "eos": "Share of answer turns that ended by themselves (EOS or a stop string) before max_new_tokens. "
               "Higher is better.",
        "japanese": f"Share of non-empty answer turns whose Japanese-character share is at least "
                    f"{cfg.min_ja_ratio:g}. Higher is better.",
        "loop": f"Share of answer turns flagged as a loop by the generate stage or whose repeated n-gram share is "
                f"at least {cfg.max_repeat_ratio:g}. Lower is better.",
        "judge": "Mean judge score (single-answer grading, 1-10). Higher is better.",
    }


def _clean(x):
    """None for NaN/missing (JSON has no NaN), else a float."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def health_signals(answers: dict[str, dict], min_ja_ratio: float, max_repeat_ratio: float) -> dict | None:
    """Shares of answer turns that ended by EOS (not truncated), are in Japanese (``ja_ratio >=
    min_ja_ratio`` among non-empty turns), loop, were truncated; with their counts. None when the
    answers carry no ``health`` records."""
    c = dict.fromkeys(("turns", "eos", "truncated", "loop", "non_empty", "japanese"), 0)
    for a in answers.values():
        for h in a.get("health") or []:
            if not isinstance(h, dict):
                continue
            flags = turn_flags(h, min_ja_ratio, max_repeat_ratio)
            c["turns"] += 1
            c["truncated"] += "truncated" in flags
            c["eos"] += "truncated" not in flags
            c["loop"] += "looping" in flags
            if not h.get("empty"):  # an empty turn is empty, not "not Japanese"
                c["non_empty"] += 1
                c["japanese"] += h.get("ja_ratio") is not None and float(h["ja_ratio"]) >= min_ja_ratio
    if not c["turns"]:
        return None
    n = c["turns"]
    return {"turns": n, "eos_share": c["eos"] / n,
            "japanese_share": c["japanese"] / c["non_empty"] if c["non_empty"] else None,
            "loop_share": c["loop"] / n, "truncated_share": c["truncated"] / n, "counts": c}


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


def find_roles(data: ReportData, cfg: ReportConfig) -> tuple[str | None, dict[str, str | None], list[str]]:
    """(base model id or None, model id -> "base" | "tuned" | None, notes on what could not be decided)."""
    trained = [m for m, i in sorted(data.models.items()) if i.spec.get("path") == TRAINED]
    notes: list[str] = []
    if cfg.baseline is not None:
        if cfg.baseline not in data.models:
            raise UserError(f"the baseline model '{cfg.baseline}' is not among the reported models",
                            field="report.baseline", hint=f"Use one of: {', '.join(sorted(data.models))}.")
        base = cfg.baseline
    else:
        starts = {data.models[m].train_model for m in trained if data.models[m].train_model}
        cands = [m for m, i in sorted(data.models.items())
                 if m not in trained and any(_same_model(_spec_path(i), s) for s in starts)]
        base = cands[0] if len(cands) == 1 else None
        if len(cands) > 1:
            notes.append(f"Several models were generated from the train config's base model ({', '.join(cands)}): "
                         "nothing is compared. Set report.baseline to one of them.")
        elif base is None:
            notes.append("No base model found (the generate model whose path is the train config's `model`): "
                         "nothing is compared. Set report.baseline to name one.")
    tuned = [m for m in trained if m != base]
    if base is not None and not tuned:
        notes.append(f"No tuned model (generated with `path: trained`) to compare with the base {base}.")
    roles = {m: "base" if m == base else "tuned" if m in tuned else None for m in data.models}
    return base, roles, notes


def _nll_block(e: dict | None) -> dict | None:
    if e is None or "unavailable" in e:
        return None
    return {"mean_nll": float(e["mean_nll"]), "perplexity": float(e["perplexity"]), "tokens": int(e["tokens"]),
            "conversations": int(e["conversations"])}


def _nll_note(data: ReportData, m: str) -> str | None:
    e = data.reference_nll.get(m)
    if e is None:
        return "no reference_nll.json beside the answers" if not data.reference_nll_files \
            else "model not in reference_nll.json"
    return f"unavailable: {e['unavailable']}" if "unavailable" in e else None


def _paired(pairs: list[tuple[float, float, float, float]], n_boot: int, seed: int, ci: float) -> dict | None:
    if not pairs:
        return None
    res = paired_ratio_difference(*zip(*pairs), bootstrap=n_boot, seed=seed, levels=(ci,))
    return None if res is None else {"shared": res["n"], "lower": res["lower"], "higher": res["higher"],
                                     "difference": res["difference"], "ci": res[ci_key(ci)], "ci_level": ci}


def nll_comparison(base: dict, tuned: dict, n_boot: int, seed: int, ci: float) -> dict | None:
    """Paired comparison of two models' reference NLL entries over the references both measured:
    how many have a lower per-token NLL with the tuned model, and the interval of the difference in
    token-weighted mean NLL (tuned - base; conversations resampled)."""
    b = {str(c["id"]): c for c in base.get("per_conversation") or []}
    t = {str(c["id"]): c for c in tuned.get("per_conversation") or []}
    return _paired([(b[i]["nll"], b[i]["tokens"], t[i]["nll"], t[i]["tokens"]) for i in b if i in t],
                   n_boot, seed, ci)


def judge_comparison(judgments: list[dict], base: str, tuned: str, n_boot: int, seed: int, ci: float) -> dict | None:
    """Paired comparison of two models' mean judge scores over the questions both were graded on
    (difference tuned - base; questions resampled)."""
    sums: dict[str, dict[str, list[float]]] = {base: defaultdict(lambda: [0.0, 0.0]),
                                               tuned: defaultdict(lambda: [0.0, 0.0])}
    for r in judgments:
        if r.get("mode") == "single" and r.get("model") in sums and is_ok(r) and r.get("score") is not None:
            s = sums[r["model"]][str(r["question_id"])]
            s[0] += float(r["score"])
            s[1] += 1
    shared = [q for q in sums[base] if q in sums[tuned]]
    return _paired([(*sums[base][q], *sums[tuned][q]) for q in shared], n_boot, seed, ci)


def _ci_verdict(ci, lower_is_better: bool) -> str:
    if not ci:
        return UNCLEAR
    if ci[1] < 0:
        return HELPED if lower_is_better else HURT
    if ci[0] > 0:
        return HURT if lower_is_better else HELPED
    return UNCLEAR


def num(x: float) -> str:
    """A compact number for a sentence: 2 decimals, more significant digits for tiny values."""
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.095 else f"{x:.2g}"


def _ci_text(ev: dict) -> str:
    lo, hi = ev["ci"]
    return f"difference CI [{num(lo)}, {num(hi)}]" + (" includes 0" if lo <= 0 <= hi else "")


def sentence(rec: dict, named: bool = False) -> str:
    """The one-line verdict of a verdict record (the only place sentences are made)."""
    sig, ev, v = rec["signal"], rec["evidence"], rec["verdict"]
    head = LABELS[sig] + (f" ({rec['model']} vs {rec['baseline']})" if named else "")
    says = f"tuning {v}" if v in (HELPED, HURT) else v
    b, t = rec["base_value"], rec["tuned_value"]
    if sig in _SHARES:
        what = "of non-empty answers" if sig == "japanese" else "of answers"
        better = "higher" if _SHARES[sig][3] else "lower"
        return (f"{head}: {says}: {100 * b:.0f}% -> {100 * t:.0f}% {what} ({ev['base_count']} of {ev['base_total']}"
                f" -> {ev['tuned_count']} of {ev['tuned_total']} turns; {better} is better).")
    if sig == "reference_nll":
        detail = (f"lower on {ev['lower']} of {ev['shared']} references, {_ci_text(ev)}" if ev.get("ci")
                  else "no per-reference NLLs to pair")
        return f"{head}: {says}: {num(b)} -> {num(t)} per token (lower is better; {detail})."
    detail = f"{_ci_text(ev)} over {ev['shared']} questions" if ev.get("ci") else "no questions graded for both"
    demo = " — demo judge, not a real evaluation" if ev.get("demo_judge") else ""
    return f"{head}: {says}: {num(b)} -> {num(t)} (higher is better; {detail}){demo}."


def _verdicts(base: str, tuned: str, data: ReportData, blocks: dict, cfg: ReportConfig,
              judge_boot: tuple[int, int], demo: bool) -> tuple[list[dict], list[str]]:
    """The verdict records of one tuned model (signal order: demo judge -> judge last), and notes."""
    recs, notes = [], []

    def rec(signal, bv, tv, verdict, evidence):
        recs.append({"signal": signal, "model": tuned, "baseline": base, "base_value": bv, "tuned_value": tv,
                     "verdict": verdict, "evidence": evidence})

    nb, nt = blocks[base]["reference_nll"], blocks[tuned]["reference_nll"]
    if nb and nt:
        ev = nll_comparison(data.reference_nll[base], data.reference_nll[tuned], cfg.bootstrap, cfg.seed, cfg.ci) \
            or {"shared": 0}
        rec("reference_nll", nb["mean_nll"], nt["mean_nll"], _ci_verdict(ev.get("ci"), True), ev)
    else:
        miss = {m: blocks[m]["reference_nll_note"] for m in (base, tuned) if not blocks[m]["reference_nll"]}
        why = next(iter(miss.values())) if len(set(miss.values())) == 1 and len(miss) == 2 \
            else "; ".join(f"{m}: {n}" for m, n in miss.items())  # the same reason for both: said once
        notes.append(f"{LABELS['reference_nll']}: n/a ({why}).")
    hb, ht = blocks[base]["health"], blocks[tuned]["health"]
    for sig, (key, cnt, tot, higher) in _SHARES.items():
        if not hb or not ht or hb[key] is None or ht[key] is None:
            notes.append(f"{LABELS[sig]}: n/a (answers without health records).")
            continue
        cb, tb, ct, tt = hb["counts"][cnt], hb["counts"][tot], ht["counts"][cnt], ht["counts"][tot]
        diff = ct * tb - cb * tt  # sign of tuned share - base share, in exact integers
        verdict = UNCLEAR if diff == 0 else HELPED if (diff > 0) == higher else HURT
        rec(sig, hb[key], ht[key], verdict, {"base_count": cb, "base_total": tb, "tuned_count": ct,
                                             "tuned_total": tt})
    jb, jt = blocks[base]["judge"], blocks[tuned]["judge"]
    if jb and jt and jb["mean"] is not None and jt["mean"] is not None:
        ev = judge_comparison(data.judgments, base, tuned, *judge_boot, cfg.ci) or {"shared": 0}
        rec("judge", jb["mean"], jt["mean"], _ci_verdict(ev.get("ci"), False), {**ev, "demo_judge": demo})
    if not demo:  # a real judge leads
        recs.sort(key=lambda r: r["signal"] != "judge")
    return recs, notes


def build_summary(data: ReportData, models: list[str], scores: dict[str, ModelScores], cfg: ReportConfig,
                  title: str, demo_judge: bool, judge_boot: tuple[int, int]) -> dict:
    """The content of summary.json: roles, per-model signals, verdicts (with sentences), definitions.

    ``judge_boot`` is the (bootstrap, seed) of the judge statistics (`bootstrap_params`); the NLL
    comparison uses the report config's."""
    base, roles, notes = find_roles(data, cfg)
    shown = ([base] if base is not None and base not in models else []) + list(models)
    order = sorted(shown, key=lambda m: {"base": 0, "tuned": 1}.get(roles.get(m), 2))  # stable: display order kept
    blocks = {}
    for m in order:
        s = scores.get(m)
        blocks[m] = {
            "role": roles.get(m),
            "judge": {"mean": _clean(s.mean), "ci": [_clean(c) for c in s.ci] if _clean(s.ci[0]) is not None
                      else None, "n": s.n} if s else None,
            "reference_nll": _nll_block(data.reference_nll.get(m)),
            "reference_nll_note": _nll_note(data, m),
            "health": health_signals(data.answers.get(m, {}), cfg.min_ja_ratio, cfg.max_repeat_ratio),
        }
    tuned = [m for m in order if roles.get(m) == "tuned"]
    verdicts: list[dict] = []
    if base is not None:
        for t in tuned:
            recs, why = _verdicts(base, t, data, blocks, cfg, judge_boot, demo_judge)
            verdicts += recs
            notes += [n for n in why if n not in notes]
    for r in verdicts:
        r["sentence"] = sentence(r, named=len(tuned) > 1)
    return {"title": title, "demo_judge": demo_judge, "baseline": base, "models": blocks, "verdicts": verdicts,
            "notes": notes, "definitions": definitions(cfg),
            "reference_nll_files": data.reference_nll_files}


def signal_table(summary: dict) -> dict:
    """The judge-free signals table (rows = signals, columns = models: base, tuned, others), as strings."""
    models = list(summary["models"])
    by = {(v["signal"], v["model"]): v for v in summary["verdicts"]}
    rows = []
    for sig in ("reference_nll",) + HEALTH_SIGNALS:
        cells = []
        for m in models:
            blk = summary["models"][m]
            if sig == "reference_nll":
                n = blk["reference_nll"]
                value = f"{n['mean_nll']:.3f}" if n else "n/a"
                detail = (f"perplexity {n['perplexity']:.2f} · {n['tokens']:,} tokens · {n['conversations']} conv."
                          if n else blk["reference_nll_note"] or "")
            else:
                h = blk["health"]
                key, cnt, tot, _ = _SHARES[sig]
                ok = h is not None and h[key] is not None
                value = f"{100 * h[key]:.0f}%" if ok else "n/a"
                unit = "non-empty turns" if sig == "japanese" else "turns"
                detail = f"{h['counts'][cnt]} of {h['counts'][tot]} {unit}" if ok else "no health records"
            v = by.get((sig, m))
            vs = None
            if v is not None:
                ev = v["evidence"]
                vs = f"vs {v['baseline']}: {v['verdict']}"
                if sig == "reference_nll" and ev.get("ci"):
                    vs += (f" (lower on {ev['lower']}/{ev['shared']}; Δ {num(ev['difference'])} "
                           f"[{num(ev['ci'][0])}, {num(ev['ci'][1])}])")
            cells.append({"value": value, "detail": detail, "vs": vs, "verdict": v["verdict"] if v else None})
        rows.append({"signal": sig, "label": LABELS[sig], "meaning": summary["definitions"][sig], "cells": cells})
    return {"models": [{"id": m, "role": summary["models"][m]["role"]} for m in models], "rows": rows}
