"""`build_dataset`: sources -> cleaned, licence-checked, weighted mixture on disk.

Output directory (the contract with the training stage)::

    <out>/dataset/       datasets.Dataset.save_to_disk: id, source, license, commercial, messages
    <out>/heldout/       the held-out split (``data.heldout``), same columns; only when non-empty
    <out>/stats.json     counts per source, drop reasons, licences, mixture, hub commits, fingerprint
    <out>/stats.md       the same, readable
    <out>/config.yaml    the resolved data config
    <out>/manifest.json  stage "data": config hash + one fingerprint per active source (written last)

Everything is checked (licence policy, paths) before any source is read, and all
sources are read and cleaned before anything is written; the output is built in a
temp folder beside ``out`` (manifest last) and renamed into place, so a failed or
killed build leaves nothing behind and a folder with a manifest is complete.

The held-out split is taken from the cleaned examples before the weights are applied
(`ja_instruct.data.mix.select_heldout`), so no held-out example reaches training, not
even as a weight repeat; whole split groups (an ``oasst`` tree, a ``fastchat-answers``
question) go to one side, so no held-out turn is trained on inside a sibling example either.
``stats.json`` ``total`` counts the training set only.

Cleaning runs in this order, each step over all sources in recipe order (the first
source's copy of anything is the one kept): the exact/normalised dedupe and filters
(`ja_instruct.data.clean`), near-duplicate removal (``clean.near_dedup``,
`ja_instruct.data.neardup`), the benchmark contamination check (``data.contamination``,
`ja_instruct.data.contamination`; ``drop`` removes the hits), judge-scored filtering
(``data.quality``), then the held-out split and the weights.

The manifest's inputs are, per active source, the content hash of its local files
(hashing 124 MB, ~150k examples, takes 0.1 s against 1 s just to parse them) or the
hub commit it read (`ja_instruct.data.hub`), and the content hash of each benchmark
question set checked (``benchmark:<label>``). A build whose manifest equals the one it
would write now does nothing; otherwise it says why it rebuilds (config, seed, a
changed file, a new upstream commit).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ja_instruct.config import resolve_path, save_config
from ja_instruct.data.card import describe_contamination, write_dataset_card
from ja_instruct.data.clean import Cleaner
from ja_instruct.data.config import DataConfig, SourceConfig
from ja_instruct.data.hub import FULL_SHA, HubCommit, is_builder, is_hub_source, pin_warning, resolve_commit
from ja_instruct.data.mix import apply_weight, check_licence_policy, select_heldout, shuffle, split_group
from ja_instruct.data.records import SourceStats, builder_files, check_paths, expand_answers, is_local
from ja_instruct.data.sources import read_source
from ja_instruct.errors import UserError
from ja_instruct.io import current_umask, read_json, stable_hash, write_json, write_text
from ja_instruct.manifest import (Manifest, file_fingerprint, input_changes, make_manifest, read_manifest,
                                  write_manifest)

from ja_instruct.data.stats import FORMAT_VERSION, format_markdown, format_table, make_stats

HELDOUT = "heldout"


def _features(scored: bool = False):
    from datasets import Features, Value

    message = {"role": Value("string"), "content": Value("string")}
    columns = {"id": Value("string"), "source": Value("string"), "license": Value("string"),
               "commercial": Value("bool"), "messages": [message]}
    if scored:  # only with data.quality: a dataset without it keeps its schema
        columns["quality"] = Value("float64")
    return Features(columns)


def _source_files(src: SourceConfig, index: int) -> list[Path]:
    """The local files a source reads (its file or folder, builder data_files, answer files)."""
    files: list[Path] = []
    if is_local(src.path):
        files.append(resolve_path(src.path))
    elif is_builder(src):
        files.extend(builder_files(src))
    if src.format == "fastchat-answers":
        files.extend(expand_answers(src, index))
    return files


def hub_commits(cfg: DataConfig) -> dict[str, HubCommit]:
    """Source name -> the commit it reads, for every active hub source."""
    return {src.name: resolve_commit(src, f"data.sources[{i}]")
            for i, src in enumerate(cfg.sources) if src.weight > 0 and is_hub_source(src)}


def data_inputs(cfg: DataConfig, commits: dict[str, HubCommit]) -> dict[str, str]:
    """The manifest inputs: ``source:<name>`` -> content hash of its local files, or its hub commit."""
    inputs: dict[str, str] = {}
    for i, src in enumerate(cfg.sources):
        if src.weight == 0:
            continue
        key = f"source:{src.name}"
        if src.name in commits:
            inputs[key] = commits[src.name].fingerprint
            continue
        files = _source_files(src, i)
        inputs[key] = (file_fingerprint(files[0]) if len(files) == 1 else
                       stable_hash([[str(f), file_fingerprint(f)] for f in files]))
    if cfg.contamination is not None:
        from ja_instruct.data.contamination import benchmark_inputs

        inputs.update(benchmark_inputs(cfg.contamination))
    if cfg.quality is not None:
        from ja_instruct.data.quality import quality_inputs

        inputs.update(quality_inputs(cfg.quality))
    return inputs


def hashed_config(cfg: DataConfig) -> dict:
    """The data config as the manifest hashes it: what changes the built data, nothing else."""
    # `on_error` only says whether a bad row stops the build; a build that succeeded is the same
    # data either way. Hashing it made `data build --on-error skip` (what the error message
    # advises) look stale to `train`/`run`, which rebuilt with "raise" and failed on that row.
    data = cfg.model_dump(mode="json", exclude={"on_error"})
    # Sections added later are left out while off: a recipe that does not use them must keep the
    # fingerprint it had, or every model trained on its data would look stale.
    if cfg.clean.near_dedup is None:
        del data["clean"]["near_dedup"]
    if cfg.contamination is None:
        del data["contamination"]
    if cfg.quality is None:
        del data["quality"]
    else:
        from ja_instruct.data.quality import hashed_quality_config

        # only what changes the scores and the selection: not the cache's place, the judge's
        # concurrency, retries or prices (the prompt file's content and the endpoint are inputs)
        data["quality"] = hashed_quality_config(cfg.quality)
    return data


def data_manifest(cfg: DataConfig, seed: int, commits: dict[str, HubCommit] | None = None) -> Manifest:
    """The manifest a build of ``cfg`` with ``seed`` writes (hub commits resolved when not given)."""
    commits = hub_commits(cfg) if commits is None else commits
    config = {"data": hashed_config(cfg), "seed": seed, "format_version": FORMAT_VERSION}
    return make_manifest("data", config, data_inputs(cfg, commits),
                         outputs={"dataset": "dataset", "stats": "stats.json"})


def fingerprint(cfg: DataConfig, seed: int) -> str:
    """The manifest fingerprint of a build of ``cfg`` with ``seed``: config, seed, the content of
    the local input files and the hub commits read."""
    return data_manifest(cfg, seed).fingerprint


def is_complete(out_dir: str | Path, fp: str | None = None) -> bool:
    """Whether ``out_dir`` holds a finished build (of manifest fingerprint ``fp`` when given)."""
    out = Path(out_dir)
    if not (out / "dataset" / "state.json").is_file() or not (out / "stats.json").is_file():
        return False
    m = read_manifest(out, "data")
    if m is None or (fp is not None and m.fingerprint != fp):
        return False
    return HELDOUT not in m.outputs or (out / m.outputs[HELDOUT] / "state.json").is_file()


def rebuild_reasons(out: Path, old: Manifest | None, new: Manifest) -> list[str]:
    """Why ``out`` is (re)built: `input_changes`, with the old and new commit of a hub source."""
    if old is None:
        return ["built by an older version (no manifest)" if (out / "dataset").is_dir()
                else "no complete output yet"]
    reasons = input_changes(old, new.inputs, new.config)
    for key, sha in new.inputs.items():
        before = old.inputs.get(key, "")
        if FULL_SHA.match(sha) and FULL_SHA.match(before) and before != sha:
            reasons = [f"{r}: hub commit {before[:12]} -> {sha[:12]}" if r == f"input '{key}' changed" else r
                       for r in reasons]
    return reasons or ["the output is incomplete"]


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


def load_heldout(data_dir: str | Path):
    """The held-out split (`datasets.Dataset`, same columns as the training set, in ascending
    hash-key order) of a dataset directory written by `build_dataset`, or None when the build has
    none (``data.heldout.fraction`` 0, or a dataset made before held-out splits existed).

    ``data_dir`` is the build folder (its ``dataset/`` subfolder is accepted too); anything else
    is a `UserError`."""
    import datasets

    p = Path(data_dir)
    if p.name == "dataset" and (p / "state.json").is_file():
        p = p.parent
    if not (p / "dataset" / "state.json").is_file():
        raise UserError("no built dataset here", file=p,
                        hint="Run `ja-instruct data build RECIPE --out DIR` first, and point at DIR.")
    m = read_manifest(p, "data")
    folder = p / (m.outputs.get(HELDOUT, HELDOUT) if m is not None else HELDOUT)
    if not (folder / "state.json").is_file():
        return None
    return datasets.load_from_disk(str(folder))


def build_dataset(cfg: DataConfig, out_dir: str | Path, *, seed: int = 0, on_error: str | None = None,
                  force: bool = False, echo: Any = None, timer: Callable[[str, float], None] | None = None,
                  dry_run: bool = False) -> dict:
    """Build the dataset directory ``out_dir`` from ``cfg`` (see the module doc).

    Args:
        cfg: the data config (sources, cleaning, licence policy).
        out_dir: the output dataset directory.
        seed: the recipe's seed (weights' sampling and the final shuffle).
        on_error: ``"raise"`` / ``"skip"``; overrides ``cfg.on_error`` when given.
        force: rebuild even if ``out_dir`` is complete for the same config.
        echo: where to print the per-source summary (default: ``print`` to stdout).
        timer: called with ``(step, seconds)`` after each step of a build: ``read``, ``clean`` (summed
            over the sources), ``near_dedup``, ``contamination`` (when on), ``write``
            (benchmarks/data_build.py uses it).
        dry_run: read, clean and check everything, print what judge-scored filtering would cost
            (``data.quality``: calls not cached, tokens, money), and stop: nothing is written and
            no judge is called.

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
    benchmarks = None
    if cfg.contamination is not None:  # a bad benchmark path fails here, before any source is read
        from ja_instruct.data.contamination import load_benchmarks

        benchmarks = load_benchmarks(cfg.contamination)
    if out.exists() and any(out.iterdir()) and not (out / "stats.json").is_file() \
            and not (out / "dataset").is_dir() and read_manifest(out, "data") is None:
        # never replace a folder we did not write (a mistyped --out could point anywhere)
        raise UserError("output folder exists and is not a dataset directory", file=out,
                        hint="Choose another --out, or remove the folder.")
    commits = hub_commits(cfg)
    for name, commit in commits.items():
        warning = pin_warning(name, commit)
        if warning:
            echo(warning)
    manifest = data_manifest(cfg, seed, commits)
    fp = manifest.fingerprint
    complete = is_complete(out, fp)
    if complete and not force and not dry_run:
        echo(f"data: {out} is up to date (already built from the same config, seed and inputs; "
             f"fingerprint {fp}): nothing to do (use --force to rebuild)")
        return {**read_json(out / "stats.json"), "skipped": True}
    reasons = ([("--force" if force else "up to date, read again for the dry run")] if complete
               else rebuild_reasons(out, read_manifest(out, "data"), manifest))
    echo(f"data: {'dry run, nothing is written' if dry_run else 'building'} {out}: {'; '.join(reasons)}")

    timer = timer or (lambda step, seconds: None)
    clock = {"read": 0.0, "clean": 0.0}
    cleaner = Cleaner(cfg.clean)
    per_source: dict[str, SourceStats] = {s.name: SourceStats() for s in cfg.sources}
    cleaned: list[tuple[SourceConfig, list[dict]]] = []
    uid = 0
    for src in active:
        t0 = time.perf_counter()
        st = per_source[src.name]
        commit = commits.get(src.name)
        # read exactly the commit that is recorded (the repo may move while we read it); offline,
        # `datasets` finds its cache by the recipe's revision, so that is left as it is
        read_as = src.model_copy(update={"revision": commit.sha}) if commit and commit.via == "hub" else src
        try:
            parsed = read_source(read_as, st, cfg.on_error)
        except UserError as err:
            if err.field in ("path", "answers"):  # name the recipe key, not just the source's
                err.field = f"data.sources[{cfg.sources.index(src)}].{err.field}"
            raise
        t1 = time.perf_counter()
        examples = _with_groups(cleaner.clean(parsed, st), parsed)
        for ex in examples:  # one identity per example, kept by its copies (ids may repeat)
            ex["uid"] = uid
            uid += 1
        cleaned.append((src, examples))
        clock["read"] += t1 - t0
        clock["clean"] += time.perf_counter() - t1
    timer("read", clock["read"])
    timer("clean", clock["clean"])
    extra: dict[str, Any] = {}  # stats sections of the optional steps
    if cfg.clean.near_dedup is not None:
        from ja_instruct.data.neardup import run_near_dedup

        t0 = time.perf_counter()
        cleaned, extra["near_dedup"] = run_near_dedup(cfg.clean, cleaned, per_source, echo)
        timer("near_dedup", time.perf_counter() - t0)
    if benchmarks is not None:
        from ja_instruct.data.contamination import run_check

        t0 = time.perf_counter()
        cleaned, hits, _ = run_check(cfg.contamination, benchmarks, cleaned, per_source)
        timer("contamination", time.perf_counter() - t0)
    if cfg.quality is not None:
        # Last of the filters, so nothing removed above is paid for; before the split and the
        # weights, so held-out examples are vetted alike and a weight repeat is scored once.
        from ja_instruct.data.quality import describe_estimate, estimate, quality_cache_path

        flat = [{**ex, "source": src.name} for src, exs in cleaned for ex in exs]
        cache = quality_cache_path(cfg.quality, out)
        if dry_run:
            echo(describe_estimate(estimate(flat, cfg.quality, cache)))
        else:
            t0 = time.perf_counter()
            cleaned, extra["quality"] = _filter_quality(cfg, cleaned, flat, cache, per_source, echo)
            timer("quality", time.perf_counter() - t0)
    if dry_run:
        if benchmarks is not None:
            found = len({(h.benchmark, h.question_id) for h in hits})
            echo(f"data: dry run: {found} benchmark question(s) found in {len({h.uid for h in hits})} example(s) "
                 f"(data.contamination.mode {cfg.contamination.mode})")
        kept = sum(len(exs) for _, exs in cleaned)
        echo(f"data: dry run: {kept} examples left after cleaning and the checks; nothing written")
        return {"dry_run": True, "kept": kept, **extra}

    # Held out before the weights: a held-out example must not reach training as a repeat.
    held = select_heldout([(src.name, exs) for src, exs in cleaned], cfg.heldout, seed)
    if cfg.heldout.fraction > 0 and not held and any(exs for _, exs in cleaned):
        # asked for a split and got none: fail now, not in `generate` after hours of training
        cap = (f", or its first group by key has more than max_examples {cfg.heldout.max_examples} examples "
               "(a group, e.g. one question's answers or one OASST tree, is never split)"
               if cfg.heldout.max_examples is not None else "")
        raise UserError(f"data.heldout asks for a held-out split, but it came out empty: no group's key falls "
                        f"under fraction {cfg.heldout.fraction}{cap}", field="data.heldout",
                        hint="Raise data.heldout.fraction or max_examples.")
    held_groups = {(name, split_group(ex)) for name, ex in held}
    heldout_counts = Counter(name for name, _ in held)
    scored = cfg.quality is not None  # the dataset gets a `quality` column
    rows: list[dict] = []
    trained: set[int] = set()
    for src, examples in cleaned:
        training = ([ex for ex in examples if (src.name, split_group(ex)) not in held_groups] if held_groups
                    else examples)
        sampled = apply_weight(training, src, seed) if training else []
        per_source[src.name].sampled = len(sampled)
        rows.extend(_row(src, ex, scored) for ex in sampled)
        trained.update(ex["uid"] for ex in sampled)
    if benchmarks is not None:  # now that it is known where every example ended
        from ja_instruct.data.contamination import contamination_stats, mark_splits

        mark_splits(hits, trained, {ex["uid"] for _, ex in held})
        extra["contamination"] = contamination_stats(cfg.contamination, benchmarks, hits)
        for line in describe_contamination({"contamination": extra["contamination"]}):
            echo(f"data: contamination: {line}")
    by_name = {src.name: src for src, _ in cleaned}
    heldout_rows = [_row(by_name[name], ex, scored) for name, ex in held]
    if cfg.shuffle:
        rows = shuffle(rows, seed)
    stats = {**make_stats(cfg, per_source, rows, seed, fp, commits, heldout=heldout_counts), **extra}
    if not rows:
        echo(format_table(stats))
        if held:
            raise UserError(f"the training mixture is empty: all {len(held)} kept examples were held out "
                            "for evaluation", field="data.heldout",
                            hint="Lower data.heldout.fraction, or cap it with data.heldout.max_examples.")
        raise UserError("the mixture is empty: every row of every source was dropped",
                        hint="See the drop reasons above; check the formats, filters and length limits.")
    if heldout_rows:
        manifest.outputs[HELDOUT] = HELDOUT
    manifest.outputs["card"] = "README.md"
    manifest.details = {"total": len(rows), "heldout": len(heldout_rows), "hub_commits": stats["hub_commits"]}
    t0 = time.perf_counter()
    _write(out, cfg, rows, heldout_rows, stats, manifest)
    timer("write", time.perf_counter() - t0)
    echo(format_table(stats))
    echo(f"data: wrote {len(rows)} examples to {out}"
         + (f" (+ {len(heldout_rows)} held out in {out / HELDOUT})" if heldout_rows else ""))
    return stats


