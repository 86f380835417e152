"""Read everything a report shows: judgments, judge summaries, answers, questions, metadata.

Only the shared file formats are read (see the README's "Output formats"), so a report
works on any judge folder: one written by ``ja-instruct judge``, an imported FastChat
run, or a folder put together by hand. What is absent (answers, questions, model cards)
is simply not shown.

Where things are found, starting from a judge folder ``J``:

* ``J/judgments.jsonl`` (required), ``J/summary.json`` and ``J/config.yaml`` (optional);
* the answers folder: ``answers_dir`` of the summary or config, else ``J/../answers``;
* the questions: the judge config's ``questions``, else the generate config's (in the
  answers folder), when it is a local file or ``embedded:NAME``;
* each model's path: the generate config's ``models[].path`` (``trained`` = the run layout's
  ``<train>/final``); training-data licences from a ``stats.json`` (the data stage's) found beside
  the model, through the train config's ``dataset_dir``, or in ``<root>/data``; the base model of
  a trained one: the train config's ``model`` (``<train>/config.yaml``); the benchmark contamination
  result of that same stats.json (`ja_instruct.data.card.describe_contamination`);
* how a model folder ``M`` was trained (any model, not only ``trained``): the train stage's
  ``M/../manifest.json`` (``details["method"]``, ``details["dpo"]``) and ``M/../config.yaml``
  (``model``: what it started from), and per-step DPO figures from ``M/../metrics.jsonl``;
* reference NLLs: ``reference_nll.json`` in the answers folder (optional; see
  `load_reference_nll`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ja_instruct.config import UniqueKeyLoader, resolve_path
from ja_instruct.data.card import describe_contamination
from ja_instruct.errors import UserError
from ja_instruct.io import iter_jsonl, read_json

log = logging.getLogger(__name__)

JUDGMENTS = "judgments.jsonl"
TRAINED = "trained"  # the generate stage's "this recipe's train output" marker
REFERENCE_NLL = "reference_nll.json"  # the generate stage's reference NLLs, beside the answers


@dataclass
class JudgeRun:
    """One judge folder and what it says about itself."""

    dir: Path
    config: dict
    summary: dict | None
    judge: str
    backend: str | None
    prompt: str
    mode: str
    question_set: str | None
    answers_dir: Path | None


@dataclass
class ModelInfo:
    """Where a model's answers came from: generation settings, its path, its training data."""

    id: str
    generation: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)
    path: str | None = None
    licences: dict[str, Any] | None = None
    licence_source: str | None = None
    card: str | None = None
    train_model: str | None = None  # a trained model's base: its train config's ``model``
    data_checks: list[str] | None = None  # the contamination sentences of its training data's stats.json
    method: str | None = None  # "sft" | "dpo": the train run that exported it (None: not trained by us)
    preference: dict | None = None  # its train manifest's details["dpo"] (a DPO model only)
    preference_steps: list[dict] | None = None  # its DPO run's metrics.jsonl lines (train and eval)


