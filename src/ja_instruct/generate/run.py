"""The generate stage: answers for every (question, model), as FastChat answer JSONL.

    run_generation(recipe, out_dir=None, models=None) -> Path   # used by the CLI and the pipeline

Output (default ``recipe.stage_dir("generate")``, i.e. ``<root>/answers``)::

    <out>/<model_id>.jsonl   one FastChat answer per line, plus our "generation", "fingerprint"
                             and "health" keys
    <out>/health.json        per model: empty / truncated / loop / low-Japanese counts
    <out>/reference_nll.json with ``reference_nll`` set: each model's mean NLL per token of
                             reference answers (`ja_instruct.generate.nll`)
    <out>/config.yaml        the resolved generate section
    <out>/manifest.json      written LAST: the section's hash, each model's and the question
                             set's fingerprint (`ja_instruct.manifest`), and the references'
                             fingerprint when reference_nll is set

Every answer is a function of its inputs (`ja_instruct.generate.identity`): a re-run keeps
an answer only when its model, its generation settings and its question are what this run
would use; the others are regenerated, and one line per model says how many and why
(``sft: 48 regenerated: model changed``). When the manifest matches, nothing is loaded and
nothing is written. A reference-NLL entry is kept the same way; a stale one is computed with
the model generation has loaded, or with the model loaded for it alone when the answers are
current. A killed run loses at most the chunk in flight: answers are appended (and fsynced)
as soon as all their turns are done.

Multi-turn (Japanese MT-Bench): turn k is asked with the model's own answers to turns
1..k-1 in the conversation, exactly as FastChat's ``gen_model_answer`` does.

Samples (``generate.samples`` N, JA MT-Bench leaderboard mode): each record's ``choices``
holds N answers ``{"index": k, "turns": [...], "health": [...]}``, sample k drawn with
seed + k, each its own conversation (turn 2 of sample k follows sample k's turn 1); the
record's ``health`` is sample 0's. With N = 1 a record is exactly what it was before
samples existed (no per-choice ``health``). Greedy local decoding (hf/vllm at temperature
0, where the seed changes nothing) answers once and copies that answer N times. Changing N
keeps every current sample: raising it generates only the missing ones (the record leaves
the file and comes back whole once its samples are complete; a run killed in between
answers that question again), lowering it drops the last ones.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ja_instruct.config import save_config
from ja_instruct.errors import UserError
from ja_instruct.generate.backends import Backend, Generation, SamplingParams, get_backend_class
from ja_instruct.generate.config import GenerateConfig, ModelSpec
from ja_instruct.generate.health import choice_health, language_counts, summarize, turn_health
from ja_instruct.generate.identity import (answer_fingerprint, generation_settings, is_hub_model, model_identity,
                                           questions_fingerprint, stale_reasons)
from ja_instruct.generate.nll import NLL_FILE, ReferenceNLL, load_references
from ja_instruct.generate.questions import Question, load_questions
from ja_instruct.io import JsonlAppender, read_json, read_jsonl_store, write_json, write_jsonl
from ja_instruct.manifest import make_manifest, read_manifest, remove_manifest, write_manifest

log = logging.getLogger(__name__)


def answers_dir(recipe, out_dir: str | Path | None = None) -> Path:
    """Where the answers go: ``out_dir`` if given, else the run layout's generate folder."""
    return Path(out_dir) if out_dir is not None else recipe.stage_dir("generate")


def build_conversation(spec: ModelSpec, question: Question, previous: list[str], turn: int) -> list[dict]:
    """The messages for answering ``question.turns[turn]``, after the model's own ``previous`` answers."""
    msgs = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    for i in range(turn):
        msgs.append({"role": "user", "content": question.turns[i]})
        msgs.append({"role": "assistant", "content": previous[i]})
    msgs.append({"role": "user", "content": question.turns[turn]})
    return msgs


def sampling_params(cfg: GenerateConfig, spec: ModelSpec, category: str, seed: int) -> SamplingParams:
    """The sampling params for a question of ``category`` (per-category temperature applied)."""
    return SamplingParams(temperature=cfg.temperature_for(category), top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty,
                          seed=seed, stop=tuple(spec.stop))


