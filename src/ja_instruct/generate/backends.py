"""Generation backends behind one small contract.

A backend answers a batch of conversations with one set of sampling params::

    backend = BACKENDS[spec.backend](spec, model_path)   # model_path: resolved `spec.path`
    gens = backend.generate(conversations, params)       # list[Generation], same order
    backend.close()

* ``hf``: local transformers. Prompts rendered by the recipe's template
  (`ja_instruct.data.templates`) and tokenised exactly as training tokenised them
  (`prompt_ids`), sorted by token length, batched with left padding; an answer cut by
  ``max_new_tokens`` never ends in half a character (`ja_instruct.generate.detok`).
* ``openai``: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp,
  ``transformers serve``), ``openai.AsyncOpenAI`` with a semaphore as concurrency limit;
  the SDK retries 429/5xx/time-outs with exponential back-off, honouring Retry-After.
  Settings OpenAI's API lacks (top_k, repetition penalty) go in ``extra_body`` under the
  server's own names (`openai_extras`), or are reported as not sent.
* ``vllm``: local vLLM (imported only when used), fed the same prompt ids as ``hf``.
* ``fake``: deterministic canned Japanese answers, for tests and CI.

Each class also has ``check(spec, model_path)``: cheap validation run for every model
before any model is loaded, so a bad recipe fails in a second, not after an hour.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from ja_instruct.errors import UserError
from ja_instruct.generate.config import ModelSpec
from ja_instruct.generate.detok import SafeDecoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one answer turn (temperature 0 = greedy)."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Generation:
    """One generated turn: its text, generated tokens (None if unknown), whether it hit max tokens."""

    text: str
    n_tokens: int | None = None
    truncated: bool = False


class Backend(Protocol):
    """The contract every backend implements."""

    chunk_size: int  # conversations the run loop hands over per call (and then saves)

    def generate(self, conversations: list[list[dict]], params: SamplingParams) -> list[Generation]: ...

    def close(self) -> None: ...


def apply_stop(text: str, stop: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string; returns (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def prompt_ids(tokenizer: Any, template: Any, conversation: list[dict]) -> list[int]:
    """Token ids of the generation prompt for ``conversation`` (ending in a user turn): exactly the
    ids training gives that prompt (`ja_instruct.data.tokenize.encode_prompt`). Never
    ``add_special_tokens=True``: a tokenizer that appends EOS would end the prompt in ``</s>``."""
    from ja_instruct.data.tokenize import encode_prompt

    return encode_prompt(tokenizer, template.render(conversation, add_generation_prompt=True), template)


# --------------------------------------------------------------------------- hf

class HFBackend:
    """Local transformers generation, batched: sorted by prompt length, left padded."""

    @staticmethod
    def check(spec: ModelSpec, model_path: str | None) -> None:
        from ja_instruct.data.templates import TEMPLATES

        if spec.template not in TEMPLATES:
            raise UserError(f"unknown prompt template '{spec.template}'", field=f"generate.models[{spec.id}].template",
                            hint=f"Valid templates: {', '.join(TEMPLATES)}.")
        from ja_instruct.models import resolve_model

        resolve_model(model_path or spec.path or spec.id)  # a missing local path fails here, before any loading

    def __init__(self, spec: ModelSpec, model_path: str | None) -> None:
        import torch

        from ja_instruct.data.templates import get_template
        from ja_instruct.models import load_causal_lm, load_tokenizer

        self.spec = spec
        self.chunk_size = spec.batch_size
        path = model_path or spec.path or spec.id
        self.tokenizer = load_tokenizer(path, trust_remote_code=spec.trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only: pad on the left so new tokens follow the prompt
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype: Any = spec.dtype if spec.dtype == "auto" else getattr(torch, spec.dtype)
        self.device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Straight onto the GPU (device_map) instead of via CPU RAM: a 13B model is 26 GB in bf16.
        placement = {} if self.device == "cpu" else {"device_map": self.device}
        self.model = load_causal_lm(path, trust_remote_code=spec.trust_remote_code, dtype=dtype, **placement)
        self.model.to(self.device)
        self.model.eval()
        self.template = get_template(spec.template, self.tokenizer)
        self.detok = SafeDecoder(self.tokenizer)
        eos = self.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = eos

    def encode(self, conversation: list[dict]) -> list[int]:
        """Prompt ids for a conversation ending in a user turn (the training ids of that prompt)."""
        return prompt_ids(self.tokenizer, self.template, conversation)

    def _generation_config(self, params: SamplingParams):
        from transformers import GenerationConfig

        sample = params.temperature > 0
        kw: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, do_sample=sample,
                                  repetition_penalty=params.repetition_penalty,
                                  eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        if params.stop:  # stop each sequence as soon as it writes a stop string (text cut in _decode)
            kw["stop_strings"] = list(params.stop)
        return GenerationConfig(**kw)

    def generate(self, conversations: list[list[dict]], params: SamplingParams) -> list[Generation]:
        import torch

        ids = [self.encode(c) for c in conversations]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
        gen_cfg = self._generation_config(params)
        out: list[Generation | None] = [None] * len(ids)
        bs = self.spec.batch_size
        for b, start in enumerate(range(0, len(order), bs)):
            idx = order[start:start + bs]
            enc = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            torch.manual_seed(params.seed + b)
            with torch.inference_mode():
                seqs = self.model.generate(**enc, generation_config=gen_cfg,
                                           tokenizer=self.tokenizer if params.stop else None)
            new = seqs[:, enc["input_ids"].shape[1]:].tolist()
            for i, toks in zip(idx, new):
                out[i] = self._decode(toks, params)
        return out  # type: ignore[return-value]

    def _decode(self, toks: list[int], params: SamplingParams) -> Generation:
        n = next((k for k, t in enumerate(toks) if t in self.eos_ids), None)
        ended = n is not None
        if n is None:  # no EOS: every token is real unless the batch padded it (pad != eos)
            pad = self.tokenizer.pad_token_id
            n = len(toks)
            while n and toks[n - 1] == pad and pad not in self.eos_ids:
                n -= 1
        hit_limit = not ended and n >= params.max_new_tokens
        text = self.detok.decode(toks[:n], cut=hit_limit)
        text, stopped = apply_stop(text, params.stop)
        truncated = hit_limit and not stopped
        return Generation(text=text.strip(), n_tokens=n + int(ended), truncated=truncated)

    def close(self) -> None:
        # Free the weights now (the next model may need the memory), not at garbage collection.
        self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


# --------------------------------------------------------------------------- openai

def _is_local(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def _is_openai_api(url: str | None) -> bool:
    """Whether ``url`` is OpenAI's own API (None: the SDK's default), which answers 400 to unknown parameters."""
    host = (urlparse(url).hostname or "") if url else "api.openai.com"
    return host == "api.openai.com" or host.endswith(".openai.azure.com")


def sends_extra(spec: ModelSpec) -> bool:
    """Whether the openai backend sends the settings OpenAI's API lacks (see `ModelSpec.send_extra`)."""
    if spec.send_extra is not None:
        return spec.send_extra
    return spec.send_top_k or not _is_openai_api(spec.base_url)


