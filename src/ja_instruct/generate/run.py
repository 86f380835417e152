"""The generate stage: answers for every (question, model), resumable, as FastChat answer JSONL.

    run_generation(recipe, out_dir=None, models=None) -> Path   # used by the CLI and the pipeline

Output (default ``<root>/answers``)::

    <out>/<model_id>.jsonl   one FastChat answer per line, plus our "generation" and "health" keys
    <out>/health.json        per model: empty / truncated / loop / low-Japanese counts
    <out>/config.yaml        the resolved generate section

Resume: an answer is appended (and fsynced) as soon as all its turns are done, so a killed
run loses at most the chunk in flight; on restart, questions whose id is already in
``<model_id>.jsonl`` are skipped (a torn last line is dropped).

Multi-turn (Japanese MT-Bench): turn k is asked with the model's own answers to turns
1..k-1 in the conversation, exactly as FastChat's ``gen_model_answer`` does.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ja_instruct.config import save_config
from ja_instruct.errors import UserError
from ja_instruct.generate.backends import Backend, SamplingParams, get_backend_class
from ja_instruct.generate.config import TRAINED, GenerateConfig, ModelSpec
from ja_instruct.generate.health import summarize, turn_health
from ja_instruct.generate.questions import Question, load_questions
from ja_instruct.io import JsonlAppender, read_jsonl_store, write_json

log = logging.getLogger(__name__)

ANSWERS_SUBDIR = "answers"


def answers_dir(recipe, out_dir: str | Path | None = None) -> Path:
    """Where the answers go: ``out_dir`` if given, else ``<root>/answers`` (read by judge and report)."""
    return Path(out_dir) if out_dir is not None else recipe.root / ANSWERS_SUBDIR


def resolve_model_path(spec: ModelSpec, recipe) -> str | None:
    """``path: trained`` -> this recipe's ``<root>/train/final`` (which must exist); else ``path``."""
    if spec.path == TRAINED:
        final = recipe.root / "train" / "final"
        if not (final / "config.json").is_file():
            raise UserError(f"model '{spec.id}' uses path 'trained', but {final} holds no trained model",
                            field="generate.models", hint="Run `ja-instruct train RECIPE` first (or give a path).")
        return str(final)
    return spec.path


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


def answer_questions(backend: Backend, spec: ModelSpec, questions: list[Question],
                     params_of: Callable[[Question], SamplingParams]) -> Iterator[tuple[Question, list, SamplingParams]]:
    """Answer ``questions`` chunk by chunk; yield ``(question, generations per turn, params)`` as each
    chunk finishes. Questions are grouped by sampling params (one call = one params set) and sorted
    longest first, so a batch holds similar lengths and an out-of-memory error shows up at once."""
    groups: dict[SamplingParams, list[Question]] = {}
    for q in sorted(questions, key=lambda q: -len(q.turns[0])):
        groups.setdefault(params_of(q), []).append(q)
    for params, qs in groups.items():
        for start in range(0, len(qs), max(1, backend.chunk_size)):
            chunk = qs[start:start + backend.chunk_size]
            gens: dict[str, list] = {q.key: [] for q in chunk}
            for turn in range(max(len(q.turns) for q in chunk)):
                todo = [q for q in chunk if turn < len(q.turns)]
                convs = [build_conversation(spec, q, [g.text for g in gens[q.key]], turn) for q in todo]
                for q, g in zip(todo, backend.generate(convs, params)):
                    gens[q.key].append(g)
            for q in chunk:
                yield q, gens[q.key], params


def answer_record(q: Question, spec: ModelSpec, model_path: str | None, gens: list, params: SamplingParams) -> dict:
    """A FastChat answer record with our ``generation`` and ``health`` keys."""
    return {
        "question_id": q.question_id,
        "answer_id": uuid.uuid4().hex,
        "model_id": spec.id,
        "choices": [{"index": 0, "turns": [g.text for g in gens]}],
        "tstamp": time.time(),
        "generation": {"backend": spec.backend, "model": model_path or spec.id, "template": spec.template,
                       "category": q.category, **params.as_dict()},
        "health": [turn_health(g.text, truncated=g.truncated, n_tokens=g.n_tokens) for g in gens],
    }


