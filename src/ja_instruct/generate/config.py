"""Config of the generate stage: which questions, which models, how to sample.

Imported for ``--help``: stdlib + pydantic + ja_instruct.config only.

```yaml
generate:
  questions: ../shared/data/ja_mt_bench/question.jsonl   # or yuzuai/rakuda-questions, embedded:questions_ja.jsonl
  mt_bench_temperatures: true
  max_new_tokens: 512
  reference_nll: {references: heldout}    # judge-free signal: NLL of held-out answers per model
  models:
    - {id: plamo-13b-instruct, backend: hf, path: trained, template: plamo, dtype: bfloat16, batch_size: 8}
    - {id: gpt-4o-mini, backend: openai, path: gpt-4o-mini, api_key_env: OPENAI_API_KEY}
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from ja_instruct.config import StrictModel
from ja_instruct.secrets import env_var_name

# The backend names; `ja_instruct.generate.backends.BACKENDS` holds their implementations
# (a test keeps the two in sync). A Literal makes a typo a recipe error with file and line.
BackendName = Literal["hf", "openai", "vllm", "fake"]

# FastChat llm_judge's per-category temperatures for MT-Bench (fastchat/llm_judge/common.py).
MT_BENCH_TEMPERATURES: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}

# The literal model path meaning "the output of this recipe's train stage".
TRAINED = "trained"


class ModelSpec(StrictModel):
    """One model to generate answers with."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    """Model id: written as `model_id` in the answers and used as the file name `<out>/<id>.jsonl`
    (letters, digits, `.`, `_`, `+`, `-`)."""
    backend: BackendName = "hf"
    """How to run it: `hf` (local transformers), `openai` (any OpenAI-compatible endpoint),
    `vllm` (local vLLM, when installed), `fake` (canned answers for tests)."""
    path: str | None = None
    """hf/vllm: local model dir, HF hub id, `embedded:NAME`, or the literal `trained` (the final model of
    this recipe's train stage, wherever `ja-instruct train` wrote it; it must be complete and made with
    the recipe's current train section and data). openai: the model name sent to the endpoint.
    Default: the `id`."""
    template: str = "tokenizer"
    """Prompt template for hf/vllm: `plamo`, `llmjp-alpaca`, or `tokenizer` (the tokenizer's own chat
    template). Ignored by openai (the server applies its template)."""
    system_prompt: str | None = None
    """A system message put before every conversation (null: none, or the template's own preamble)."""
    trust_remote_code: bool = False
    """Allow the model repo's own Python code (PLaMo-13B needs it)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype for hf/vllm (`auto`: the checkpoint's own)."""
    device: str | None = None
    """hf: torch device (`cpu`, `cuda`, `cuda:1`); default cuda when available, else cpu."""
    batch_size: int = Field(default=8, ge=1)
    """hf/vllm: prompts per forward batch (sorted by length, left padded)."""
    vllm_args: dict[str, Any] = {}
    """vllm: further keyword arguments of `vllm.LLM`, e.g. `{max_model_len: 4096, gpu_memory_utilization: 0.8,
    tensor_parallel_size: 2}`, or `{enforce_eager: true}` to skip the minutes of torch.compile on a CPU."""
    stop: list[str] = []
    """Strings that end an answer (the text is cut at the first one), e.g. `"\\n\\n### 指示:"`."""
    base_url: str | None = None
    """openai: endpoint base URL, e.g. `http://127.0.0.1:8000/v1` (null: api.openai.com)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """openai: the NAME of the environment variable holding the API key (never the key itself: a value
    that looks like a key is refused, without being shown). May be unset for a local endpoint (base_url
    on localhost), which then gets a dummy key."""
    concurrency: int = Field(default=8, ge=1)
    """openai: requests in flight at once."""
    max_retries: int = Field(default=5, ge=0)
    """openai: retries per request on 429, 5xx, connection errors and time-outs (exponential back-off)."""
    timeout: float = Field(default=300.0, gt=0)
    """openai: seconds before one request times out."""
    send_extra: bool | None = None
    """openai: send the sampling settings that OpenAI's API lacks (`top_k`, `repetition_penalty`) in the request
    body, under the names `server` reads. null: send them unless `base_url` is OpenAI's own API (unset,
    api.openai.com or *.openai.azure.com), which refuses unknown parameters. A setting that changes the answer
    but is not sent (a repetition penalty other than 1.0; top_k when sampling) is listed in each answer's
    `generation.not_sent` and logged once per model."""
    server: Literal["vllm", "llama.cpp", "transformers"] = "vllm"
    """openai with extras sent: what serves `base_url`, which decides their names. `vllm` (`ja-instruct serve`
    with vLLM; also SGLang and most hosted OpenAI-compatible APIs): `top_k`, `repetition_penalty`.
    `llama.cpp` (`llama-server`): `top_k`, `repeat_penalty` over the whole context, `min_p: 0` (its defaults
    are top_k 40, min_p 0.05 and a 64-token window). `transformers` (`transformers serve`, which refuses unknown
    fields): a `generation_config` JSON."""
    send_top_k: bool = False
    """openai: deprecated, kept so older recipes load: `true` sends the extra settings like `send_extra: true`
    unless `send_extra` is set."""

    @field_validator("vllm_args")
    @classmethod
    def _vllm_args_not_ours(cls, value: dict[str, Any]) -> dict[str, Any]:
        # These have their own keys, which the answers' fingerprints record.
        taken = sorted(set(value) & {"model", "dtype", "trust_remote_code", "tokenizer"})
        if taken:
            raise ValueError(f"set {', '.join(taken)} with the model's own keys (path, dtype, trust_remote_code), "
                             "not in vllm_args")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _key_env_is_a_name(cls, value: str | None) -> str | None:
        # A key pasted here would be saved in config.yaml: refused without being echoed.
        return env_var_name(value)


# `ReferenceNLLConfig.references` value meaning "the held-out split of the data this recipe trains on".
HELDOUT = "heldout"


class ReferenceNLLConfig(StrictModel):
    """Judge-free quality signal: how likely each local model finds reference answers, by default
    those held out of its training data (mean negative log-likelihood per answer token, with the
    model's own template), written to `<out>/reference_nll.json`."""

    references: str = HELDOUT
    """The reference conversations: `heldout` (the held-out split, see `data.heldout`, of the dataset
    this recipe trains on: `train.dataset_dir` when set, else the data stage's output), or a data
    build folder (`ja-instruct data build --out DIR`: its held-out split, never its training split;
    a build without one is an error), or a local JSONL/JSON/parquet file or `save_to_disk` folder
    with a `messages` column (`[{role, content}, ...]`), or a FastChat question file whose
    `reference` (or `reference_answers`) gives one answer per turn (questions lacking one for a turn
    are skipped). Only a held-out split is reported as held-out."""
    reference_answers: str | None = None
    """FastChat answer JSONL giving the reference answers of a question file in `references`
    (e.g. `ja_mt_bench/reference_answer/gpt-4.jsonl`); questions' own `reference` wins."""
    limit: int | None = Field(default=None, ge=1)
    """Only the first N reference conversations (smoke tests)."""
    batch_size: int = Field(default=4, ge=1)
    """Conversations per forward pass when scoring (sorted by length, right padded); lower it on
    out-of-memory errors: it does not change the result."""

    @model_validator(mode="after")
    def _answers_need_questions(self) -> "ReferenceNLLConfig":
        if self.reference_answers is not None and self.references == HELDOUT:
            raise ValueError("reference_answers gives the answers of a question file; the held-out split "
                             "has its own (set references to the question file)")
        return self


class GenerateConfig(StrictModel):
    """The 'generate' section of a recipe: answers for a question set, one JSONL file per model."""

    questions: str = "embedded:questions_ja.jsonl"
    """Question set: a local FastChat question JSONL (`turns`; Rakuda v1 `text` also read), a local
    parquet/json/csv file or dataset folder, an HF hub dataset id (`yuzuai/rakuda-questions`), or
    `embedded:questions_ja.jsonl` (the project's own set). ELYZA-tasks-100 rows (`input`, `output` = the
    reference, `eval_aspect`; CSV/JSONL/parquet, or `elyza/ELYZA-tasks-100`) load with ids 1..N."""
    split: str = "train"
    """Split to read when `questions` is an HF hub id or a dataset folder."""
    reference_answers: str | None = None
    """Optional FastChat answer JSONL whose turns become the questions' reference answers
    (e.g. `ja_mt_bench/reference_answer/gpt-4.jsonl`); questions' own `reference` wins."""
    limit: int | None = Field(default=None, ge=1)
    """Only the first N questions (smoke tests)."""
    models: list[ModelSpec] = Field(min_length=1)
    """The models to answer with; each writes `<out>/<id>.jsonl`."""
    temperature: float = Field(default=1.0, ge=0)
    """Sampling temperature (PLaMo-13B-Instruct card: 1.0); 0 means greedy decoding."""
    top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus sampling (PLaMo card: 0.95)."""
    top_k: int = Field(default=50, ge=0)
    """Top-k sampling (PLaMo card: 50; 0 disables)."""
    max_new_tokens: int = Field(default=512, ge=1)
    """Most tokens per answer turn; an answer that hits it is flagged `truncated`."""
    repetition_penalty: float = Field(default=1.0, gt=0)
    """hf/vllm repetition penalty (1.0: none)."""
    category_temperature: dict[str, float] = {}
    """Per-category temperatures that override `temperature`, e.g. `{writing: 0.7, math: 0.0}`."""
    mt_bench_temperatures: bool = False
    """Use FastChat's MT-Bench per-category temperatures (writing/roleplay 0.7, stem/humanities 0.1,
    extraction/math/coding/reasoning 0.0); `category_temperature` entries still win."""
    seed: int | None = None
    """Sampling seed; default the recipe's `seed`."""
    samples: int = Field(default=1, ge=1, le=100)
    """Answers per question and model, stored as the FastChat record's `choices` (index 0..N-1;
    sample k is drawn with seed + k). JA MT-Bench leaderboard mode (Swallow's protocol) uses 5 with
    `mt_bench_temperatures: true`; the judge grades every sample and reports the mean over samples
    with their spread. Greedy hf/vllm questions (temperature 0) are answered once and copied N times;
    an openai endpoint is asked N times with seed + k. Raising N keeps the samples already made."""
    reference_nll: ReferenceNLLConfig | None = None
    """Also score each hf/vllm model on reference answers: the mean negative log-likelihood per
    answer token (on the held-out split, the model's held-out "eval loss"; lower is better), in
    `<out>/reference_nll.json`. null: not computed. openai/fake models are listed as unavailable
    (no weights)."""

    @field_validator("category_temperature")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, t in v.items() if t < 0]
        if bad:
            raise ValueError(f"temperatures must be >= 0 (categories {', '.join(bad)})")
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> "GenerateConfig":
        ids = [m.id for m in self.models]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"model ids must be unique (repeated: {', '.join(dup)})")
        return self

    @model_serializer(mode="wrap")
    def _omit_default_samples(self, handler):
        # One sample is what every answer file meant before `samples` existed: leaving it out of
        # the dump keeps the hashed config, and so the manifests of existing runs, unchanged.
        data = handler(self)
        if isinstance(data, dict) and self.samples == 1:
            data.pop("samples", None)
        return data

    def temperature_for(self, category: str | None) -> float:
        """The temperature for a question of ``category`` (per-category override, preset, default)."""
        if category in self.category_temperature:
            return self.category_temperature[category]
        if self.mt_bench_temperatures and category in MT_BENCH_TEMPERATURES:
            return MT_BENCH_TEMPERATURES[category]
        return self.temperature
