"""Config of the judge stage (the ``judge:`` section of a recipe).

Imported for ``--help``: stdlib + pydantic + ``ja_instruct.config`` / ``ja_instruct.secrets`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from ja_instruct.config import StrictModel
from ja_instruct.secrets import env_var_name

BACKEND_NAMES = ("openai", "hf", "fake")
# Said when a recipe names no judge (pydantic's "required key is missing" would not list the choices).
_NO_BACKEND = (f"judge.backend.backend is required: name the judge explicitly, one of {', '.join(BACKEND_NAMES)} "
               "(`fake` only for tests and dry runs), e.g. `judge: {backend: {backend: openai, model: gpt-4o}}`")


# Backend settings that change how judging runs, never a judgment: left out of config hashes.
EXECUTION_FIELDS = frozenset({"concurrency", "requests_per_minute", "max_retries", "backoff_base", "timeout",
                              "device"})


class JudgeBackendConfig(StrictModel):
    """Which judge model answers, and how it is called."""

    backend: Literal["openai", "hf", "fake"]
    """Required, no default (a dry run must never pass for a real evaluation): `openai`: any
    OpenAI-compatible chat endpoint (GPT-4-class APIs, vLLM, llama.cpp server, `transformers serve`);
    `hf`: a local transformers model scored by logprobs (never unparseable); `fake`: a deterministic
    stand-in for tests and dry runs (no model, no network; its scores mean nothing)."""
    model: str = "fake-judge"
    """Judge model id: the API model name (openai), a local dir / hub id / `embedded:NAME` (hf),
    any label (fake). Part of the cache key."""
    base_url: str | None = None
    """Endpoint of the OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`; null = the
    SDK's default (api.openai.com, or $OPENAI_BASE_URL). The endpoint called is part of the cache key."""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the API key (the key itself never goes in a recipe:
    a value that looks like a key is refused, without being shown). Local servers that need no key
    work with the variable unset."""
    temperature: float = 0.0
    """Sampling temperature of the judge; must be > 0 when `repeats` > 1."""
    max_tokens: int = 1024
    """Maximum tokens of one judgment."""
    timeout: float = 120.0
    """Seconds before one request counts as timed out (and is retried)."""
    concurrency: int = Field(16, ge=1)
    """Requests in flight at once (openai). FastChat's `--parallel 1` is concurrency 1."""
    requests_per_minute: float | None = None
    """Upper bound on request starts per minute (null = no limit)."""
    max_retries: int = Field(6, ge=0)
    """Retries of a failed request (429, 5xx, time-out, connection error), with exponential
    back-off and jitter; a Retry-After header is honoured."""
    backoff_base: float = 1.0
    """First back-off delay in seconds (doubles each retry, +-50% jitter, capped at 60 s)."""
    parse_retries: int = Field(2, ge=0)
    """Extra calls when a judgment's score/verdict cannot be parsed; after that it is stored with
    `status: parse_error` (counted and shown, never averaged)."""
    price_prompt_per_1k: float | None = None
    """Price per 1000 prompt tokens (any currency) for the cost estimate; null = no cost shown."""
    price_completion_per_1k: float | None = None
    """Price per 1000 completion tokens for the cost estimate."""
    device: str = "auto"
    """hf backend: `auto` (cuda if available), `cpu` or `cuda`."""

    @model_validator(mode="before")
    @classmethod
    def _backend_named(cls, data):
        if isinstance(data, dict) and "backend" not in data:
            raise ValueError(_NO_BACKEND)
        return data

    @field_validator("api_key_env")
    @classmethod
    def _key_env_is_a_name(cls, value: str) -> str:
        return env_var_name(value)



class JudgeConfig(StrictModel):
    """The 'judge' section of a recipe: LLM-as-a-judge grading of generated answers."""

    mode: Literal["single", "pairwise", "pairwise-baseline"] = "single"
    """`single`: a score per answer and turn on the prompt's scale (1-10; 1-5 for ELYZA-tasks-100 items,
    which carry `eval_aspect`), every sample of it; `pairwise`: every pair of models, both orders;
    `pairwise-baseline`: every model against `baseline`, both orders."""
    baseline: str | None = None
    """Model id of the baseline in `pairwise-baseline` mode (e.g. `gpt-3.5-turbo`)."""
    answers_dir: Path | None = None
    """Folder of FastChat answer files `<model_id>.jsonl`; default `<recipe root>/answers`."""
    models: list[str] | None = None
    """Model ids to judge (answer file stems); null = the recipe's `generate.models` when the answers are
    this recipe's own (`answers_dir` null), else every answer file in `answers_dir`."""
    questions: str | None = None
    """Question set: a FastChat question JSONL path, a hub id (`yuzuai/rakuda-questions`) or
    `embedded:NAME`; null = the recipe's `generate.questions`. Questions may carry `reference`."""
    reference_answers: Path | None = None
    """FastChat reference-answer JSONL (e.g. MT-Bench's `reference_answer/gpt-4.jsonl`);
    its turns become the references of the matching question ids."""
    reference_categories: list[str] | None = ["math", "reasoning", "coding"]
    """Categories judged reference-guided when a reference exists (MT-Bench's choice);
    null = every question that has a reference."""
    backend: JudgeBackendConfig
    """The judge model and how it is called (required: `backend.backend` names it)."""
    prompt: str | None = None
    """Our own prompt family (files in `ja_instruct/judge/prompts/`): `single-ja`, `pair-ja` or
    `single-ja-elyza` (1-5, shows the reference and the item's `eval_aspect`); the `-ref` / `-multi`
    variants are picked per question. null = by mode, and `single-ja-elyza` for questions that carry
    an `eval_aspect`."""
    judge_prompts: Path | None = None
    """A FastChat-format `judge_prompts.jsonl` to use instead of our prompts (`--judge-prompts`)."""
    judge_prompt_names: dict[str, str] = {}
    """With `judge_prompts`: which prompt name plays which role. Roles: `single`, `single-ref`,
    `single-multi`, `single-ref-multi`, `pair`, `pair-ref`, `pair-multi`, `pair-ref-multi`.
    Missing roles default to FastChat's names (single-v1, single-math-v1, ..., pair-v2, ...);
    a file with one prompt of the right type uses it for its role."""
    turns: list[int] | None = None
    """Turns to judge (1-based); null = every turn the question and answer have."""
    repeats: int = Field(1, ge=1)
    """Judge each item N times (needs temperature > 0); the spread across repeats is reported."""
    retry_parse_errors: bool = False
    """On a re-run, judge again the items whose cached judgment is a parse error."""
    retry_errors: bool = False
    """On a re-run, call the judge again for the items it refused (`status: error`, e.g. HTTP 400
    context length / content filter, 413, 422); otherwise they stay refused (`--retry-errors`)."""
    max_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """Share of refused items (`status: error`) tolerated before the stage fails. Outputs are
    written either way; above it the exit code is non-zero and the stage is not marked complete.
    Default 0: a refused answer is missing from its model's mean, which can bias a comparison."""
    seed: int = 0
    """Seed of the judging order, the fake judge and the bootstrap."""
    bootstrap: int = Field(200, ge=0)
    """Bootstrap resamples for every interval of summary.json (mean score / win rate and Bradley-Terry
    ratings). Resamples QUESTIONS, keeping both orders, every turn and every repeat of a question
    together; the report of this folder uses the same size and seed. 0 = no intervals."""
    cache: Path | None = None
    """The append-only judgment store (JSONL); default `<judge dir>/cache.jsonl`. Share one file
    between runs to reuse judgments, even between runs going on at the same time (file locks:
    each request is sent once)."""
    limit: int | None = None
    """Judge only the first N questions (smoke tests); null with no `questions` of its own = the recipe's
    `generate.limit`, so exactly the questions that were answered are judged."""
    panel: list[JudgeBackendConfig] = []
    """More judges for a panel (PoLL): each grades the same items as `backend`, cached apart (the
    cache key holds the judge). The summary and the report give each judge's scores, the panel mean
    and the agreement between judges (Spearman, Kendall, quadratic-weighted kappa). [] = one judge."""
    language_guard: Literal["off", "flag", "floor"] | None = None
    """Japanese-language guard, decided without the judge: each judged turn gets `language:
    ok|mixed|not-japanese` from its share of Japanese characters (code blocks and formulas left
    out). `flag` only shows it; `floor` also caps a not-Japanese answer at the scale's lowest grade
    (the score before the cap is kept as `score_unguarded`); `off` neither. null = `floor` for
    judgments made here, `flag` for imported ones. The report shows scores with and without it."""
    think_pattern: str | None = r"<think>.*?</think>"
    """Regular expression (DOTALL) of a reasoning model's hidden reasoning, removed from an answer
    before it is judged (the judgment records that it was); an opening tag never closed counts as
    unclosed reasoning and the answer is judged as it is. null = judge answers as written."""

    @model_serializer(mode="wrap")
    def _omit_empty_panel(self, handler):
        # No panel is what every judge run meant before panels existed: left out of the dump, the
        # hashed config of those runs stays what it was. (The guard and the think pattern change
        # scores, so they are hashed even at their defaults: older runs are redone, from the cache.)
        data = handler(self)
        if isinstance(data, dict) and not self.panel:
            data.pop("panel", None)
        return data

    @model_validator(mode="before")
    @classmethod
    def _backend_given(cls, data):
        if isinstance(data, dict) and data.get("backend") is None:
            raise ValueError(_NO_BACKEND)
        return data

    @model_validator(mode="after")
    def _check(self) -> "JudgeConfig":
        if self.mode == "pairwise-baseline" and not self.baseline:
            raise ValueError("mode 'pairwise-baseline' needs 'baseline' (a model id)")
        if self.repeats > 1 and self.backend.temperature <= 0:
            raise ValueError("repeats > 1 needs backend.temperature > 0 (identical calls would repeat)")
        # checked when the recipe loads, not after hours of generation
        if self.panel and self.mode != "single":
            raise ValueError("judge.panel is not supported yet in pairwise modes: use mode single, or one judge")
        ids = [self.backend.model] + [j.model for j in self.panel]
        if len(set(ids)) < len(ids):
            raise ValueError(f"judge.panel: every judge needs its own model id (got {', '.join(ids)}); the id "
                             "tells the judges apart in judgments and summaries")
        return self

    @field_validator("think_pattern")
    @classmethod
    def _think_pattern_compiles(cls, value: str | None) -> str | None:
        import re

        if value is None:
            return value
        try:
            rx = re.compile(value, re.DOTALL)
        except re.error as e:
            raise ValueError(f"judge.think_pattern is not a regular expression ({e}); e.g. <think>.*?</think>, "
                             "or null to judge answers as written") from None
        if rx.fullmatch("") or rx.fullmatch("答えです。"):
            raise ValueError("judge.think_pattern matches an empty or an ordinary answer: it would remove the "
                             "answers themselves; e.g. <think>.*?</think>")
        return value
