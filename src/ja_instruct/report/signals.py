"""Did tuning help? Judge-free signals per model, and one verdict per signal against the base.

**Roles** (who is the base, who was tuned from whom): `ja_instruct.report.lineage`. Every
comparison it names, (base, tuned) or each step of base -> SFT -> DPO, gets the verdicts below.

**Signals** (what each number means is in `definitions`, shown beside it everywhere):

* reference NLL per token (``reference_nll.json`` beside the answers; lower is better). It is
  labelled "Held-out NLL" only when the file says its references are the data stage's held-out
  split (``references.heldout: true``); otherwise "Reference NLL (<source>)", or plain
  "Reference NLL" when the file does not say;
* answer health shares over ALL answer turns: ended by itself with a non-empty answer (higher is
  better), in Japanese (an empty turn is not Japanese; higher is better), looping (lower is
  better). The share of empty turns is shown beside them, without a verdict of its own: it
  already lowers the first two, so a model that answers nothing cannot look healthy;
* the judge's mean score (higher is better; a demo judge's says little), on the main table's
  grading scale only (never averaged across scales).

**Verdict rule** (tuned vs base, per signal, the same for all): the interval of the paired
difference tuned - base at the report's confidence level (`ja_instruct.stats.paired_ratio_difference`,
cluster bootstrap over the units both models have: references for the NLL, questions for the
judge score and for the shares, where a question counts its turns: matching turns over turns):
wholly on the better side of 0 = "helped", wholly on the worse side = "hurt", containing 0 =
"no clear difference". With fewer than `MIN_PAIRED` paired units the interval means nothing
(one unit gives a zero-width one), so the verdict is "no clear difference" and the sentence
says there are too few to tell.

Every verdict is a record (`summary.json`'s ``verdicts``); summary.md and index.html print the
record's ``sentence``, so the files cannot disagree.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ja_instruct.judge.summary import scale_label
from ja_instruct.report.config import ReportConfig
from ja_instruct.report.lineage import find_lineage, find_roles, step_name  # noqa: F401 (find_roles: API)
from ja_instruct.report.load import ReportData
from ja_instruct.report.preference import preference_blocks
from ja_instruct.report.stats import ModelScores, health_signals, question_health
from ja_instruct.stats import ci_key, is_ok, paired_ratio_difference

HELPED, HURT, UNCLEAR = "helped", "hurt", "no clear difference"
# Fewer paired units than this and no verdict is given: a bootstrap over 1-4 references or
# questions has (nearly) nothing to resample, and its interval would claim a certainty it lacks.
MIN_PAIRED = 5
HEALTH_SIGNALS = ("eos", "japanese", "loop")  # the shares that get a verdict
LABELS = {"reference_nll": "Reference NLL", "eos": "Ended by EOS", "japanese": "In Japanese", "loop": "Looping",
          "empty": "Empty answers", "judge": "Judge score"}
HELDOUT_LABEL = "Held-out NLL"
# signal -> (key in a model's health block, count key (over "turns"), higher is better)
_SHARES = {"eos": ("eos_share", "eos", True), "japanese": ("japanese_share", "japanese", True),
           "loop": ("loop_share", "loop", False)}
_SHOWN = {**_SHARES, "empty": ("empty_share", "empty", False)}  # the table's share rows


def _heldout(nll_files: list[dict]) -> bool | None:
    """True when every reference file says its references are the held-out split, False when every
    one says they are not, None when unknown (no file, a file that does not say, or a mix)."""
    flags = {f.get("heldout") for f in nll_files}
    return flags.pop() if len(flags) == 1 and flags <= {True, False} else None


def nll_label(nll_files: list[dict]) -> str:
    """The NLL signal's name: "Held-out NLL" only for the data stage's held-out split."""
    held = _heldout(nll_files)
    if held:
        return HELDOUT_LABEL
    sources = {f.get("source") for f in nll_files}
    if held is False and len(sources) == 1 and None not in sources:
        return f"{LABELS['reference_nll']} ({sources.pop()})"
    return LABELS["reference_nll"]


def labels(nll_files: list[dict]) -> dict[str, str]:
    """Each signal's name as the report prints it (the NLL's depends on the references)."""
    return {**LABELS, "reference_nll": nll_label(nll_files)}


def definitions(cfg: ReportConfig, nll_files: list[dict] = ()) -> dict[str, str]:
    """One line per signal: what the number means and which direction is better."""
    held = _heldout(list(nll_files))
    sources = sorted({str(f["source"]) for f in nll_files if f.get("source")})
    how = "Assistant tokens only, each model's own chat template; perplexity = exp(NLL)."
    if held:
        nll = (f"Mean negative log-likelihood per token of held-out reference answers: the data stage's held-out "
               f"split, never trained on. {how}")
    elif held is False:
        nll = (f"Mean negative log-likelihood per token of the reference answers of {', '.join(sources) or 'the file'}"
               f", not the data stage's evaluation split: training may have seen them. {how}")
    else:
        nll = (f"Mean negative log-likelihood per token of reference answers; whether training saw them is not "
               f"recorded. {how}")
    return {
        "reference_nll": nll + " Lower is better.",
        "eos": "Share of answer turns where the model ended by itself with a non-empty answer (EOS or a stop "
               "string before max_new_tokens); an empty or cut-off turn does not count. Higher is better.",
        "japanese": f"Share of all answer turns whose Japanese-character share is at least {cfg.min_ja_ratio:g} "
                    "(an empty turn is not Japanese). Higher is better.",
        "loop": f"Share of answer turns flagged as a loop by the generate stage or whose repeated n-gram share is "
                f"at least {cfg.max_repeat_ratio:g}. Lower is better.",
        "empty": "Share of answer turns with no text (shown, not judged: it already lowers the EOS and Japanese "
                 "shares). Lower is better.",
        "judge": "Mean judge score (single-answer grading, 1-10). Higher is better.",
    }


def _clean(x):
    """None for NaN/missing (JSON has no NaN), else a float."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


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
                                     "difference": res["difference"], "ci": res[ci_key(ci)], "ci_level": ci,
                                     "base": res["base"], "tuned": res["new"]}


