"""Config of the judge stage (the ``judge:`` section of a recipe).

Imported for ``--help``: stdlib + pydantic + ``ja_instruct.config`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ja_instruct.config import StrictModel


class JudgeBackendConfig(StrictModel):
    """Which judge model answers, and how it is called."""

    backend: Literal["openai", "hf", "fake"] = "fake"
    """`openai`: any OpenAI-compatible chat endpoint (GPT-4-class APIs, vLLM, llama.cpp server,
    `transformers serve`); `hf`: a local transformers model scored by logprobs (never unparseable);
    `fake`: deterministic judge for tests and dry runs (no model, no network)."""
    model: str = "fake-judge"
    """Judge model id: the API model name (openai), a local dir / hub id / `embedded:NAME` (hf),
    any label (fake). Part of the cache key."""
    base_url: str | None = None
    """Endpoint of the OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`; null = the
    SDK's default (api.openai.com, or $OPENAI_BASE_URL)."""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the API key (the key itself never goes in a recipe).
    Local servers that need no key work with the variable unset."""
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
    fake_parse_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    """fake backend: share of calls that return text without a score (to exercise parse-error handling)."""


class JudgeConfig(StrictModel):
    """The 'judge' section of a recipe: LLM-as-a-judge grading of generated answers."""

    mode: Literal["single", "pairwise", "pairwise-baseline"] = "single"
    """`single`: a 1-10 score per answer and turn; `pairwise`: every pair of models, both orders;
    `pairwise-baseline`: every model against `baseline`, both orders."""
    baseline: str | None = None
    """Model id of the baseline in `pairwise-baseline` mode (e.g. `gpt-3.5-turbo`)."""
    answers_dir: Path | None = None
    """Folder of FastChat answer files `<model_id>.jsonl`; default `<recipe root>/answers`."""
    models: list[str] | None = None
    """Model ids to judge (answer file stems); null = every answer file in `answers_dir`."""
    questions: str | None = None
    """Question set: a FastChat question JSONL path, a hub id (`yuzuai/rakuda-questions`) or
    `embedded:NAME`; null = the recipe's `generate.questions`. Questions may carry `reference`."""
    reference_answers: Path | None = None
    """FastChat reference-answer JSONL (e.g. MT-Bench's `reference_answer/gpt-4.jsonl`);
    its turns become the references of the matching question ids."""
    reference_categories: list[str] | None = ["math", "reasoning", "coding"]
    """Categories judged reference-guided when a reference exists (MT-Bench's choice);
    null = every question that has a reference."""
    backend: JudgeBackendConfig = JudgeBackendConfig()
    """The judge model and how it is called."""
    prompt: str | None = None
    """Our own prompt family (files in `ja_instruct/judge/prompts/`): `single-ja` or `pair-ja`;
    the `-ref` / `-multi` variants are picked per question. null = by mode."""
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
    seed: int = 0
    """Seed of the judging order, the fake judge and the bootstrap."""
    bootstrap: int = Field(200, ge=0)
    """Bootstrap resamples for the Bradley-Terry confidence intervals (0 = none)."""
    cache: Path | None = None
    """The append-only judgment store (JSONL); default `<judge dir>/cache.jsonl`. Share one file
    between runs to reuse judgments."""
    limit: int | None = None
    """Judge only the first N questions (smoke tests)."""

    @model_validator(mode="after")
    def _check(self) -> "JudgeConfig":
        if self.mode == "pairwise-baseline" and not self.baseline:
            raise ValueError("mode 'pairwise-baseline' needs 'baseline' (a model id)")
        if self.repeats > 1 and self.backend.temperature <= 0:
            raise ValueError("repeats > 1 needs backend.temperature > 0 (identical calls would repeat)")
        return self
