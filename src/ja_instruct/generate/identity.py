"""What an answer is a function of: the model, the generation settings, the question.

Every answer record carries ``"fingerprint": {"model": ..., "params": ..., "question": ...}``:

* ``model``: the model's own identity. ``path: trained`` -> the train stage's manifest
  fingerprint (`ja_instruct.train.find_trained_model`); a local folder, ``embedded:NAME``
  or a hub id whose snapshot is in the local HF cache -> `ja_instruct.manifest.
  model_dir_fingerprint` of that folder (weights, config, tokenizer and chat template);
  an uncached hub id -> a hash of the id; ``openai`` -> hash of (model name, base_url);
  ``fake`` -> hash of ("fake", id).
* ``params``: hash of the settings actually used for that question (`generation_settings`:
  sampling params with the category's temperature, seed, stop strings, system prompt,
  prompt template, dtype...). They are also kept in the record's ``generation``, so a later
  run can say which setting changed (`ja_instruct.manifest.describe_changes`).
* ``question``: hash of the question's turns and category.

An answer is reused only when all three are what this run would use (`stale_reasons`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ja_instruct.generate.backends import SamplingParams, openai_extras
from ja_instruct.generate.config import TRAINED, ModelSpec
from ja_instruct.generate.questions import Question
from ja_instruct.io import stable_hash
from ja_instruct.manifest import describe_changes, model_dir_fingerprint

# Keys of a record's ``generation`` that describe the answer but are not settings.
NOT_SETTINGS = ("model", "category")


def _hub_fingerprint(repo_id: str) -> str:
    """The cached snapshot's fingerprint of a hub model (offline lookup), else a hash of the id."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id for the cache layout: identify it by name
        cached = None
    if isinstance(cached, str):
        return model_dir_fingerprint(Path(cached).parent)
    return stable_hash({"hub": repo_id})


def model_identity(spec: ModelSpec, recipe) -> tuple[str | None, str]:
    """``(what the backend loads, the model's fingerprint)`` for one model spec.

    Cheap: no model or tokenizer is loaded (an ``embedded:`` model is converted once, as
    `ja_instruct.models.resolve_model` always does).

    Raises:
        UserError: ``path: trained`` without a complete, current train output; a missing local path.
    """
    if spec.backend == "openai":
        name = spec.path or spec.id
        return name, stable_hash({"openai": name, "base_url": spec.base_url})
    if spec.path == TRAINED:
        # Looked up at call time (not imported at module load) so a test can stand in for it.
        import ja_instruct.train as train

        final, fingerprint = train.find_trained_model(recipe)
        return str(final), fingerprint
    if spec.backend == "fake":
        return spec.path, stable_hash({"fake": spec.id})
    from ja_instruct.models import resolve_model

    resolved = resolve_model(spec.path or spec.id)
    if Path(resolved).is_dir():
        return resolved, model_dir_fingerprint(resolved)
    return resolved, _hub_fingerprint(resolved)


def is_hub_model(spec: ModelSpec, model_path: str | None) -> bool:
    """Whether the model is a hub id, whose identity may change when loading downloads it."""
    return spec.backend in ("hf", "vllm") and spec.path != TRAINED and model_path is not None \
        and not Path(model_path).is_dir()


# vLLM engine arguments that change speed or memory only, never an answer.
VLLM_SPEED_ONLY = frozenset({"gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "swap_space",
                             "enforce_eager", "tensor_parallel_size", "pipeline_parallel_size", "block_size",
                             "enable_prefix_caching", "disable_log_stats", "cpu_offload_gb"})


def generation_settings(spec: ModelSpec, params: SamplingParams) -> dict[str, Any]:
    """Every setting that changes an answer of ``spec`` sampled with ``params``.

    Only what the backend uses: an OpenAI-compatible endpoint gets no prompt template, and
    top_k / repetition_penalty only when they are sent (``send_extra``; a setting the recipe has
    but the endpoint could not be sent is recorded as ``not_sent``); greedy local decoding (temperature 0)
    ignores the seed, top_p and top_k; performance knobs (batch size, concurrency, device) are
    not settings.
    """
    s: dict[str, Any] = {"backend": spec.backend, **params.as_dict(), "system_prompt": spec.system_prompt}
    if spec.backend in ("hf", "vllm"):
        s.update(template=spec.template, dtype=spec.dtype)
        engine = {k: v for k, v in spec.vllm_args.items() if k not in VLLM_SPEED_ONLY} if spec.backend == "vllm" else {}
        if engine:  # quantization, kv_cache_dtype, max_model_len... change answers
            s["vllm_args"] = engine
        if params.temperature == 0:
            # Greedy decoding: the seed and the nucleus/top-k cut cannot change the answer, so a new
            # recipe seed (to retrain) must not regenerate every greedy answer of every local model.
            for key in ("seed", "top_p", "top_k"):
                del s[key]
    elif spec.backend == "openai":
        extras = openai_extras(spec, params)
        for key in ("top_k", "repetition_penalty"):  # neither sent nor missed: cannot change the answer
            if key not in extras.sent and key not in extras.not_sent:
                del s[key]
        if extras.sent:
            s["server"] = spec.server  # the names they went under
        if extras.not_sent:
            s["not_sent"] = list(extras.not_sent)
    return s


def question_fingerprint(q: Question) -> str:
    """Hash of what is asked: the turns and the category (ids are the join key, not content)."""
    return stable_hash({"turns": q.turns, "category": q.category})


def questions_fingerprint(questions: list[Question]) -> str:
    """Hash of a whole question set, in order (the stage manifest's ``questions`` input)."""
    return stable_hash([[q.key, question_fingerprint(q)] for q in questions])


def answer_fingerprint(model_fp: str, settings: dict, q: Question) -> dict[str, str]:
    """The ``fingerprint`` stored in an answer record."""
    return {"model": model_fp, "params": stable_hash(settings), "question": question_fingerprint(q)}


def stale_reasons(record: dict, fingerprint: dict[str, str], settings: dict) -> list[str]:
    """Why ``record`` is not the answer this run would produce ([] when it is).

    E.g. ``["model changed"]`` or ``["generation settings changed (max_new_tokens 200 -> 5)"]``.
    """
    old = record.get("fingerprint")
    if not isinstance(old, dict):
        return ["no fingerprint (written by an older version)"]
    reasons = []
    if old.get("model") != fingerprint["model"]:
        reasons.append("model changed")
    if old.get("params") != fingerprint["params"]:
        previous = {k: v for k, v in (record.get("generation") or {}).items() if k not in NOT_SETTINGS}
        reasons.append(f"generation settings changed ({describe_changes(previous, settings)})")
    if old.get("question") != fingerprint["question"]:
        reasons.append("question changed")
    return reasons