def nll_comparison(base: dict, tuned: dict, n_boot: int, seed: int, ci: float) -> dict | None:
    """Paired comparison of two models' reference NLL entries over the references both measured:
    how many have a lower per-token NLL with the tuned model, and the interval of the difference in
    token-weighted mean NLL (tuned - base; conversations resampled)."""
    b = {str(c["id"]): c for c in base.get("per_conversation") or []}
    t = {str(c["id"]): c for c in tuned.get("per_conversation") or []}
    return _paired([(b[i]["nll"], b[i]["tokens"], t[i]["nll"], t[i]["tokens"]) for i in b if i in t],
                   n_boot, seed, ci)


def judge_comparison(judgments: list[dict], base: str, tuned: str, n_boot: int, seed: int, ci: float,
                     scale: str | None = None) -> dict | None:
    """Paired comparison of two models' mean judge scores over the questions both were graded on
    (difference tuned - base; questions resampled), on one grading ``scale`` (``"1-10"``; None:
    every single-mode judgment, for callers that know there is one scale)."""
    sums: dict[str, dict[str, list[float]]] = {base: defaultdict(lambda: [0.0, 0.0]),
                                               tuned: defaultdict(lambda: [0.0, 0.0])}
    for r in judgments:
        if scale is not None and r.get("mode") == "single" and scale_label(r) != scale:
            continue  # never average across scales
        if r.get("mode") == "single" and r.get("model") in sums and is_ok(r) and r.get("score") is not None:
            s = sums[r["model"]][str(r["question_id"])]
            s[0] += float(r["score"])
            s[1] += 1
    shared = [q for q in sums[base] if q in sums[tuned]]
    return _paired([(*sums[base][q], *sums[tuned][q]) for q in shared], n_boot, seed, ci)