def sample_params(params: SamplingParams, k: int) -> SamplingParams:
    """The params of sample ``k``: the question's params with the seed moved by k."""
    return params if k == 0 else dataclasses.replace(params, seed=params.seed + k)


def copies_first_sample(spec: ModelSpec, params: SamplingParams) -> bool:
    """Whether every sample is sample 0 again: the seed cannot change the answer (greedy hf/vllm)."""
    return "seed" not in generation_settings(spec, params)


@dataclass
class Job:
    """One question to answer: the samples to generate, and the current answer they complete
    (None: a new answer)."""

    question: Question
    samples: list[int]
    record: dict | None = None


def answer_questions(backend: Backend, spec: ModelSpec, jobs: list[Job],
                     params_of: Callable[[Question], SamplingParams]
                     ) -> Iterator[tuple[Job, dict[int, list[Generation]], SamplingParams]]:
    """Answer ``jobs`` chunk by chunk; yield ``(job, {sample: generations per turn}, params)`` as each
    chunk finishes. Jobs are grouped by the question's sampling params and sorted longest first, so
    a batch holds similar lengths and an out-of-memory error shows up at once; within a chunk each
    sample is one pass over the turns with that sample's seed (one call = one params set)."""
    groups: dict[SamplingParams, list[Job]] = {}
    for job in sorted(jobs, key=lambda j: -len(j.question.turns[0])):
        groups.setdefault(params_of(job.question), []).append(job)
    for params, js in groups.items():
        for start in range(0, len(js), max(1, backend.chunk_size)):
            chunk = js[start:start + backend.chunk_size]
            gens: list[dict[int, list[Generation]]] = [{} for _ in chunk]
            for k in sorted({k for j in chunk for k in j.samples}):
                todo = [i for i, j in enumerate(chunk) if k in j.samples]
                got: dict[int, list[Generation]] = {i: [] for i in todo}
                for turn in range(max(len(chunk[i].question.turns) for i in todo)):
                    live = [i for i in todo if turn < len(chunk[i].question.turns)]
                    convs = [build_conversation(spec, chunk[i].question, [g.text for g in got[i]], turn) for i in live]
                    for i, g in zip(live, backend.generate(convs, sample_params(params, k))):
                        got[i].append(g)
                for i in todo:
                    gens[i][k] = got[i]
            for job, g in zip(chunk, gens):
                yield job, g, params


def make_choice(k: int, gens: list[Generation]) -> dict:
    """Sample ``k`` of an answer: its turns and their health."""
    return {"index": k, "turns": [g.text for g in gens],
            "health": [turn_health(g.text, truncated=g.truncated, n_tokens=g.n_tokens) for g in gens]}


def answer_record(q: Question, spec: ModelSpec, model_path: str | None, choices: list[dict], params: SamplingParams,
                  model_fp: str) -> dict:
    """A FastChat answer record with our ``generation`` (sample 0's settings), ``fingerprint`` and
    ``health`` (sample 0's) keys; ``choices`` as `make_choice` builds them (one: no per-choice health)."""
    settings = generation_settings(spec, params)
    return {
        "question_id": q.question_id,
        "answer_id": uuid.uuid4().hex,
        "model_id": spec.id,
        "choices": [{"index": 0, "turns": choices[0]["turns"]}] if len(choices) == 1 else choices,
        "tstamp": time.time(),
        "generation": {**settings, "model": model_path or spec.id, "category": q.category},
        "fingerprint": answer_fingerprint(model_fp, settings, q),
        "health": choices[0]["health"],
    }


def complete_record(job: Job, gens: dict[int, list[Generation]], spec: ModelSpec, model_path: str | None,
                    params: SamplingParams, model_fp: str, samples: int) -> dict:
    """The record of ``job`` once its samples are done: the current answer's samples, the new
    ones, and copies of sample 0 up to ``samples`` when the seed changes nothing."""
    choices = []
    if job.record is not None:
        choices = [{"index": k, "turns": c["turns"], "health": choice_health(job.record, k)}
                   for k, c in enumerate(job.record["choices"])]
    choices += [make_choice(k, gens[k]) for k in sorted(gens)]
    while len(choices) < samples:
        choices.append({**choices[0], "index": len(choices)})
    return answer_record(job.question, spec, model_path, choices, params, model_fp)


