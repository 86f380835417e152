"""The dataset card (``<data>/README.md``) and the sentences every output uses to state the
training data checks (benchmark contamination, near-duplicate removal, judge-scored filtering).

`describe_contamination` is the one wording of the contamination result: the dataset card,
the model card (`ja_instruct.train.export`), the report and the build's terminal line all call
it, so they can never disagree. Everything here reads ``stats.json`` (the contract in
`ja_instruct.data.build.make_stats`) tolerantly: a key an older build did not write is left out
of the card, never guessed.

The card is a Hugging Face dataset card: YAML front matter (`huggingface_hub.DatasetCardData`)
then markdown, so ``huggingface_hub.upload_folder`` of the dataset folder (or
``DatasetCard.push_to_hub``) shows it, and its ``configs`` make ``load_dataset(repo)`` read the
Arrow files of ``dataset/`` (and ``heldout/``) as splits.
"""

from __future__ import annotations

import re
from pathlib import Path

from ja_instruct.io import write_text

# The licence ids the Hub accepts in a card's ``license`` (hub-docs repositories-licenses.md);
# an SPDX id whose lower case is one of them is used as is, anything else is ``other``.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
    "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5",
    "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
    "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl",
    "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0",
    "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2",
    "gemma", "unknown", "other"})
# SPDX ids that mean "unknown" to us (`ja_instruct.data.config.UNKNOWN_LICENSES`) but are not Hub ids.
_HUB_ALIASES = {"noassertion": "unknown"}
# Drops made after cleaning, in pipeline order: shown last in the counts table.
_LATE_DROPS = ("duplicate", "near_duplicate", "contaminated", "low_quality")
MAX_HITS_SHOWN = 200  # the card lists this many contamination hits; stats.json has them all
_BAR = 30  # characters of the longest histogram bar


def _pct(x: float) -> str:
    return f"{100 * float(x):g}%"


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def describe_contamination(stats: dict) -> list[str]:
    """The contamination result as sentences: one per benchmark, saying where the questions found
    ended ("0 of 80 ja_mt_bench questions found in the training data"; "1 of 40 rakuda questions
    found in the data: 0 in the training data, 1 only in examples removed before training (1
    example dropped as contaminated)"), then how it was checked. Without
    ``stats["contamination"]`` one sentence says it was not checked; without any stats at all,
    that the result is unknown."""
    if not stats:
        return ["Benchmark contamination unknown (the dataset has no stats.json)."]
    c = stats.get("contamination")
    if not isinstance(c, dict):
        return ["Not checked for benchmark contamination (data.contamination is null)."]
    mode = c.get("mode", "flag")
    hits = [h for h in c.get("hits") or [] if isinstance(h, dict)]
    out = []
    for label, b in (c.get("benchmarks") or {}).items():
        b = b if isinstance(b, dict) else {}
        found, n = int(b.get("found") or 0), b.get("questions", "?")
        mine = [h for h in hits if h.get("benchmark") == label]
        where = {k: {str(h.get("question_id")) for h in mine if h.get("split", "train") == k}
                 for k in ("train", "heldout", "removed")}
        held = where["heldout"] - where["train"]
        removed = where["removed"] - where["train"] - where["heldout"]
        dropped = {(h.get("source"), h.get("id")) for h in mine if h.get("dropped")}
        if not held and not removed:  # every question found is in the training data (or none was found)
            sentence = f"{found} of {n} {label} questions found in the training data"
        else:
            parts = [f"{len(where['train'])} in the training data"]
            if held:  # a question met only in the held-out split is not training data: say so
                parts.append(f"{len(held)} only in the held-out split")
            if removed:
                parts.append(f"{len(removed)} only in examples removed before training")
            sentence = f"{found} of {n} {label} questions found in the data: {', '.join(parts)}"
        if dropped:
            sentence += f" ({_n(len(dropped), 'example')} dropped as contaminated)"
        elif where["train"] and mode == "flag":
            sentence += " (kept: data.contamination.mode is flag)"
        out.append(sentence + ".")
    if not out:
        out.append("No benchmark question sets were checked.")
    ngram, share = c.get("ngram"), c.get("min_overlap")
    if ngram is not None and share is not None:
        out.append(f"Checked by character {ngram}-gram overlap: a question counts as found in an example when "
                   f"at least {_pct(share)} of its {ngram}-grams occur in it (mode: {mode}).")
    return out