@dataclass
class ReportData:
    """Everything the report needs, merged over the judge folders."""

    runs: list[JudgeRun]
    judgments: list[dict]
    questions: dict[str, dict]
    answers: dict[str, dict[str, dict]]
    models: dict[str, ModelInfo]
    generate_config: dict | None = None
    reference_nll: dict[str, dict] = field(default_factory=dict)  # model id -> its reference_nll.json entry
    reference_nll_files: list[dict] = field(default_factory=list)  # {"file", "source", "heldout", ...}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as e:
        log.warning("cannot read %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _find_dir(value: str | None, base: Path) -> Path | None:
    """A recorded folder path: as written (relative to the cwd), else relative to ``base``."""
    if not value:
        return None
    for cand in (Path(value).expanduser(), base / value):
        if cand.is_dir():
            return cand
    return None


def _judge_meta(d: Path) -> tuple[dict | None, dict, Path | None]:
    """(summary.json, config.yaml, answers folder) of a judge folder."""
    summary = read_json(d / "summary.json") if (d / "summary.json").is_file() else None
    config = _read_yaml(d / "config.yaml")
    s = summary or {}
    answers_dir = (_find_dir(s.get("answers_dir"), d) or _find_dir(config.get("answers_dir"), d)
                   or _find_dir("answers", d.parent))
    return summary, config, answers_dir


def input_fingerprints(judge_dirs: list[str | Path]) -> dict[str, str]:
    """What a report is made from, for its manifest: each judge folder's manifest fingerprint
    together with the hash of its judgments.jsonl + summary.json, the answer files of its answers
    folder, the folder's reference_nll.json (when there is one) and its local question file.
    Reads only small files: deciding costs no loading."""
    from ja_instruct.io import stable_hash
    from ja_instruct.manifest import file_fingerprint, read_manifest

    inputs: dict[str, str] = {}
    for jd in judge_dirs:
        d = Path(jd)
        m = read_manifest(d, "judge")
        # The judge manifest's fingerprint names its inputs and config, not its results: a re-run
        # with retry_errors / retry_parse_errors (or a fresh cache on a sampling judge) rewrites
        # judgments.jsonl under the same fingerprint. The files themselves are what the report shows.
        inputs[f"judge:{d}"] = stable_hash({"manifest": m.fingerprint if m is not None else None,
                                            **{n: file_fingerprint(d / n) for n in (JUDGMENTS, "summary.json")
                                               if (d / n).is_file()}})
        if not (d / JUDGMENTS).is_file():
            continue  # loading reports it
        summary, config, answers_dir = _judge_meta(d)
        if answers_dir is not None:
            inputs[f"answers:{answers_dir}"] = stable_hash(
                {f.name: file_fingerprint(f) for f in sorted(answers_dir.glob("*.jsonl"))})
            if (answers_dir / REFERENCE_NLL).is_file():
                inputs[f"reference_nll:{answers_dir}"] = file_fingerprint(answers_dir / REFERENCE_NLL)
            inputs.update(_dpo_run_inputs(answers_dir))
        q = (summary or {}).get("question_set") or config.get("questions")
        if q and resolve_path(q).is_file():
            inputs[f"questions:{q}"] = file_fingerprint(resolve_path(q))
    return inputs


def _dpo_run_inputs(answers_dir: Path) -> dict[str, str]:
    """The train manifests (and metrics) of the DPO models answered in ``answers_dir``: the
    "Preference tuning" section shows them, and a DPO run re-measured with another ``eval_every``
    changes them without changing any answer. Nothing for SFT models (their reports' manifests
    stay as they were)."""
    from ja_instruct.manifest import RunLayout, file_fingerprint, read_manifest

    out = {}
    for spec in _read_yaml(answers_dir / "config.yaml").get("models") or []:
        path = spec.get("path") if isinstance(spec, dict) else None
        if not path or str(path).startswith("embedded:"):
            continue
        train = RunLayout(answers_dir.parent).train if path == TRAINED else Path(str(path)).expanduser().parent
        m = read_manifest(train, "train")
        if m is not None and m.details.get("method") == "dpo":
            files = [f for f in (train / "manifest.json", train / "metrics.jsonl") if f.is_file()]
            out[f"train:{train}"] = "+".join(file_fingerprint(f) for f in files)
    return out


def load_judge_run(judge_dir: str | Path) -> tuple[JudgeRun, list[dict]]:
    """Read one judge folder: its judgments plus summary/config metadata."""
    d = Path(judge_dir)
    path = d / JUDGMENTS
    if not path.is_file():
        raise UserError(f"no {JUDGMENTS} in '{d}'", file=d,
                        hint="Pass a folder written by `ja-instruct judge` (e.g. runs/NAME/judge).")
    judgments = [rec for _, rec in iter_jsonl(path, allow_empty=True)]
    for i, rec in enumerate(judgments, 1):
        if rec.get("mode") not in ("single", "pairwise") or "question_id" not in rec:
            raise UserError("not a judgment record (needs 'mode' single|pairwise and 'question_id')",
                            file=path, line=i, hint="See the judgments format in docs/report.md.")
    summary, config, answers_dir = _judge_meta(d)
    backend_cfg = config.get("backend") if isinstance(config.get("backend"), dict) else {}
    first = judgments[0] if judgments else {}
    s = summary or {}
    run = JudgeRun(
        dir=d, config=config, summary=summary,
        judge=str(s.get("judge") or first.get("judge") or backend_cfg.get("model") or "unknown"),
        backend=backend_cfg.get("backend") or s.get("backend"),
        prompt=str(s.get("prompt") or first.get("prompt") or "unknown"),
        mode=str(s.get("mode") or first.get("mode") or config.get("mode") or "single"),
        question_set=s.get("question_set") or config.get("questions"),
        answers_dir=answers_dir,
    )
    return run, judgments


def _load_questions(candidates: list[str | None], answers_dirs: list[Path]) -> dict[str, dict]:
    """Questions by id from the first local question file among the candidates."""
    paths = [resolve_path(c) for c in candidates if c]
    paths += [a / "questions.jsonl" for a in answers_dirs]
    for p in paths:
        if p.is_file() and p.suffix == ".jsonl":
            out = {}
            for _, q in iter_jsonl(p):
                turns = q.get("turns") or ([q["text"]] if "text" in q else [])
                out[str(q.get("question_id"))] = {"category": q.get("category") or "uncategorised",
                                                  "turns": [str(t) for t in turns]}
            return out
    return {}


def _load_answers(answers_dir: Path, models: set[str]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for m in sorted(models):
        f = answers_dir / f"{m}.jsonl"
        if f.is_file():
            out[m] = {str(a.get("question_id")): a for _, a in iter_jsonl(f, allow_empty=True)}
    return out


def _licences_from_stats(stats: dict) -> dict | None:
    """The licence breakdown of a data stage's stats.json (whatever its exact layout):
    ``{source: "LICENCE (N examples)"}`` when sources are listed, else the licence counts."""
    sources = stats.get("sources")
    if isinstance(sources, dict) and sources:
        out = {}
        for name, s in sources.items():
            if isinstance(s, dict) and (s.get("license") or s.get("licence")):
                n = s.get("sampled", s.get("kept"))
                out[name] = f"{s.get('license') or s.get('licence')}" + (f" ({n} examples)" if n is not None else "")
        if out:
            return out
    for key in ("licenses", "licences", "license", "licence", "licenses_used"):
        if key in stats and stats[key]:
            return stats[key]
    return None


def _model_provenance(info: ModelInfo, root: Path | None) -> None:
    """Fill path, model card, training-data licences and base model of a (tuned) model, best effort."""
    from ja_instruct.manifest import RunLayout

    path = info.spec.get("path") or info.generation.get("model_path") or info.generation.get("path")
    if path == TRAINED and root is not None:
        final = RunLayout(root).final  # wherever `ja-instruct train --out` put it
        path = str(final)
        model = _read_yaml(final.parent / "config.yaml").get("model")
        info.train_model = str(model) if model else None
    info.path = path
    if not path or str(path).startswith("embedded:"):
        return
    mdir = Path(path).expanduser()
    if not mdir.is_dir():
        return
    _train_run(info, mdir)
    card = mdir / "README.md"
    if card.is_file():
        info.card = card.read_text(encoding="utf-8", errors="replace")
    cands = [mdir / "stats.json", mdir / "training_data.json", mdir.parent / "stats.json"]
    train_cfg = _read_yaml(mdir.parent / "config.yaml") or _read_yaml(mdir / "train_config.yaml")
    if train_cfg.get("dataset_dir"):
        cands.append(Path(str(train_cfg["dataset_dir"])).expanduser() / "stats.json")
    cands.append(mdir.parent.parent / "data" / "stats.json")
    for c in cands:
        if c.is_file():
            try:
                stats = read_json(c)
            except UserError:
                continue
            lic = _licences_from_stats(stats) if isinstance(stats, dict) else None
            if lic:
                info.licences, info.licence_source = lic, str(c)
                # the same words as the dataset and model cards (one implementation)
                info.data_checks = describe_contamination(stats)
                return


def _train_run(info: ModelInfo, mdir: Path) -> None:
    """How the train stage made the model folder ``mdir`` (``<train>/final``), when it did: the
    model it started from (lets the report follow base -> SFT -> DPO), the method, and for DPO
    the manifest's ``details["dpo"]`` and the run's metrics.jsonl."""
    from ja_instruct.manifest import read_manifest

    train = mdir.parent
    manifest = read_manifest(train, "train")
    config = _read_yaml(train / "config.yaml")
    if manifest is None and not config.get("model"):
        return  # not a folder our train stage exported
    if info.train_model is None:
        start = config.get("model") or (manifest.config.get("model") if manifest is not None else None)
        info.train_model = str(start) if start else None
    details = manifest.details if manifest is not None else {}
    # a run from before `method` existed was SFT: the only method there was
    info.method = str(details.get("method") or config.get("method") or "sft")
    if info.method == "dpo" and isinstance(details.get("dpo"), dict):
        info.preference = details["dpo"]
        metrics = train / "metrics.jsonl"
        if metrics.is_file():  # a line cut by a killed run costs that line, not the report
            info.preference_steps = [r for _, r in iter_jsonl(metrics, on_error="skip", errors=[], allow_empty=True)]


def _number(v: Any) -> bool:
    """A finite JSON number (NaN/Infinity would make the report's summary.json invalid JSON)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_nll_entry(model: str, e: Any, path: Path, hint: str) -> None:
    """Raise a UserError naming the file when a model's entry is not the documented shape."""
    where = f"models.{model}"
    if not isinstance(e, dict):
        raise UserError("a model's entry must be an object", file=path, field=where, hint=hint)
    if "unavailable" in e:
        if not isinstance(e["unavailable"], str):
            raise UserError("'unavailable' must be a string (why no NLL was measured)", file=path, field=where,
                            hint=hint)
        return
    for k in ("mean_nll", "perplexity", "tokens", "conversations"):
        if not _number(e.get(k)):
            raise UserError(f"'{k}' must be a number", file=path, field=f"{where}.{k}", hint=hint)
    convs = e.get("per_conversation", [])
    if not isinstance(convs, list):
        raise UserError("'per_conversation' must be a list", file=path, field=f"{where}.per_conversation",
                        hint=hint)
    for i, c in enumerate(convs):
        if not (isinstance(c, dict) and isinstance(c.get("id"), (str, int)) and _number(c.get("nll"))
                and _number(c.get("tokens"))):
            raise UserError("each per-conversation record needs 'id', 'nll' (a number) and 'tokens' (a number)",
                            file=path, field=f"{where}.per_conversation[{i}]", hint=hint)


def load_reference_nll(answers_dir: Path) -> dict | None:
    """``<answers>/reference_nll.json`` (the generate stage's reference NLLs), validated;
    None when absent. Its shape::

        {"version": 1, "references": {"source", "fingerprint", "conversations", "heldout": bool}, "definition": str,
         "models": {id: {"fingerprint", "mean_nll", "perplexity", "tokens", "conversations", "skipped",
                         "per_conversation": [{"id", "nll" (summed over the tokens), "tokens"}]}
                    | {"fingerprint", "unavailable": why}}}

    ``references.heldout`` is true only for the data stage's held-out split (absent: not recorded).
    A malformed file is a UserError naming it (a model absent from it is simply not measured)."""
    path = answers_dir / REFERENCE_NLL
    if not path.is_file():
        return None
    hint = "It is written by `ja-instruct generate`; regenerate it, or delete it to report without NLLs."
    raw = read_json(path)  # a UserError naming the file and line when it is not JSON
    if not isinstance(raw, dict) or raw.get("version") != 1 or not isinstance(raw.get("models"), dict):
        raise UserError("not a reference NLL file (needs 'version': 1 and a 'models' object)", file=path,
                        hint=hint)
    for m, e in raw["models"].items():
        _check_nll_entry(str(m), e, path, hint)
    return raw


def _identity(r: dict) -> tuple | None:
    if not r.get("key"):
        return None
    return tuple(str(r.get(k)) for k in ("judge", "key", "repeat", "model", "model_a", "model_b", "order",
                                         "question_id", "turn"))


def load_report_data(judge_dirs: list[str | Path]) -> ReportData:
    """Load and merge judge folders (plus the answers/questions/metadata they point to)."""
    if not judge_dirs:
        raise UserError("no judge folder given", hint="Pass at least one folder with judgments.jsonl.")
    runs, judgments, seen = [], [], set()
    for d in judge_dirs:
        run, recs = load_judge_run(d)
        runs.append(run)
        # The same judgment reached through two folders (a shared cache) is counted once. Within
        # one folder every record stays (two items may share a key: identical requests), so a
        # single folder gives exactly the records its summary.json was computed from.
        ids = [_identity(r) for r in recs]
        for k, r in zip(ids, recs):
            if k is None or k not in seen:
                judgments.append(r)
        seen.update(k for k in ids if k is not None)
    if not judgments:
        raise UserError("the judge folders hold no judgments", file=runs[0].dir / JUDGMENTS,
                        hint="Run `ja-instruct judge` first.")
    models = {r["model"] for r in judgments if r.get("model")}
    models |= {r[k] for r in judgments for k in ("model_a", "model_b") if r.get(k)}
    answers_dirs = [r.answers_dir for r in runs if r.answers_dir is not None]
    answers: dict[str, dict[str, dict]] = {}
    for a in answers_dirs:
        for m, recs in _load_answers(a, models - set(answers)).items():
            answers[m] = recs
    gen_cfg = next((c for c in (_read_yaml(a / "config.yaml") for a in answers_dirs) if c), None)
    questions = _load_questions([r.question_set for r in runs] + [(gen_cfg or {}).get("questions")], answers_dirs)
    specs = {m.get("id"): m for m in (gen_cfg or {}).get("models", []) if isinstance(m, dict)}
    root = answers_dirs[0].parent if answers_dirs else None
    infos: dict[str, ModelInfo] = {}
    for m in sorted(models):
        first = next(iter(answers.get(m, {}).values()), {})
        info = ModelInfo(id=m, generation=dict(first.get("generation") or {}), spec=dict(specs.get(m) or {}))
        _model_provenance(info, root)
        infos[m] = info
    nll: dict[str, dict] = {}
    nll_files: list[dict] = []
    for a in dict.fromkeys(answers_dirs):
        raw = load_reference_nll(a)
        if raw is None:
            continue
        refs = raw.get("references") if isinstance(raw.get("references"), dict) else {}
        held = refs.get("heldout")  # absent (older files) or not a bool: unknown, never assumed held out
        nll_files.append({"file": str(a / REFERENCE_NLL), "source": refs.get("source"),
                          "conversations": refs.get("conversations"), "definition": raw.get("definition"),
                          "heldout": held if isinstance(held, bool) else None})
        for m, e in raw["models"].items():
            if m in models and m not in nll:
                nll[m] = e
    return ReportData(runs=runs, judgments=judgments, questions=questions, answers=answers,
                      models=infos, generate_config=gen_cfg, reference_nll=nll, reference_nll_files=nll_files)