@dataclass(frozen=True)
class OpenAIExtras:
    """The sampling settings beyond OpenAI's own parameters, for one request of the openai backend.

    Attributes:
        body: what goes in ``extra_body`` (the server's own names, see `ModelSpec.server`).
        sent: our names of the settings ``body`` carries (``top_k``, ``repetition_penalty``).
        not_sent: our names of the settings that would change the answer but are not sent.
    """

    body: dict
    sent: tuple[str, ...]
    not_sent: tuple[str, ...]


def openai_extras(spec: ModelSpec, params: SamplingParams) -> OpenAIExtras:
    """What an openai-backend request sends for ``params`` beyond temperature, top_p, max_tokens, seed and stop.

    The repetition penalty is always sent when extras are (1.0 included): servers have their own
    defaults (llama.cpp's was 1.1) and the recipe's value must win. top_k only matters when sampling.
    Without extras, a setting is listed in ``not_sent`` when OpenAI's API behaves differently from
    it: a penalty other than 1.0, or a top_k cut (> 0) when sampling.
    """
    sampling = params.temperature > 0
    penalty = params.repetition_penalty
    if not sends_extra(spec):
        if not _is_openai_api(spec.base_url):
            # another server fills what is not sent with its own defaults (vLLM: the model's
            # generation_config.json), so even neutral values are not what the recipe recorded
            return OpenAIExtras({}, (), (("top_k",) if sampling else ()) + ("repetition_penalty",))
        missing = (("top_k",) if sampling and params.top_k > 0 else ()) + \
            (("repetition_penalty",) if penalty != 1.0 else ())
        return OpenAIExtras({}, (), missing)
    sent = ("top_k", "repetition_penalty") if sampling else ("repetition_penalty",)
    if spec.server == "llama.cpp":
        # llama.cpp penalises only the last 64 tokens by default (HF and vLLM: prompt and answer); -1 = whole
        # context. Its top_k 40 and min_p 0.05 defaults would cut what hf samples from.
        body: dict[str, Any] = {"repeat_penalty": penalty, "repeat_last_n": -1}
        if sampling:
            body.update(top_k=params.top_k, min_p=0.0)
    elif spec.server == "transformers":
        # `transformers serve` answers 422 to any field outside its schema; its `generation_config` (JSON)
        # takes any GenerationConfig key, unset ones falling back to the model's own. do_sample is explicit
        # because the serve code sets it only for temperature 0.
        cfg: dict[str, Any] = {"repetition_penalty": penalty, "do_sample": sampling}
        if sampling:
            cfg["top_k"] = params.top_k
        body = {"generation_config": json.dumps(cfg, sort_keys=True)}
    else:  # vllm: its sampling params by their own names; -1 disables top_k (as in VLLMBackend)
        body = {"repetition_penalty": penalty}
        if sampling:
            body["top_k"] = params.top_k or -1
    return OpenAIExtras(body, sent, ())


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint, ``concurrency`` requests in flight."""

    @staticmethod
    def api_key(spec: ModelSpec) -> str:
        if spec.api_key_env and os.environ.get(spec.api_key_env):
            return os.environ[spec.api_key_env]
        if _is_local(spec.base_url):
            return "EMPTY"  # local servers (vLLM, llama.cpp, transformers serve) accept any key
        raise UserError(f"environment variable '{spec.api_key_env}' (the API key of model '{spec.id}') is not set",
                        field="api_key_env", hint=f"export {spec.api_key_env}=... (the recipe holds only its name).")

    @staticmethod
    def check(spec: ModelSpec, model_path: str | None) -> None:
        OpenAIBackend.api_key(spec)

    def __init__(self, spec: ModelSpec, model_path: str | None) -> None:
        self.spec = spec
        self.model = model_path or spec.path or spec.id
        self.key = self.api_key(spec)
        self.chunk_size = spec.concurrency * 4
        self._warned: set[str] = set()  # settings already reported as not sent (once per model)

    async def _one(self, client: Any, sem: asyncio.Semaphore, conv: list[dict], params: SamplingParams,
                   extras: OpenAIExtras) -> Generation:
        import openai

        from ja_instruct.data.templates import merge_input_messages

        kw: dict[str, Any] = dict(model=self.model, messages=merge_input_messages(conv),
                                  temperature=params.temperature, top_p=params.top_p,
                                  max_tokens=params.max_new_tokens, seed=params.seed)
        if params.stop:
            kw["stop"] = list(params.stop)[:4]  # the API accepts at most 4
        if extras.body:
            kw["extra_body"] = extras.body
        async with sem:
            try:
                resp = await client.chat.completions.create(**kw)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                    openai.BadRequestError, openai.UnprocessableEntityError) as e:
                hint = "Check base_url, the model name (path) and the API key."
                if extras.body:
                    hint += (f" It was also sent {', '.join(sorted(extras.body))} (server: {self.spec.server}): "
                             "set `server` to what serves base_url, or `send_extra: false`.")
                raise UserError(f"endpoint refused model '{self.spec.id}': {type(e).__name__} {e.status_code}: "
                                f"{str(e.message)[:200]}", field="generate.models", hint=hint) from None
        choice = resp.choices[0]
        text = choice.message.content or ""
        text, _ = apply_stop(text, params.stop)  # servers that ignore `stop`
        n = getattr(resp.usage, "completion_tokens", None) if resp.usage else None
        truncated = choice.finish_reason == "length"
        if truncated:  # `transformers serve` ends a cut answer in U+FFFD (half a character); hf and vLLM drop it
            text = text.rstrip("\ufffd")
        return Generation(text=text.strip(), n_tokens=n, truncated=truncated)

    async def _all(self, conversations: list[list[dict]], params: SamplingParams) -> list[Generation]:
        import openai

        extras = openai_extras(self.spec, params)
        new = [k for k in extras.not_sent if k not in self._warned]
        if new:
            self._warned.update(new)
            log.warning("%s: %s not sent to %s (OpenAI's API takes no such parameter; set `send_extra: true` if "
                        "this endpoint does); its answers list them under generation.not_sent", self.spec.id,
                        ", ".join(f"{k}={getattr(params, k)}" for k in new), self.spec.base_url or "api.openai.com")
        client = openai.AsyncOpenAI(base_url=self.spec.base_url, api_key=self.key,
                                    max_retries=self.spec.max_retries, timeout=self.spec.timeout)
        try:
            sem = asyncio.Semaphore(self.spec.concurrency)
            return list(await asyncio.gather(*(self._one(client, sem, c, params, extras) for c in conversations)))
        finally:
            await client.close()

    def generate(self, conversations: list[list[dict]], params: SamplingParams) -> list[Generation]:
        return asyncio.run(self._all(conversations, params))

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- vllm

class VLLMBackend:
    """Local vLLM offline generation (PagedAttention, continuous batching); imported lazily."""

    @staticmethod
    def check(spec: ModelSpec, model_path: str | None) -> None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UserError(f"model '{spec.id}' uses backend 'vllm', which is not installed",
                            field="generate.models", hint="pip install vllm (GPU machines), or use backend 'hf'.")
        HFBackend.check(spec, model_path)

    def __init__(self, spec: ModelSpec, model_path: str | None) -> None:
        from vllm import LLM  # noqa: PLC0415 (lazy: heavy, GPU-only)

        from ja_instruct.data.templates import get_template
        from ja_instruct.models import resolve_model

        self.spec = spec
        self.chunk_size = max(spec.batch_size, 64)  # vLLM schedules its own batches
        self.llm = LLM(**{"model": resolve_model(model_path or spec.path or spec.id), "dtype": spec.dtype,
                          "trust_remote_code": spec.trust_remote_code, **spec.vllm_args})
        self.tokenizer = self.llm.get_tokenizer()
        self.template = get_template(spec.template, self.tokenizer)
        self.detok = SafeDecoder(self.tokenizer)

    def generate(self, conversations: list[list[dict]], params: SamplingParams) -> list[Generation]:
        from vllm import SamplingParams as VParams

        sp = VParams(n=1, temperature=params.temperature, top_p=params.top_p if params.temperature > 0 else 1.0,
                     top_k=params.top_k or -1, max_tokens=params.max_new_tokens, seed=params.seed,
                     repetition_penalty=params.repetition_penalty, stop=list(params.stop) or None)
        # Token ids, not text: vLLM would tokenise a text prompt with add_special_tokens=True (a
        # tokenizer that appends EOS ends the prompt in </s>) and its chat API has its own BOS rules.
        prompts = [{"prompt_token_ids": prompt_ids(self.tokenizer, self.template, c)} for c in conversations]
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        gens = []
        for o in outs:
            c = o.outputs[0]
            cut = c.finish_reason == "length"
            text = self.detok.decode(list(c.token_ids), cut=True) if cut else c.text
            gens.append(Generation(text=text.strip(), n_tokens=len(c.token_ids), truncated=cut))
        return gens

    def close(self) -> None:
        self.llm = None


# --------------------------------------------------------------------------- fake

FAKE_ANSWERS = (
    "はい、お答えします。日本は四季がはっきりしており、地域ごとに気候が大きく異なります。",
    "結論から言うと、いくつかの観点から考える必要があります。まず歴史的な背景を整理しましょう。",
    "ご質問ありがとうございます。要点は三つあります。第一に経済、第二に社会、第三に政治です。",
    "簡単に説明します。この制度は明治時代に始まり、戦後に大きく改められました。",
)


class FakeBackend:
    """Deterministic canned Japanese answers (tests, CI, dry runs). One "token" = one character.

    The answer depends only on the conversation and the seed; it names the turn it answers,
    so multi-turn flows can be checked. ``calls`` keeps every batch it was given.
    """

    @staticmethod
    def check(spec: ModelSpec, model_path: str | None) -> None:
        pass

    def __init__(self, spec: ModelSpec, model_path: str | None) -> None:
        self.spec = spec
        self.chunk_size = spec.batch_size
        self.calls: list[list[list[dict]]] = []

    def answer(self, conv: list[dict], seed: int) -> str:
        digest = hashlib.sha256((json.dumps(conv, ensure_ascii=False) + f"|{seed}|{self.spec.id}").encode()).digest()
        turn = sum(m["role"] == "user" for m in conv)
        question = next(m["content"] for m in reversed(conv) if m["role"] == "user")
        return f"{FAKE_ANSWERS[digest[0] % len(FAKE_ANSWERS)]}（第{turn}問「{question[:12]}」への回答）"

    def generate(self, conversations: list[list[dict]], params: SamplingParams) -> list[Generation]:
        self.calls.append(conversations)
        out = []
        for conv in conversations:
            text, _ = apply_stop(self.answer(conv, params.seed), params.stop)
            truncated = len(text) > params.max_new_tokens
            text = text[: params.max_new_tokens]
            out.append(Generation(text=text, n_tokens=len(text), truncated=truncated))
        return out

    def close(self) -> None:
        pass


#: Registry: the `backend` of a model spec -> its class (constructor ``(spec, model_path)``).
BACKENDS: dict[str, Any] = {
    "hf": HFBackend,
    "openai": OpenAIBackend,
    "vllm": VLLMBackend,
    "fake": FakeBackend,
}


def get_backend_class(name: str) -> Any:
    """The backend class called ``name``; a clear `UserError` for an unknown one."""
    if name not in BACKENDS:
        raise UserError(f"unknown generation backend '{name}'", field="backend",
                        hint=f"Valid backends: {', '.join(BACKENDS)}.")
    return BACKENDS[name]