def describe_filters(stats: dict) -> list[str]:
    """Sentences on near-duplicate removal and judge-scored filtering, each only when the build
    ran it (``stats["near_dedup"]``, ``stats["quality"]``)."""
    out = []
    nd = stats.get("near_dedup")
    if isinstance(nd, dict):
        out.append(f"Near-duplicate removal removed {nd.get('removed', '?')} conversation(s) (MinHash LSH over "
                   f"character {nd.get('ngram', '?')}-grams, estimated Jaccard similarity at least "
                   f"{nd.get('threshold', '?')}, {nd.get('num_perm', '?')} permutations; the copy of the source "
                   "listed first in the recipe is kept).")
    q = stats.get("quality")
    if isinstance(q, dict):
        rule = (f"score at least {q['threshold']:g} of 10" if q.get("threshold") is not None else
                f"the best {_pct(q['top_fraction'])} of each source" if q.get("top_fraction") is not None
                else "rule not recorded")
        out.append(f"Judge-scored filtering kept {q.get('kept', '?')} of {q.get('scored', '?')} scored examples "
                   f"({rule}; judge {_judge_name(q.get('judge'))}, rubric {q.get('prompt', '?')}); "
                   f"{q.get('dropped', '?')} dropped as low_quality, {q.get('errors', 0)} scoring errors.")
    return out


def _judge_name(judge) -> str:
    if isinstance(judge, dict):
        return f"{judge.get('model', '?')} ({judge.get('backend', '?')} backend)"
    return str(judge) if judge else "unknown"


def md_escape(text) -> str:
    """``text`` as inline markdown that shows literally (table cells included): line breaks
    become spaces, markup characters are backslash-escaped."""
    s = re.sub(r"[\r\n\t]+", " ", str(text))
    return re.sub(r"([\\`*_\[\]<>|#~&!])", r"\\\1", s)


def hub_license(stats: dict) -> tuple[str, str | None, list[str]]:
    """``(license, license_name, licences)`` for the card's front matter: the single licence as
    the Hub's id; ``other`` (named ``mixed``) when the examples carry several; ``other`` named after
    the SPDX id when the Hub has no id for it. ``licences`` are the SPDX ids of the examples."""
    sources = stats.get("sources") or {}
    used = {s.get("license") for s in sources.values()
            if isinstance(s, dict) and s.get("license") and (s.get("sampled") or 0) + (s.get("heldout") or 0) > 0}
    lics = sorted(used or set(stats.get("licenses") or {}))
    if len(lics) != 1:
        return "other", ("mixed" if lics else None), lics
    low = _HUB_ALIASES.get(lics[0].lower(), lics[0].lower())
    if low in HUB_LICENSES:
        return low, None, lics
    return "other", re.sub(r"[^a-z0-9.-]+", "-", low).strip("-") or None, lics


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def front_matter(stats: dict, pretty_name: str) -> str:
    """The card's YAML metadata (`huggingface_hub.DatasetCardData`)."""
    from huggingface_hub import DatasetCardData

    licence, name, _ = hub_license(stats)
    held = heldout_total(stats)
    files = [{"split": "train", "path": "dataset/*.arrow"}]
    if held:
        files.append({"split": "heldout", "path": "heldout/*.arrow"})
    data = DatasetCardData(
        language=["ja"], license=licence, license_name=name, pretty_name=pretty_name,
        task_categories=["text-generation"], size_categories=[_size_category(stats.get("total", 0) + held)],
        tags=["ja-instruct", "instruction-tuning", "sft"],
        configs=[{"config_name": "default", "data_files": files}])
    return f"---\n{data.to_yaml()}\n---"


def heldout_total(stats: dict) -> int:
    """How many examples the build held out (0 for builds older than the split)."""
    h = stats.get("heldout")
    return int(h.get("total") or 0) if isinstance(h, dict) else 0


