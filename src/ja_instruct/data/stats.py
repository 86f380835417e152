"""What a data build counted: ``stats.json`` (`make_stats`), the terminal table (`format_table`)
and ``stats.md`` (`format_markdown`).

The sentences about the optional checks (near-duplicates, quality filtering, benchmark
contamination) come from `ja_instruct.data.card`, so stats.md, the dataset card, the model card
and the report say the same thing in the same words.
"""

from __future__ import annotations

from collections import Counter

from ja_instruct.data.card import contamination_section, describe_filters, heldout_total
from ja_instruct.data.config import DataConfig
from ja_instruct.data.hub import HubCommit
from ja_instruct.data.records import SourceStats

# 2: the held-out split (``heldout/``, stats "heldout" keys); the training set changed meaning.
# 3: the split is made per group (oasst tree, fastchat question), not per example: a version-2
#    build of those formats leaked held-out turns into training, so it must not look up to date.
FORMAT_VERSION = 3


def make_stats(cfg: DataConfig, per_source: dict[str, SourceStats], rows: list[dict], seed: int,
               fp: str, commits: dict[str, HubCommit] | None = None, heldout: dict[str, int] | None = None) -> dict:
    """The stats dict of a build (what stats.json holds); ``rows`` is the training set and
    ``heldout`` the held-out count per source."""
    commits = commits or {}
    heldout = heldout or {}
    total = len(rows)
    sources = {}
    dropped: Counter = Counter()
    for src in cfg.sources:
        st = per_source[src.name]
        dropped.update(st.dropped)
        sources[src.name] = {
            "path": src.path, "format": src.format, "license": src.license,
            "commercial": src.allows_commercial, "weight": src.weight,
            "rows_read": st.rows_read, "conversations": st.examples, "kept": st.kept,
            "heldout": heldout.get(src.name, 0), "sampled": st.sampled,
            "dropped": dict(sorted(st.dropped.items())), "share": round(st.sampled / total, 4) if total else 0.0,
            "errors": st.errors,
        }
        if src.name in commits:
            sources[src.name]["revision"] = src.revision
            sources[src.name]["commit"] = commits[src.name].sha
    licences = Counter(r["license"] for r in rows)
    return {
        "version": FORMAT_VERSION, "fingerprint": fp, "seed": seed, "licence_policy": cfg.licence_policy,
        "total": total, "heldout": {"total": sum(heldout.values()), "fraction": cfg.heldout.fraction,
                                    "max_examples": cfg.heldout.max_examples},
        "commercial_use_ok": all(r["commercial"] for r in rows),
        "licenses": dict(sorted(licences.items())), "dropped": dict(sorted(dropped.items())),
        "mixture": {name: s["share"] for name, s in sources.items()}, "sources": sources,
        "hub_commits": {name: {"repo": c.repo, "revision": c.revision, "commit": c.sha, "resolved_via": c.via}
                        for name, c in commits.items()},
    }


def _drops(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def format_table(stats: dict) -> str:
    """The per-source summary printed to the terminal."""
    head = ("source", "format", "license", "read", "convs", "kept", "heldout", "sampled", "dropped")
    lines = [[name, s["format"], s["license"], str(s["rows_read"]), str(s["conversations"]), str(s["kept"]),
              str(s.get("heldout", 0)), str(s["sampled"]), _drops(s["dropped"])]
             for name, s in stats["sources"].items()]
    widths = [max(len(r[i]) for r in [list(head)] + lines) for i in range(len(head) - 1)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]  # noqa: E731
    out = [fmt(list(head))] + [fmt(r) for r in lines]
    out.append(f"total: {stats['total']} examples; licences: {_drops(stats['licenses'])}; "
               f"policy {stats['licence_policy']}; commercial use ok: {stats['commercial_use_ok']}")
    if heldout_total(stats):
        out.append(_heldout_line(stats))
    for name, s in stats["sources"].items():
        for err in s["errors"]:
            out.append(f"  skipped in {name}: {err}")
    return "\n".join(out)


def _heldout_line(stats: dict) -> str:
    h = stats["heldout"]
    cap = f", at most {h['max_examples']}" if h.get("max_examples") else ""
    return (f"held out {h['total']} examples for evaluation (data.heldout: fraction {h['fraction']}{cap}); "
            "they are not in the training set")


def format_markdown(stats: dict) -> str:
    """stats.md: the same numbers as stats.json, for people."""
    md = ["# Dataset build", "",
          f"{stats['total']} examples; seed {stats['seed']}; licence policy `{stats['licence_policy']}`; "
          f"commercial use ok: **{stats['commercial_use_ok']}**; fingerprint `{stats['fingerprint']}`.", "",
          *([_heldout_line(stats) + " (`heldout/`).", ""] if heldout_total(stats) else []),
          "## Sources", "",
          "| source | format | licence | commercial | weight | rows read | conversations | kept | heldout | sampled "
          "| share | dropped |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in stats["sources"].items():
        md.append(f"| {name} | {s['format']} | {s['license']} | {s['commercial']} | {s['weight']} | "
                  f"{s['rows_read']} | {s['conversations']} | {s['kept']} | {s.get('heldout', 0)} | {s['sampled']} | "
                  f"{s['share']:.1%} | {_drops(s['dropped'])} |")
    md += ["", "`rows read` counts input records (messages for `oasst`, answers for `fastchat-answers`); "
           "`conversations` what the format made of them; `kept` after cleaning; `heldout` of those kept out "
           "of training for evaluation; `sampled` the rest after the weight (the training set).",
           "", "## Licences", "", "| licence | examples |", "|---|---|"]
    md += [f"| {lic} | {n} |" for lic, n in stats["licenses"].items()]
    if stats.get("hub_commits"):
        md += ["", "## Hub commits read", "", "| source | dataset | revision | commit |", "|---|---|---|---|"]
        md += [f"| {name} | {c['repo']} | {c['revision'] or '(default branch)'} | {c['commit'] or 'unknown'} |"
               for name, c in stats["hub_commits"].items()]
    md += ["", "## Drop reasons", "", "| reason | rows |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in stats["dropped"].items()] or ["| - | 0 |"]
    checks = describe_filters(stats)  # near duplicates, quality filter: only the steps that ran
    if checks:
        md += ["", "## Filters", "", *[f"- {line}" for line in checks]]
    if stats.get("contamination"):
        md += ["", *contamination_section(stats)]
    errors = [(name, e) for name, s in stats["sources"].items() for e in s["errors"]]
    if errors:
        md += ["", "## Skipped rows (first few per source)", ""]
        md += [f"- {name}: {e}" for name, e in errors]
    return "\n".join(md) + "\n"