def share_comparison(base: dict[str, dict], tuned: dict[str, dict], count: str, n_boot: int, seed: int,
                     ci: float) -> dict | None:
    """Paired comparison of a health share over the questions both models answered (`question_health`
    of each; per question: turns counted ``count`` over its turns): the share of each side over those
    questions (``base_count`` of ``base_total`` turns, ...) and the interval of the difference
    (tuned - base; questions resampled). None when no question was answered by both."""
    shared = sorted(q for q in base if q in tuned)
    ev = _paired([(base[q][count], base[q]["turns"], tuned[q][count], tuned[q]["turns"]) for q in shared],
                 n_boot, seed, ci)
    if ev is None:
        return None
    return {**ev, **{f"{side}_{k}": sum(d[q][key] for q in shared) for side, d in (("base", base), ("tuned", tuned))
                     for k, key in (("count", count), ("total", "turns"))}}


def _ci_verdict(ci, lower_is_better: bool) -> str:
    if not ci:
        return UNCLEAR
    if ci[1] < 0:
        return HELPED if lower_is_better else HURT
    if ci[0] > 0:
        return HURT if lower_is_better else HELPED
    return UNCLEAR


def _judged(ev: dict | None, lower_is_better: bool) -> tuple[str, dict]:
    """(verdict, evidence) by the module's rule; too few paired units: no interval, no verdict."""
    ev = dict(ev or {"shared": 0})
    if ev["shared"] < MIN_PAIRED:
        ev.update(ci=None, too_few=True, min_paired=MIN_PAIRED)
    return _ci_verdict(ev.get("ci"), lower_is_better), ev


def num(x: float) -> str:
    """A compact number for a sentence: 2 decimals, more significant digits for tiny values."""
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.095 else f"{x:.2g}"


def signed(x: float) -> str:
    """`num` with a "+" on positive values (a difference)."""
    return ("+" if x > 0 else "") + num(x)


def _ci_text(ev: dict) -> str:
    lo, hi = ev["ci"]
    return f"difference CI [{signed(lo)}, {signed(hi)}]" + (" includes 0" if lo <= 0 <= hi else "")


def _detail(ev: dict, none: str) -> str:
    """The interval, or why there is none."""
    if ev.get("ci"):
        return _ci_text(ev)
    return f"too few ({ev['shared']}) to tell" if ev.get("shared") else none


def sentence(rec: dict, named: bool = False) -> str:
    """The one-line verdict of a verdict record (the only place sentences are made)."""
    sig, ev, v = rec["signal"], rec["evidence"], rec["verdict"]
    pair = f"{rec['model']} vs {rec['baseline']}"
    head = rec.get("label", LABELS[sig]) + (f" ({rec['step']}: {pair})" if "step" in rec else f" ({pair})" if named
                                             else "")
    says = f"tuning {v}" if v in (HELPED, HURT) else v
    b, t = rec["base_value"], rec["tuned_value"]
    if sig in _SHARES:
        better = "higher" if _SHARES[sig][2] else "lower"
        return (f"{head}: {says}: {ev['base_count']} of {ev['base_total']} ({100 * b:.0f}%) -> {ev['tuned_count']} "
                f"of {ev['tuned_total']} ({100 * t:.0f}%) answers on {ev['shared']} questions, "
                f"{_detail(ev, 'no question answered by both')} ({better} is better).")
    if sig == "reference_nll":
        detail = _detail(ev, "no per-reference NLLs to pair")
        if ev.get("shared"):
            detail = f"lower on {ev['lower']} of {ev['shared']} references, {detail}"
        return f"{head}: {says}: {num(b)} -> {num(t)} per token (lower is better; {detail})."
    detail = _detail(ev, "no questions graded for both")
    if ev.get("shared"):
        detail = f"{ev['shared']} questions graded for both, {detail}"
    demo = " — demo judge, not a real evaluation" if ev.get("demo_judge") else ""
    return f"{head}: {says}: {num(b)} -> {num(t)} (higher is better; {detail}){demo}."