def _reasons(sources: dict) -> list[str]:
    seen = {r for s in sources.values() for r in (s.get("dropped") or {})}
    late = [r for r in _LATE_DROPS if r in seen]
    return sorted(seen - set(late)) + late


def _sources_section(stats: dict) -> list[str]:
    sources = stats.get("sources") or {}
    commits = stats.get("hub_commits") or {}
    md = ["## Sources", "", "| source | path | format | licence | commercial use | weight | share |",
          "|---|---|---|---|---|---|---|"]
    for name, s in sources.items():
        path = s.get("path", "")
        if name in commits:
            path = f"{path} @ {commits[name].get('commit') or commits[name].get('revision') or '?'}"
        share = s.get("share")
        md.append(f"| {md_escape(name)} | {md_escape(path)} | {s.get('format', '')} "
                  f"| {md_escape(s.get('license', '?'))} | {'yes' if s.get('commercial') else 'no'} "
                  f"| {s.get('weight', '')} "
                  f"| {f'{share:.1%}' if isinstance(share, (int, float)) else ''} |")
    _, _, lics = hub_license(stats)
    md += ["", f"Commercial use of the whole training set allowed: **{stats.get('commercial_use_ok', 'unknown')}** "
               f"(licence policy `{stats.get('licence_policy', 'unknown')}`)."]
    if len(lics) > 1:
        counts = stats.get("licenses") or {}
        md.append(f"The examples carry {len(lics)} licences ("
                  + ", ".join(f"{lic}: {counts[lic]} training examples" if lic in counts else lic for lic in lics)
                  + "); each example's own licence is in its `license` column, and using the data means "
                    "following each of them.")
    return md + [""]


def _counts_section(stats: dict) -> list[str]:
    sources = stats.get("sources") or {}
    reasons = _reasons(sources)
    cols = ["rows read", "conversations", *[f"dropped: {r}" for r in reasons], "kept", "held out", "sampled"]
    md = ["## Counts through every filter", "", "| source | " + " | ".join(cols) + " |",
          "|---|" + "---|" * len(cols)]
    totals = [0] * len(cols)
    for name, s in sources.items():
        d = s.get("dropped") or {}
        vals = [s.get("rows_read", 0), s.get("conversations", 0), *[d.get(r, 0) for r in reasons],
                s.get("kept", 0), s.get("heldout", 0), s.get("sampled", 0)]
        totals = [t + (v or 0) for t, v in zip(totals, vals)]
        md.append(f"| {md_escape(name)} | " + " | ".join(str(v) for v in vals) + " |")
    if len(sources) > 1:
        md.append("| **all** | " + " | ".join(str(v) for v in totals) + " |")
    md += ["", "`rows read` counts input records; `conversations` what the format made of them; `kept` what "
               "passed every filter; `held out` of those kept out of training for evaluation; `sampled` the rest "
               "after the mixture weight (the training set: a weight above 1 repeats examples)."]
    filters = describe_filters(stats)
    return md + ([""] + [f"- {s}" for s in filters] if filters else []) + [""]


def _quality_section(stats: dict) -> list[str]:
    q = stats.get("quality")
    if not isinstance(q, dict):
        return []
    md = ["## Quality scores", ""]
    usage = q.get("usage") or {}
    cost = q.get("cost")
    md += [f"Scored {q.get('scored', '?')} examples ({q.get('judged_now', '?')} judged in this build, "
           f"{q.get('cached', '?')} from the cache); {usage.get('prompt_tokens', 0):,} prompt and "
           f"{usage.get('completion_tokens', 0):,} completion tokens"
           + (f", cost {cost:.4g}" if isinstance(cost, (int, float)) else "") + ".", ""]
    for name, hist in (q.get("histogram") or {}).items():
        counts = {int(k): int(v) for k, v in (hist or {}).items()}
        top = max(counts.values(), default=0) or 1
        md += [f"### {md_escape(name)}", "", "| score | examples | |", "|---|---|---|"]
        md += [f"| {k} | {counts.get(k, 0)} | {'█' * round(_BAR * counts.get(k, 0) / top)} |"
               for k in range(1, 11)]
        md.append("")
    return md