def cut_record(record: dict, samples: int) -> dict:
    """``record`` with only its first ``samples`` choices (one: the single-sample form)."""
    choices = record["choices"][:samples]
    if samples == 1:
        choices = [{"index": 0, "turns": choices[0]["turns"]}]
    return {**record, "choices": choices, "health": choice_health(record, 0)}


def _n_choices(record: dict) -> int:
    """How many samples a record holds (0: its ``choices`` are not 0..n-1 with turns)."""
    choices = record.get("choices")
    ok = isinstance(choices, list) and all(isinstance(c, dict) and c.get("index", i) == i
                                           and isinstance(c.get("turns"), list) for i, c in enumerate(choices))
    return len(choices) if ok else 0


def _read_answers(path: Path, model_id: str) -> list[dict]:
    records = read_jsonl_store(path)
    for i, r in enumerate(records, 1):
        if r.get("model_id") != model_id:
            raise UserError(f"answer file holds model '{r.get('model_id')}', not '{model_id}' (record {i})",
                            file=path, hint="Use another --out folder, or delete the file.")
    return records


@dataclass
class Plan:
    """What to do with one model's answer file: the records to keep, the questions to answer."""

    keep: list[dict] = field(default_factory=list)
    pending: list[Job] = field(default_factory=list)
    regenerated: Counter = field(default_factory=Counter)  # reason -> answers
    new: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> answers
    resampled: Counter = field(default_factory=Counter)  # (samples before, after) -> answers
    current: int = 0  # answers kept as they are

    @property
    def rewrite(self) -> bool:
        """Whether the file holds records that must go before new ones are appended."""
        return bool(self.regenerated or self.dropped or self.resampled)

    def summary(self) -> str:
        """One line: ``3 up to date; 5 regenerated: model changed; 2 new questions``."""
        parts = [f"{self.current} up to date"] if self.current else []
        parts += [f"{n} from {a} to {b} samples ({'more generated' if b > a else 'the last ones dropped'})"
                  for (a, b), n in self.resampled.items()]
        parts += [f"{n} regenerated: {why}" for why, n in self.regenerated.items()]
        parts += [f"{self.new} new question{'s' * (self.new != 1)}"] if self.new else []
        parts += [f"{n} answer{'s' * (n != 1)} dropped: {why}" for why, n in self.dropped.items()]
        return "; ".join(parts) or "no questions"


def plan_answers(records: list[dict], questions: list[Question], spec: ModelSpec, model_fp: str,
                 params_of: Callable[[Question], SamplingParams], samples: int = 1) -> Plan:
    """Sort the existing answers into kept (same model, settings and question), given more or
    fewer samples, and stale (with the reason), and list the questions that need answering."""
    by_key = {q.key: q for q in questions}
    reasons: list[list[str] | None] = []  # per record; None: its question is no longer in the set
    fresh: dict[str, int] = {}  # question key -> index of the (first) current answer
    for i, rec in enumerate(records):
        q = by_key.get(str(rec.get("question_id")))
        if q is None:
            reasons.append(None)
            continue
        settings = generation_settings(spec, params_of(q))
        reasons.append(stale_reasons(rec, answer_fingerprint(model_fp, settings, q), settings)
                       or ([] if _n_choices(rec) else ["no answer in choices"]))
        if not reasons[-1]:
            fresh.setdefault(q.key, i)
    plan, stale = Plan(), set()
    for i, (rec, why) in enumerate(zip(records, reasons)):
        key = str(rec.get("question_id"))
        if why is None:
            plan.dropped["question no longer in the set"] += 1
        elif fresh.get(key) == i:
            have = _n_choices(rec)
            if have == samples:
                plan.keep.append(rec)
                plan.current += 1
                continue
            plan.resampled[have, samples] += 1
            if have > samples:
                plan.keep.append(cut_record(rec, samples))
            else:
                q = by_key[key]
                todo = [] if copies_first_sample(spec, params_of(q)) else list(range(have, samples))
                plan.pending.append(Job(q, todo, rec))
        elif key in fresh or key in stale:
            plan.dropped["duplicate answer"] += 1
        else:
            plan.regenerated[", ".join(why)] += 1
            stale.add(key)
    for q in questions:
        if q.key not in fresh:
            plan.pending.append(Job(q, [0] if copies_first_sample(spec, params_of(q)) else list(range(samples))))
    plan.new = sum(job.record is None for job in plan.pending) - len(stale)
    return plan