def _verdicts(base: str, tuned: str, data: ReportData, blocks: dict, cfg: ReportConfig,
              judge_boot: tuple[int, int], demo: bool, names: dict[str, str]) -> tuple[list[dict], list[str]]:
    """The verdict records of one tuned model (signal order: demo judge -> judge last), and notes."""
    recs, notes = [], []

    def rec(signal, bv, tv, judged):
        verdict, evidence = judged
        recs.append({"signal": signal, "label": names[signal], "model": tuned, "baseline": base, "base_value": bv,
                     "tuned_value": tv, "verdict": verdict, "evidence": evidence})

    nb, nt = blocks[base]["reference_nll"], blocks[tuned]["reference_nll"]
    if nb and nt:
        ev = nll_comparison(data.reference_nll[base], data.reference_nll[tuned], cfg.bootstrap, cfg.seed, cfg.ci)
        # the values over the references both scored: those the difference and its interval are about
        rec("reference_nll", ev["base"] if ev else nb["mean_nll"], ev["tuned"] if ev else nt["mean_nll"],
            _judged(ev, True))
    else:
        miss = {m: blocks[m]["reference_nll_note"] for m in (base, tuned) if not blocks[m]["reference_nll"]}
        why = next(iter(miss.values())) if len(set(miss.values())) == 1 and len(miss) == 2 \
            else "; ".join(f"{m}: {n}" for m, n in miss.items())  # the same reason for both: said once
        notes.append(f"{names['reference_nll']}: n/a ({why}).")
    qb, qt = (question_health(data.answers.get(m, {}), cfg.min_ja_ratio, cfg.max_repeat_ratio) for m in (base, tuned))
    for sig, (_, cnt, higher) in _SHARES.items():
        ev = share_comparison(qb, qt, cnt, cfg.bootstrap, cfg.seed, cfg.ci)
        if ev is None:
            notes.append(f"{names[sig]}: n/a (no question with health records for both).")
            continue
        # the shares over the questions both answered: the ones the interval is about
        rec(sig, ev["base_count"] / ev["base_total"], ev["tuned_count"] / ev["tuned_total"], _judged(ev, not higher))
    jb, jt = blocks[base]["judge"], blocks[tuned]["judge"]
    if jb and jt and jb["mean"] is not None and jt["mean"] is not None:
        paired = judge_comparison(data.judgments, base, tuned, *judge_boot, cfg.ci, scale=jb.get("scale"))
        verdict, ev = _judged(paired, False)
        rec("judge", paired["base"] if paired else jb["mean"], paired["tuned"] if paired else jt["mean"],
            (verdict, {**ev, "demo_judge": demo}))
        guard = _guard_note(data.judgments, base, tuned, jb.get("scale"))
        if guard:
            notes.append(guard)
    if not demo:  # a real judge leads
        recs.sort(key=lambda r: r["signal"] != "judge")
    return recs, notes


def _guard_note(judgments: list[dict], base: str, tuned: str, scale: str | None) -> str | None:
    """When the language guard capped answers of either model: how many, and both means without it,
    so a judge-score verdict is never read as the judge's alone."""
    capped, raw = {base: 0, tuned: 0}, {base: [], tuned: []}
    for r in judgments:
        if (r.get("mode") != "single" or r.get("model") not in raw or not is_ok(r)
                or (scale is not None and scale_label(r) != scale)):
            continue
        capped[r["model"]] += bool(r.get("guarded"))
        if r.get("score_unguarded") is not None:
            raw[r["model"]].append(float(r["score_unguarded"]))
    if not any(capped.values()) or not raw[base] or not raw[tuned]:
        return None
    return (f"Judge score: the language guard capped {capped[base]} answer(s) of {base} and {capped[tuned]} of "
            f"{tuned} that are not in Japanese at the lowest grade; without it the means are "
            f"{sum(raw[base]) / len(raw[base]):.2f} and {sum(raw[tuned]) / len(raw[tuned]):.2f}.")