def contamination_section(stats: dict) -> list[str]:
    """The "## Benchmark contamination" markdown: the sentences, then a table of the hits (the
    dataset card and stats.md)."""
    md = ["## Benchmark contamination", ""] + [f"- {s}" for s in describe_contamination(stats)] + [""]
    c = stats.get("contamination")
    hits = [h for h in (c.get("hits") or []) if isinstance(h, dict)] if isinstance(c, dict) else []
    if not hits:
        return md
    md += ["| benchmark | question | source | example | split | overlap | dropped | matched text |",
           "|---|---|---|---|---|---|---|---|"]
    for h in hits[:MAX_HITS_SHOWN]:
        ov = h.get("overlap")
        md.append(f"| {md_escape(h.get('benchmark', ''))} | {md_escape(h.get('question_id', ''))} "
                  f"| {md_escape(h.get('source', ''))} | {md_escape(h.get('id', ''))} | {h.get('split', '')} "
                  f"| {f'{ov:.0%}' if isinstance(ov, (int, float)) else ''} | {'yes' if h.get('dropped') else 'no'} "
                  f"| {md_escape(h.get('matched', ''))} |")
    if len(hits) > MAX_HITS_SHOWN:
        md.append(f"\n{len(hits) - MAX_HITS_SHOWN} more hits are listed in `stats.json`.")
    return md + [""]


def _heldout_section(stats: dict) -> list[str]:
    h = stats.get("heldout") if isinstance(stats.get("heldout"), dict) else {}
    md = ["## Held-out split", ""]
    if not h.get("total"):
        return md + ["None (`data.heldout.fraction` is 0, or the build predates held-out splits).", ""]
    cap = f", at most {h['max_examples']}" if h.get("max_examples") else ""
    return md + [f"{_n(h['total'], 'example')} (fraction {h.get('fraction')}{cap}) are in `heldout/` (split "
                 "`heldout`) for evaluation; they are not in the training split, and neither is any other "
                 "turn of the same conversation tree or question.", ""]


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``, so the text cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def dataset_card(stats: dict, config_yaml: str) -> str:
    """README.md of a built dataset folder: a Hugging Face dataset card (front matter, sources
    and licences, counts through every filter, quality scores, contamination, held-out split,
    the recipe). ``config_yaml`` is the resolved data config (the folder's config.yaml)."""
    sources = stats.get("sources") or {}
    title = "Japanese instruction-tuning mixture (ja-instruct)"
    held = heldout_total(stats)
    intro = (f"{stats.get('total', '?')} training conversations from {len(sources)} source(s)"
             + (f", plus {held} held out for evaluation" if held else "")
             + f", built by the ja-instruct data stage (seed {stats.get('seed', '?')}, "
               f"fingerprint `{stats.get('fingerprint', '?')}`).")
    columns = ["## Columns", "", "`id`, `source` (the source name below), `license` (SPDX id), `commercial` "
               "(whether the source allows commercial use), `messages` (list of `{role, content}`: the "
               "conversation)" + (", `quality` (the judge's score, 1-10)" if isinstance(stats.get("quality"), dict)
                                  else "") + ".", ""]
    fence = _fence(config_yaml)
    recipe = ["## Recipe", "", "The resolved data config that built this dataset (`config.yaml`):", "",
              f"{fence}yaml", config_yaml.rstrip("\n"), fence, ""]
    parts = [front_matter(stats, title), "", f"# {title}", "", intro, "", *_sources_section(stats),
             *_counts_section(stats), *_quality_section(stats), *contamination_section(stats),
             *_heldout_section(stats), *columns, *recipe]
    return "\n".join(parts)


def write_dataset_card(out_dir: Path, stats: dict, config_yaml: str) -> None:
    """Write ``out_dir/README.md`` (atomically) from the build's stats and resolved config."""
    write_text(Path(out_dir) / "README.md", dataset_card(stats, config_yaml))