def _with_groups(kept: list[dict], parsed: list[dict]) -> list[dict]:
    """``kept`` (the cleaner's output, which carries ids and messages only) with each example's
    split ``group`` from ``parsed``. Looking it up by id is safe: examples that share an id share
    their group too (an oasst id is a message id; repeated ``model:qid`` or record ids give the
    same question id or the id itself)."""
    groups = {ex["id"]: split_group(ex) for ex in parsed}
    for ex in kept:
        ex["group"] = groups[ex["id"]]
    return kept


def _row(src: SourceConfig, ex: dict, scored: bool = False) -> dict:
    row = {"id": ex["id"], "source": src.name, "license": src.license, "commercial": src.allows_commercial,
           "messages": ex["messages"]}
    if scored:
        row["quality"] = ex.get("quality")
    return row


def _public_config_yaml(cfg: DataConfig) -> str:
    """The resolved config as the dataset card shows it: a judge URL without user info or query."""
    import yaml

    from ja_instruct.judge.backends import public_url

    data = cfg.model_dump(mode="json")
    if data.get("quality"):
        data["quality"]["judge"]["base_url"] = public_url(data["quality"]["judge"]["base_url"])
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _filter_quality(cfg: DataConfig, cleaned: list[tuple[SourceConfig, list[dict]]], flat: list[dict], cache: Path,
                    per_source: dict[str, SourceStats], echo) -> tuple[list[tuple[SourceConfig, list[dict]]], dict]:
    """``data.quality``: score ``flat`` (every example of ``cleaned``, with its source), keep what
    the rule keeps (each carrying its score under ``quality``); returns the pairs and
    ``stats["quality"]``."""
    from ja_instruct.data.quality import describe, dropped_by_source, score_examples, select

    result = score_examples(flat, cfg.quality, cache, echo=echo)
    kept, stats = select(flat, result, cfg.quality)
    for name, n in dropped_by_source(flat, kept).items():
        per_source[name].drop("low_quality", n)
        per_source[name].kept -= n
    by_source: dict[str, list[dict]] = {src.name: [] for src, _ in cleaned}
    for ex in kept:
        by_source[ex.pop("source")].append(ex)
    echo(describe(stats))
    return [(src, by_source[src.name]) for src, _ in cleaned], stats


def _write(out: Path, cfg: DataConfig, rows: list[dict], heldout_rows: list[dict], stats: dict,
           manifest: Manifest) -> None:
    """Write everything into a temp folder beside ``out`` (the manifest last), then swap it into
    place: a folder at ``out`` with a manifest is always complete (held-out split included)."""
    import datasets

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the output is an ordinary folder
    try:
        # straight to Arrow: Dataset.from_list would encode every example in Python (~10x slower)
        import pyarrow as pa

        features = _features(cfg.quality is not None)
        for name, part in (("dataset", rows), (HELDOUT, heldout_rows)):
            if part:
                table = pa.Table.from_pylist(part, schema=features.arrow_schema)
                datasets.Dataset(table, info=datasets.DatasetInfo(features=features)).save_to_disk(str(tmp / name))
        write_json(tmp / "stats.json", stats)
        write_text(tmp / "stats.md", format_markdown(stats))
        save_config(cfg, tmp)
        # the Hugging Face dataset card: push_to_hub shows it, so its recipe has no credentials
        write_dataset_card(tmp, stats, _public_config_yaml(cfg))
        write_manifest(tmp, manifest)
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