def generate_for_model(spec: ModelSpec, model_path: str | None, model_fp: str, cfg: GenerateConfig,
                       questions: list[Question], out: Path, seed: int, recipe=None,
                       on_loaded: Callable[[Backend, str], None] | None = None) -> tuple[dict, str]:
    """Bring ``<out>/<id>.jsonl`` up to date: keep current answers, drop stale ones (file rewritten
    atomically first), answer the rest. ``on_loaded(backend, model_fp)`` runs after answering,
    while the backend is still loaded (reference NLL). Returns (the model's health summary, the
    model fingerprint the new answers carry)."""
    from tqdm import tqdm

    path = out / f"{spec.id}.jsonl"
    params_of = lambda q: sampling_params(cfg, spec, q.category, seed)  # noqa: E731
    plan = plan_answers(_read_answers(path, spec.id), questions, spec, model_fp, params_of, cfg.samples)
    log.info("%s: %s", spec.id, plan.summary())
    if plan.rewrite:  # stale answers (and those given more samples) leave the file before any is appended
        write_jsonl(path, plan.keep)
    records = list(plan.keep)
    copies = [job for job in plan.pending if not job.samples]  # more copies of a greedy answer: no model
    work = [job for job in plan.pending if job.samples]
    if copies:
        with JsonlAppender(path) as store:
            for job in copies:
                records.append(complete_record(job, {}, spec, model_path, params_of(job.question), model_fp,
                                               cfg.samples))
                store.append(records[-1])
    if work:
        backend = get_backend_class(spec.backend)(spec, model_path)
        try:
            if recipe is not None and is_hub_model(spec, model_path):
                model_fp = model_identity(spec, recipe)[1]  # loading may have downloaded another snapshot
            with JsonlAppender(path) as store, tqdm(total=len(questions), initial=len(questions) - len(work),
                                                    desc=f"generate {spec.id}", unit="q", file=sys.stderr) as bar:
                for job, gens, params in answer_questions(backend, spec, work, params_of):
                    rec = complete_record(job, gens, spec, model_path, params, model_fp, cfg.samples)
                    store.append(rec)
                    records.append(rec)
                    bar.update(1)
            if on_loaded is not None:
                on_loaded(backend, model_fp)
        finally:
            backend.close()
    return {**summarize(records), "language": language_counts(records)}, model_fp


def _is_complete(out: Path, spec: ModelSpec, model_fp: str, cfg: GenerateConfig, questions: list[Question],
                 seed: int) -> bool:
    """Whether ``<out>/<id>.jsonl`` holds exactly one current answer per question, nothing else."""
    path = out / f"{spec.id}.jsonl"
    if not path.is_file():
        return False
    plan = plan_answers(_read_answers(path, spec.id), questions, spec, model_fp,
                        lambda q: sampling_params(cfg, spec, q.category, seed), cfg.samples)
    return not plan.pending and not plan.rewrite


def _select(cfg: GenerateConfig, models: list[str] | None) -> list[ModelSpec]:
    if not models:
        return list(cfg.models)
    known = {m.id for m in cfg.models}
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UserError(f"unknown model id(s) {', '.join(unknown)}", field="--model",
                        hint=f"Models in the recipe: {', '.join(sorted(known))}.")
    return [m for m in cfg.models if m.id in models]


