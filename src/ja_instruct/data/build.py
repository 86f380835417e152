"""`build_dataset`: sources -> cleaned, licence-checked, weighted mixture on disk.

Output directory (the contract with the training stage)::

    <out>/dataset/     datasets.Dataset.save_to_disk: id, source, license, commercial, messages
    <out>/stats.json   counts per source, drop reasons, licences, mixture, fingerprint
    <out>/stats.md     the same, readable
    <out>/config.yaml  the resolved data config

Everything is checked (licence policy, paths) before any source is read, and all
sources are read and cleaned before anything is written; the output is built in a
temp folder beside ``out`` and renamed into place, so a failed or killed build
leaves nothing behind. An output built from the same config, seed and input files
is complete, and a second build skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ja_instruct.config import resolve_path, save_config
from ja_instruct.data.clean import Cleaner
from ja_instruct.data.config import DataConfig
from ja_instruct.data.mix import apply_weight, check_licence_policy, shuffle
from ja_instruct.data.records import SourceStats, check_paths, expand_answers, is_local
from ja_instruct.data.sources import read_source
from ja_instruct.errors import UserError
from ja_instruct.io import stable_hash, write_json, write_text

FORMAT_VERSION = 1


def _features():
    from datasets import Features, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features({"id": Value("string"), "source": Value("string"), "license": Value("string"),
                     "commercial": Value("bool"), "messages": [message]})


def _input_files(cfg: DataConfig) -> list[Path]:
    files: list[Path] = []
    for i, src in enumerate(cfg.sources):
        if src.weight == 0:
            continue
        if is_local(src.path):
            p = resolve_path(src.path)
            files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
        if src.format == "fastchat-answers":
            files.extend(expand_answers(src, i))
    return files


def fingerprint(cfg: DataConfig, seed: int) -> str:
    """Hash of the resolved config, the seed and the local input files (path, size, mtime)."""
    inputs = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _input_files(cfg)]
    return stable_hash({"version": FORMAT_VERSION, "config": cfg.model_dump(mode="json"), "seed": seed,
                        "inputs": inputs})


def is_complete(out_dir: str | Path, fp: str | None = None) -> bool:
    """Whether ``out_dir`` holds a finished build (of fingerprint ``fp`` when given)."""
    out = Path(out_dir)
    if not (out / "dataset" / "state.json").is_file() or not (out / "stats.json").is_file():
        return False
    if fp is None:
        return True
    try:
        return json.loads((out / "stats.json").read_text(encoding="utf-8")).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def load_dataset_dir(path: str | Path):
    """The `datasets.Dataset` of a dataset directory written by `build_dataset`
    (``path`` may be the directory or its ``dataset/`` subfolder)."""
    import datasets

    p = Path(path)
    target = p / "dataset" if (p / "dataset" / "state.json").is_file() else p
    if not (target / "state.json").is_file():
        raise UserError("no built dataset here", file=p,
                        hint="Run `ja-instruct data build RECIPE --out DIR` first, and point at DIR.")
    return datasets.load_from_disk(str(target))


def build_dataset(cfg: DataConfig, out_dir: str | Path, *, seed: int = 0, on_error: str | None = None,
                  force: bool = False, echo: Any = None) -> dict:
    """Build the dataset directory ``out_dir`` from ``cfg`` (see the module doc).

    Args:
        cfg: the data config (sources, cleaning, licence policy).
        out_dir: the output dataset directory.
        seed: the recipe's seed (weights' sampling and the final shuffle).
        on_error: ``"raise"`` / ``"skip"``; overrides ``cfg.on_error`` when given.
        force: rebuild even if ``out_dir`` is complete for the same config.
        echo: where to print the per-source summary (default: ``print`` to stdout).

    Returns:
        The stats dict written to ``stats.json`` (plus ``"skipped": True`` when an
        identical build already existed).
    """
    echo = echo or (lambda s: print(s, file=sys.stdout, flush=True))
    if on_error is not None:
        cfg = cfg.model_copy(update={"on_error": on_error})
    out = Path(out_dir)
    # cheap checks first: nothing is read before the policy and the paths are known good
    check_licence_policy(cfg)
    active = [s for s in cfg.sources if s.weight > 0]
    check_paths(cfg.sources)
    if out.exists() and any(out.iterdir()) and not (out / "stats.json").is_file() \
            and not (out / "dataset").is_dir():
        # never replace a folder we did not write (a mistyped --out could point anywhere)
        raise UserError("output folder exists and is not a dataset directory", file=out,
                        hint="Choose another --out, or remove the folder.")
    fp = fingerprint(cfg, seed)
    if not force and is_complete(out, fp):
        echo(f"data: {out} is already built from the same config (fingerprint {fp}); skipping "
             "(use --force to rebuild)")
        stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
        return {**stats, "skipped": True}

    cleaner = Cleaner(cfg.clean)
    per_source: dict[str, SourceStats] = {s.name: SourceStats() for s in cfg.sources}
    rows: list[dict] = []
    for src in active:
        st = per_source[src.name]
        try:
            parsed = read_source(src, st, cfg.on_error)
        except UserError as err:
            if err.field in ("path", "answers"):  # name the recipe key, not just the source's
                err.field = f"data.sources[{cfg.sources.index(src)}].{err.field}"
            raise
        examples = cleaner.clean(parsed, st)
        sampled = apply_weight(examples, src, seed) if examples else []
        st.sampled = len(sampled)
        commercial = src.allows_commercial
        rows.extend({"id": ex["id"], "source": src.name, "license": src.license,
                     "commercial": commercial, "messages": ex["messages"]} for ex in sampled)
    if cfg.shuffle:
        rows = shuffle(rows, seed)
    stats = make_stats(cfg, per_source, rows, seed, fp)
    if not rows:
        echo(format_table(stats))
        raise UserError("the mixture is empty: every row of every source was dropped",
                        hint="See the drop reasons above; check the formats, filters and length limits.")
    _write(out, cfg, rows, stats)
    echo(format_table(stats))
    echo(f"data: wrote {len(rows)} examples to {out}")
    return stats


def _write(out: Path, cfg: DataConfig, rows: list[dict], stats: dict) -> None:
    """Write everything into a temp folder beside ``out``, then swap it into place."""
    import datasets

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the output is an ordinary folder
    try:
        # straight to Arrow: Dataset.from_list would encode every example in Python (~10x slower)
        import pyarrow as pa

        features = _features()
        table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
        datasets.Dataset(table, info=datasets.DatasetInfo(features=features)).save_to_disk(str(tmp / "dataset"))
        write_json(tmp / "stats.json", stats)
        write_text(tmp / "stats.md", format_markdown(stats))
        save_config(cfg, tmp)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_stats(cfg: DataConfig, per_source: dict[str, SourceStats], rows: list[dict], seed: int,
               fp: str) -> dict:
    """The stats dict of a build (what stats.json holds)."""
    total = len(rows)
    sources = {}
    dropped: Counter = Counter()
    for src in cfg.sources:
        st = per_source[src.name]
        dropped.update(st.dropped)
        sources[src.name] = {
            "path": src.path, "format": src.format, "license": src.license,
            "commercial": src.allows_commercial, "weight": src.weight,
            "rows_read": st.rows_read, "conversations": st.examples, "kept": st.kept, "sampled": st.sampled,
            "dropped": dict(sorted(st.dropped.items())), "share": round(st.sampled / total, 4) if total else 0.0,
            "errors": st.errors,
        }
    licences = Counter(r["license"] for r in rows)
    return {
        "version": FORMAT_VERSION, "fingerprint": fp, "seed": seed, "licence_policy": cfg.licence_policy,
        "total": total, "commercial_use_ok": all(r["commercial"] for r in rows),
        "licenses": dict(sorted(licences.items())), "dropped": dict(sorted(dropped.items())),
        "mixture": {name: s["share"] for name, s in sources.items()}, "sources": sources,
    }


def _drops(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def format_table(stats: dict) -> str:
    """The per-source summary printed to the terminal."""
    head = ("source", "format", "license", "read", "convs", "kept", "sampled", "dropped")
    lines = [[name, s["format"], s["license"], str(s["rows_read"]), str(s["conversations"]), str(s["kept"]),
              str(s["sampled"]), _drops(s["dropped"])] for name, s in stats["sources"].items()]
    widths = [max(len(r[i]) for r in [list(head)] + lines) for i in range(len(head) - 1)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]  # noqa: E731
    out = [fmt(list(head))] + [fmt(r) for r in lines]
    out.append(f"total: {stats['total']} examples; licences: {_drops(stats['licenses'])}; "
               f"policy {stats['licence_policy']}; commercial use ok: {stats['commercial_use_ok']}")
    for name, s in stats["sources"].items():
        for err in s["errors"]:
            out.append(f"  skipped in {name}: {err}")
    return "\n".join(out)


def format_markdown(stats: dict) -> str:
    """stats.md: the same numbers as stats.json, for people."""
    md = ["# Dataset build", "",
          f"{stats['total']} examples; seed {stats['seed']}; licence policy `{stats['licence_policy']}`; "
          f"commercial use ok: **{stats['commercial_use_ok']}**; fingerprint `{stats['fingerprint']}`.", "",
          "## Sources", "",
          "| source | format | licence | commercial | weight | rows read | conversations | kept | sampled | share | dropped |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in stats["sources"].items():
        md.append(f"| {name} | {s['format']} | {s['license']} | {s['commercial']} | {s['weight']} | "
                  f"{s['rows_read']} | {s['conversations']} | {s['kept']} | {s['sampled']} | "
                  f"{s['share']:.1%} | {_drops(s['dropped'])} |")
    md += ["", "`rows read` counts input records (messages for `oasst`, answers for `fastchat-answers`); "
           "`conversations` what the format made of them; `kept` after cleaning; `sampled` after the weight.",
           "", "## Licences", "", "| licence | examples |", "|---|---|"]
    md += [f"| {lic} | {n} |" for lic, n in stats["licenses"].items()]
    md += ["", "## Drop reasons", "", "| reason | rows |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in stats["dropped"].items()] or ["| - | 0 |"]
    errors = [(name, e) for name, s in stats["sources"].items() for e in s["errors"]]
    if errors:
        md += ["", "## Skipped rows (first few per source)", ""]
        md += [f"- {name}: {e}" for name, e in errors]
    return "\n".join(md) + "\n"