def _done_ids(path: Path, model_id: str) -> tuple[list[dict], set[str]]:
    records = read_jsonl_store(path)
    for i, r in enumerate(records, 1):
        if r.get("model_id") != model_id:
            raise UserError(f"answer file holds model '{r.get('model_id')}', not '{model_id}' (record {i})",
                            file=path, hint="Use another --out folder, or delete the file.")
    return records, {str(r.get("question_id")) for r in records}


def generate_for_model(spec: ModelSpec, model_path: str | None, cfg: GenerateConfig, questions: list[Question],
                       out: Path, seed: int) -> dict:
    """Answer the questions still missing from ``<out>/<id>.jsonl``; returns the model's health summary."""
    from tqdm import tqdm

    path = out / f"{spec.id}.jsonl"
    records, done = _done_ids(path, spec.id)
    pending = [q for q in questions if q.key not in done]
    if done:
        log.info("%s: %d answers already in %s; %d to go", spec.id, len(questions) - len(pending), path,
                 len(pending))
    if pending:
        backend = get_backend_class(spec.backend)(spec, model_path)
        try:
            with JsonlAppender(path) as store, tqdm(total=len(questions), initial=len(questions) - len(pending),
                                                    desc=f"generate {spec.id}", unit="q", file=sys.stderr) as bar:
                params_of = lambda q: sampling_params(cfg, spec, q.category, seed)  # noqa: E731
                for q, gens, params in answer_questions(backend, spec, pending, params_of):
                    rec = answer_record(q, spec, model_path, gens, params)
                    store.append(rec)
                    records.append(rec)
                    bar.update(1)
        finally:
            backend.close()
    return summarize(records)


def run_generation(recipe, out_dir: str | Path | None = None, models: list[str] | None = None) -> Path:
    """Generate answers for the recipe's question set with each of its models (resumable).

    Args:
        recipe: a `ja_instruct.recipe.Recipe` with a ``generate`` section.
        out_dir: output folder; default ``<root>/answers``.
        models: only these model ids (default: every model in the section).

    Returns:
        The answers folder (``<out>/<model_id>.jsonl`` per model).

    Raises:
        UserError: unknown model id, missing question file, missing trained model, missing API key...
            all checked before any model is loaded.
    """
    cfg: GenerateConfig = recipe.require("generate")
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    specs = cfg.models
    if models:
        known = {m.id for m in cfg.models}
        unknown = [m for m in models if m not in known]
        if unknown:
            raise UserError(f"unknown model id(s) {', '.join(unknown)}", field="--model",
                            hint=f"Models in the recipe: {', '.join(sorted(known))}.")
        specs = [m for m in cfg.models if m.id in models]
    # Cheap checks first: a typo must not cost a model load.
    questions = load_questions(cfg.questions, split=cfg.split, references=cfg.reference_answers, limit=cfg.limit)
    paths = {}
    for spec in specs:
        paths[spec.id] = resolve_model_path(spec, recipe)
        get_backend_class(spec.backend).check(spec, paths[spec.id])

    out = answers_dir(recipe, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg.model_copy(update={"seed": seed}), out)
    log.info("generate: %d questions from %s, %d model(s) -> %s", len(questions), cfg.questions, len(specs), out)
    health_path = out / "health.json"
    health = {}
    if health_path.is_file():
        from ja_instruct.io import read_json

        health = read_json(health_path)
    for spec in specs:
        health[spec.id] = generate_for_model(spec, paths[spec.id], cfg, questions, out, seed)
        write_json(health_path, health)
        h = health[spec.id]
        log.info("%s: %d turns; empty %d, truncated %d, loops %d, low Japanese %d, mean ja_ratio %s", spec.id,
                 h["turns"], h["empty"], h["truncated"], h["loop"], h["low_ja"], h["mean_ja_ratio"])
    return out