def build_summary(data: ReportData, models: list[str], scores: dict[str, ModelScores], cfg: ReportConfig,
                  title: str, demo_judge: bool, judge_boot: tuple[int, int]) -> dict:
    """The content of summary.json: roles, per-model signals, verdicts (with sentences), labels, definitions.

    ``judge_boot`` is the (bootstrap, seed) of the judge statistics (`bootstrap_params`); the NLL
    and share comparisons use the report config's."""
    base, roles, notes, chain, pairs = find_lineage(data, cfg)
    names = labels(data.reference_nll_files)
    shown = [m for m in chain if m not in models] + list(models)
    rank = {m: i for i, m in enumerate(chain)}
    # base (and the models between it and the tuned ones), tuned, the rest; stable: display order kept
    order = sorted(shown, key=lambda m: rank.get(m, len(chain) + (roles.get(m) is None)))
    blocks = {}
    for m in order:
        s = scores.get(m)
        blocks[m] = {
            "role": roles.get(m),
            "judge": {"mean": _clean(s.mean), "ci": [_clean(c) for c in s.ci] if _clean(s.ci[0]) is not None
                      else None, "n": s.n, "scale": s.scale} if s else None,
            "reference_nll": _nll_block(data.reference_nll.get(m)),
            "reference_nll_note": _nll_note(data, m),
            "health": health_signals(data.answers.get(m, {}), cfg.min_ja_ratio, cfg.max_repeat_ratio),
        }
    pairs = [(b, t) for b, t in pairs if b in blocks and t in blocks]
    lineage = len(chain) > 1
    if not lineage:  # one step: the tuned models in display order
        pairs.sort(key=lambda p: order.index(p[1]))
    verdicts: list[dict] = []
    for b, t in pairs:
        recs, why = _verdicts(b, t, data, blocks, cfg, judge_boot, demo_judge, names)
        if lineage:
            for r in recs:
                r["step"] = step_name(roles, b, t)
        verdicts += recs
        notes += [n for n in why if n not in notes]
    for r in verdicts:
        r["sentence"] = sentence(r, named=len(pairs) > 1)
    out = {"title": title, "demo_judge": demo_judge, "baseline": base, "models": blocks, "verdicts": verdicts,
           "notes": notes, "labels": names, "definitions": definitions(cfg, data.reference_nll_files),
           "min_paired": MIN_PAIRED, "reference_nll_files": data.reference_nll_files}
    if lineage:  # only then: a one-step report's summary.json stays as it was
        out["lineage"] = [m for m in order if roles.get(m)]
        out["steps"] = [{"step": step_name(roles, b, t), "baseline": b, "model": t} for b, t in pairs]
    prefs = preference_blocks(data, order)
    if prefs:  # likewise: only a report with a DPO model has the section
        out["preference"] = prefs
    return out


def _vs(v: dict) -> str:
    """A table cell's comparison with the base: the verdict and its difference interval."""
    ev, out = v["evidence"], f"vs {v['baseline']}: {v['verdict']}"
    if ev.get("ci"):
        lead = f"lower on {ev['lower']}/{ev['shared']}; " if v["signal"] == "reference_nll" else ""
        out += f" ({lead}Δ {signed(ev['difference'])} [{signed(ev['ci'][0])}, {signed(ev['ci'][1])}])"
    elif ev.get("too_few"):
        out += f" (too few ({ev['shared']}) to tell)"
    return out


def signal_table(summary: dict) -> dict:
    """The judge-free signals table (rows = signals, columns = models: base, tuned, others), as strings;
    a cell lists every comparison of its model (a DPO model's with the SFT model, then with the base)."""
    models = list(summary["models"])
    names = summary.get("labels") or LABELS
    by: dict[tuple[str, str], list[dict]] = defaultdict(list)  # a DPO model is compared with SFT and base
    for v in summary["verdicts"]:
        by[(v["signal"], v["model"])].append(v)
    rows = []
    for sig in ("reference_nll", *_SHOWN):
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
                key, cnt, _ = _SHOWN[sig]
                value = f"{100 * h[key]:.0f}%" if h else "n/a"
                detail = f"{h['counts'][cnt]} of {h['counts']['turns']} turns" if h else "no health records"
            cells.append({"value": value, "detail": detail,
                          "comparisons": [{"vs": _vs(v), "verdict": v["verdict"]} for v in by.get((sig, m), [])]})
        rows.append({"signal": sig, "label": names[sig], "meaning": summary["definitions"][sig], "cells": cells})
    return {"models": [{"id": m, "role": summary["models"][m]["role"]} for m in models], "rows": rows,
            "lineage": summary.get("lineage") or []}
