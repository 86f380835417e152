"""The pairs stage's outputs: ``pairs.jsonl``, ``stats.json``, ``stats.md``, ``config.yaml`` and,
last, ``manifest.json`` (`write_outputs`), and the licence block every pair set carries.

``stats.json`` (keys; absent where they do not apply, e.g. no judging for ``pairs.input``)::

    mode          single | pairwise | input
    model, samples, margin, judge
    prompts       {source, available, used}
    answers       {total, generated_now, truncated}
    judged        {items, now, from_cache}       judge requests of this run: made now / cached
    pairs         {kept, train, heldout}
    dropped       {reason: prompts}              `ja_instruct.pairs.select.DROP_REASONS`
    margin_histogram  [{from, to, prompts, kept}]  every prompt with a candidate pair
    licence       {prompts, judge, judge_terms}
"""

from __future__ import annotations

import logging
from pathlib import Path

from ja_instruct.pairs.records import PAIRS_FILE, PairRecord
from ja_instruct.pairs.select import DROP_REASONS

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
OUTPUTS = {"pairs": PAIRS_FILE, "stats": "stats.json", "stats_md": "stats.md", "config": "config.yaml"}


def judge_label(jcfg) -> str:
    """The judge named in each pair's ``judge``: its model id (a panel's ids joined by ``+``)."""
    return "+".join([jcfg.backend.model, *[b.model for b in jcfg.panel]])


def judge_public_identity(jcfg) -> list[dict]:
    """Who labelled the pairs, safe to publish: backend, model and the endpoint without credentials."""
    from ja_instruct.judge.backends import judge_identity, public_url

    out = []
    for b in [jcfg.backend, *jcfg.panel]:
        ident = judge_identity(b)
        out.append({"backend": b.backend, "model": b.model, "base_url": public_url(ident.get("base_url"))})
    return out


def licence_block(cfg, prompt_licenses: list[str], jcfg=None, judge_meta: str | None = None) -> dict:
    """``{"prompts", "judge", "judge_terms"}``: ``pairs.license``, else the prompts' source licences,
    else ``unknown``; the judge's public identity; ``pairs.judge_terms`` (None: not recorded). An
    API judge of OpenAI's own endpoint without ``judge_terms`` is warned about: its terms restrict
    using its output to develop competing models."""
    prompts = cfg.license or (", ".join(prompt_licenses) if prompt_licenses else UNKNOWN)
    judge = judge_public_identity(jcfg) if jcfg is not None else judge_meta
    if jcfg is not None and cfg.judge_terms is None and any(
            j["backend"] == "openai" and "api.openai.com" in (j["base_url"] or "") for j in judge):
        log.warning("pairs: the judge is OpenAI's API and pairs.judge_terms is not set: OpenAI's terms of use "
                    "restrict using its output to develop models that compete with OpenAI; record the terms "
                    "that apply in pairs.judge_terms")
    return {"prompts": prompts, "judge": judge, "judge_terms": cfg.judge_terms}


def ordered_drops(dropped: dict) -> dict:
    """Drop counts in `DROP_REASONS` order (unknown reasons last), zeros left out."""
    order = {r: i for i, r in enumerate(DROP_REASONS)}
    return {k: int(v) for k, v in sorted(dropped.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])) if v}


def split_counts(records: list[PairRecord]) -> dict:
    train = sum(r.split == "train" for r in records)
    return {"kept": len(records), "train": train, "heldout": len(records) - train}


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    return str(x)


def format_markdown(stats: dict) -> str:
    """``stats.md``: the counts, the drops, the margin histogram (text bars) and the licences."""
    lines = ["# Preference pairs", ""]
    pairs = stats["pairs"]
    mode = stats.get("mode")
    if mode == "input":
        lines.append(f"Read as given from `{stats['prompts']['source']}`.")
    else:
        lines.append(f"Model `{stats['model']}`, {stats['samples']} samples per prompt, judged by "
                     f"`{stats['judge']}` ({mode}); margin >= {_fmt(stats['margin'])} "
                     f"({'score difference' if mode == 'single' else 'difference in agreed wins'}).")
    lines += ["", "| | |", "|---|---:|"]
    p = stats["prompts"]
    lines.append(f"| prompts available | {p['available']} |")
    lines.append(f"| prompts used | {p['used']} |")
    if "answers" in stats:
        a, j = stats["answers"], stats["judged"]
        lines.append(f"| answers | {a['total']} ({a['generated_now']} generated now, {a['truncated']} cut off) |")
        lines.append(f"| judge requests | {j['items']} ({j['now']} judged now, {j['from_cache']} from the cache) |")
    lines.append(f"| **pairs kept** | **{pairs['kept']}** (train {pairs['train']}, held out {pairs['heldout']}) |")
    if stats.get("dropped"):
        lines += ["", "## Dropped", "", "| reason | prompts |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in stats["dropped"].items()]
    hist = stats.get("margin_histogram") or []
    if hist:
        lines += ["", "## Margin histogram", "",
                  "Best minus worst of each prompt with a candidate pair; `#` kept, `.` dropped.", "", "```"]
        top = max(b["prompts"] for b in hist) or 1
        scale = 40 / top if top > 40 else 1
        for b in hist:
            kept, drop = round(b["kept"] * scale), round((b["prompts"] - b["kept"]) * scale)
            lines.append(f"[{_fmt(b['from']):>4}, {_fmt(b['to']):>4})  {b['prompts']:>6} "
                         f"{'#' * kept}{'.' * drop}")
        lines.append("```")
    lic = stats["licence"]
    judge = lic["judge"]
    if isinstance(judge, list):
        judge = ", ".join(f"{j['backend']}:{j['model']}" + (f" at {j['base_url']}" if j.get("base_url") else "")
                          for j in judge)
    lines += ["", "## Licence", "", f"- prompts: {lic['prompts']}", f"- judge: {judge or UNKNOWN}",
              f"- judge's terms: {lic['judge_terms'] or 'not recorded (set pairs.judge_terms)'}", ""]
    return "\n".join(lines)


def write_outputs(out: Path, resolved_cfg, records: list[PairRecord], stats: dict, manifest) -> None:
    """Write every output, each atomically, the manifest LAST (its presence means complete)."""
    from ja_instruct.config import save_config
    from ja_instruct.io import write_json, write_jsonl, write_text
    from ja_instruct.manifest import write_manifest

    write_jsonl(out / PAIRS_FILE, [r.as_dict() for r in records])
    write_json(out / "stats.json", stats)
    write_text(out / "stats.md", format_markdown(stats))
    if getattr(resolved_cfg, "judge", None) is not None:  # no key in a URL reaches config.yaml
        from ja_instruct.judge.backends import public_judge_config

        resolved_cfg = resolved_cfg.model_copy(update={"judge": public_judge_config(resolved_cfg.judge)})
    save_config(resolved_cfg, out)
    write_manifest(out, manifest)