def run_generation(recipe, out_dir: str | Path | None = None, models: list[str] | None = None) -> Path:
    """Bring the answers of the recipe's models to its question set up to date.

    Args:
        recipe: a `ja_instruct.recipe.Recipe` with a ``generate`` section.
        out_dir: output folder (registered in the run layout, so judge and report find it);
            default ``recipe.stage_dir("generate")``.
        models: only these model ids (default: every model in the section). The stage manifest
            is written only when every model of the section is complete and current.

    Returns:
        The answers folder (``<out>/<model_id>.jsonl`` per model).

    Raises:
        UserError: unknown model id, missing question file, missing or outdated trained model,
            missing API key... all checked before any model is loaded.
    """
    cfg: GenerateConfig = recipe.require("generate")
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    resolved = cfg.model_copy(update={"seed": seed})
    specs = _select(cfg, models)
    # Cheap checks first: a typo must not cost a model load.
    questions = load_questions(cfg.questions, split=cfg.split, references=cfg.reference_answers, limit=cfg.limit)
    refs = load_references(cfg.reference_nll, recipe) if cfg.reference_nll is not None else None
    identity = {spec.id: model_identity(spec, recipe) for spec in specs}
    for spec in cfg.models:  # models outside a --model subset only decide whether the stage is complete
        if spec.id not in identity:
            try:
                identity[spec.id] = model_identity(spec, recipe)
            except UserError:
                pass

    out = answers_dir(recipe, out_dir)
    if out_dir is not None:
        recipe.layout.register("generate", out)
    outputs = {spec.id: f"{spec.id}.jsonl" for spec in cfg.models}
    if refs is not None:
        outputs[":reference_nll"] = NLL_FILE  # ':' cannot start a model id, so no model's file is shadowed

    def manifest():
        if any(spec.id not in identity for spec in cfg.models):
            return None
        inputs = {f"model:{spec.id}": identity[spec.id][1] for spec in cfg.models}
        inputs["questions"] = questions_fingerprint(questions)
        details = {"questions": len(questions), "models": len(cfg.models)}
        if refs is not None:
            inputs["references"] = refs.fingerprint
            details["references"] = len(refs.ids)
        return make_manifest("generate", resolved, inputs, outputs=outputs, details=details)

    expected, old = manifest(), read_manifest(out, "generate")
    nll = ReferenceNLL(cfg.reference_nll, refs, out, old) if refs is not None else None
    if (expected is not None and old is not None and old.fingerprint == expected.fingerprint
            and all((out / f).is_file() for f in outputs.values())
            and (nll is None or nll.all_current(cfg.models, identity))):
        log.info("generate: up to date (%d questions, %d model(s) in %s)", len(questions), len(cfg.models), out)
        return out
    for spec in specs:
        get_backend_class(spec.backend).check(spec, identity[spec.id][0])

    remove_manifest(out)  # from here on the folder is incomplete until the manifest is rewritten
    out.mkdir(parents=True, exist_ok=True)
    if nll is None:  # turned off: a file left by an earlier run must not be read as current
        (out / NLL_FILE).unlink(missing_ok=True)
    save_config(resolved, out)
    log.info("generate: %d questions from %s, %d model(s) -> %s", len(questions), cfg.questions, len(specs), out)
    health_path = out / "health.json"
    health = read_json(health_path) if health_path.is_file() else {}
    health = {k: v for k, v in health.items() if k in outputs} if isinstance(health, dict) else {}
    for spec in specs:
        path, fp = identity[spec.id]
        hook = nll.on_loaded(spec) if nll is not None else None
        health[spec.id], fp = generate_for_model(spec, path, fp, cfg, questions, out, seed, recipe, on_loaded=hook)
        identity[spec.id] = (path, fp)
        write_json(health_path, health)
        if nll is not None:
            identity[spec.id] = (path, nll.update(spec, path, fp, recipe))
            nll.write(cfg.models, identity)
        h = health[spec.id]
        log.info("%s: %d turns; empty %d, truncated %d, loops %d, low Japanese %d, mean ja_ratio %s; "
                 "language mixed %d, not Japanese %d", spec.id, h["turns"], h["empty"], h["truncated"], h["loop"],
                 h["low_ja"], h["mean_ja_ratio"], h["language"]["mixed"], h["language"]["not-japanese"])

    # Complete = every model of the section (not only a --model subset) has exactly one current
    # answer per question; checked on the files, so a snapshot that changed while loading counts.
    final = manifest()
    missing = [s.id for s in cfg.models
               if s.id not in identity or not _is_complete(out, s, identity[s.id][1], cfg, questions, seed)
               or (nll is not None and not nll.is_current(s, identity[s.id][1]))]
    if final is not None and not missing:
        write_manifest(out, final)
    else:
        log.info("generate: answers of %s are not complete or not current yet (no manifest written)",
                 ", ".join(missing))
    return out
