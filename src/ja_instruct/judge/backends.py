"""Judge backends behind one tiny contract: ``await backend.judge(request) -> JudgeReply``.

* ``openai``: `openai.AsyncOpenAI` against any OpenAI-compatible endpoint. The SDK's own
  retries are off; ours retry 429 / 5xx / time-outs / connection errors with exponential
  back-off and jitter, honouring ``Retry-After``, under a requests-per-minute limit.
* ``hf``: a local transformers model. It does not generate: its prompt ends where the
  score goes (the prompt's ``score_prefix``, e.g. ``評価：[[``) and we read the
  probabilities of the candidate continuations ``"1]]" ... "10]]"`` (each scored as a whole
  token sequence, so a multi-token ``10`` is fine). The score is the expected value
  ``sum_s s * p(s) / sum_s p(s)``, so it is never unparseable. Pairwise: ``A]]/B]]/C]]``
  (or ``1/2/3``), the most probable one wins.
* ``fake``: deterministic judge for tests and dry runs; see `FakeBackend`.

What a failed call means (openai):

* 401 / 403 (credentials) and 404 (model name or ``base_url``): the setup is wrong, every
  item would fail the same way: a `UserError` stops the run at once, with a hint for that cause.
* 400 / 413 / 422: the endpoint refused THIS request (context length, content filter, an
  answer it will not take): `JudgeItemError`, stored as a ``status: error`` record; the
  run goes on (``judge.max_error_rate`` decides the exit code; ``retry_errors`` asks again).
* 408 / 409 / 429 / 5xx / time-out / connection error / a malformed body: retried with
  back-off; still failing after ``max_retries``: `JudgeCallError`, not stored (the next
  run tries again).

No message built here contains the API key: it is cut out of any text the server sends back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field

from ja_instruct.errors import UserError
from ja_instruct.judge.config import JudgeBackendConfig
from ja_instruct.judge.prompt import JudgePrompt

log = logging.getLogger(__name__)


@dataclass
class JudgeRequest:
    """One call: the rendered messages plus what a non-LLM backend needs."""

    key: str
    system: str
    user: str
    prompt: JudgePrompt
    answers: list[str]  # the judged answer(s) in the order shown (A first)
    attempt: int = 0  # parse-retry index
    repeat: int = 0


@dataclass
class JudgeReply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    score: float | None = None  # set by backends that produce a value directly (hf)
    verdict: str | None = None
    extra: dict = field(default_factory=dict)


class JudgeCallError(Exception):
    """A call that still failed after every retry (the item is left for the next run)."""


class JudgeItemError(Exception):
    """The endpoint refused this one request for good (HTTP 400 / 413 / 422: context length,
    content filter...): the item is stored with ``status: error`` and the run goes on."""


# HTTP statuses that refuse one request for what it contains, not for who sends it.
ITEM_ERROR_STATUSES = (400, 413, 422)
# 4xx statuses worth retrying (time-out, conflict, rate limit).
RETRYABLE_4XX = (408, 409, 429)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every non-trivial secret in ``secrets`` replaced by ``***``."""
    for s in secrets:
        if s and len(s) >= 8:
            text = text.replace(s, "***")
    return text


class RateLimiter:
    """At most ``rpm`` request starts per minute, spaced evenly (no bursts that trigger 429s)."""

    def __init__(self, rpm: float | None) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def _retry_after(exc: Exception) -> float | None:
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        v = headers.get(name)
        if v is not None:
            try:
                return min(float(v) * scale, 300.0)
            except ValueError:
                return None  # an HTTP date: fall back to our back-off
    return None


class OpenAIBackend:
    """Chat completions on an OpenAI-compatible server (see module doc)."""

    def __init__(self, cfg: JudgeBackendConfig) -> None:
        from openai import AsyncOpenAI

        self.cfg = cfg
        self.key_set = bool(os.environ.get(cfg.api_key_env))
        self.key = os.environ.get(cfg.api_key_env) or "EMPTY"  # local servers accept any key
        self.client = AsyncOpenAI(base_url=cfg.base_url, api_key=self.key, max_retries=0, timeout=cfg.timeout)
        self.limiter = RateLimiter(cfg.requests_per_minute)
        self.calls = 0  # HTTP requests made, retries included
        self.retries = 0

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        import openai

        cfg = self.cfg
        messages = ([{"role": "system", "content": req.system}] if req.system else []) + [
            {"role": "user", "content": req.user}]
        for attempt in range(cfg.max_retries + 1):
            await self.limiter.wait()
            self.calls += 1
            try:
                resp = await self.client.chat.completions.create(
                    model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens)
                text = (resp.choices[0].message.content if resp.choices else None) or ""
                u = resp.usage
                return JudgeReply(text, getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0)
            except (openai.APIError, json.JSONDecodeError) as e:  # 429, 5xx, time-out, connection, malformed body
                status = getattr(e, "status_code", None)
                if status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX:
                    raise self._refusal(status, e) from None
                if attempt == cfg.max_retries:
                    raise JudgeCallError(f"gave up after {attempt + 1} tries: {e.__class__.__name__}: "
                                         f"{self._clean(e)}") from None
                delay = _retry_after(e)
                if delay is None:
                    delay = min(60.0, cfg.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.5)
                self.retries += 1
                log.debug("judge call failed (%s), retry %d in %.2fs", e.__class__.__name__, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _clean(self, e: Exception) -> str:
        """The server's message, short, with the key cut out (a server may echo a header)."""
        return redact(str(e), self.key)[:300]

    def _refusal(self, status: int, e: Exception) -> Exception:
        """The exception for a non-retryable 4xx: per item (400/413/422) or the whole run (others)."""
        cfg, msg = self.cfg, f"HTTP {status}: {self._clean(e)}"
        where = cfg.base_url or "the SDK's default endpoint ($OPENAI_BASE_URL or api.openai.com)"
        if status in ITEM_ERROR_STATUSES:
            return JudgeItemError(msg)
        if status in (401, 403):
            hint = (f"Check the API key in ${cfg.api_key_env} (judge.backend.api_key_env names the variable): "
                    f"it is {'unset' if not self.key_set else 'set but refused'} for {where}.")
        elif status == 404:
            hint = (f"Check judge.backend.model ({cfg.model!r}) and judge.backend.base_url ({where}): "
                    "the endpoint knows no such model or path.")
        else:
            return JudgeCallError(msg)  # e.g. 405/410: not the user's key, not this item; next run retries
        return UserError(f"judge API refused the request: {msg}", field="judge.backend", hint=hint)

    async def aclose(self) -> None:
        await self.client.close()


class HFBackend:
    """Local transformers judge, logprob-weighted score (see module doc)."""


    def __init__(self, cfg: JudgeBackendConfig) -> None:
        self.cfg = cfg
        self.model = self.tokenizer = None
        self.calls = 0
        self.retries = 0

    def _load(self) -> None:
        import torch

        from ja_instruct.models import load_causal_lm, load_tokenizer

        device = self.cfg.device if self.cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.model = load_causal_lm(self.cfg.model).to(device).eval()
        self.device = device

    def _prompt_text(self, req: JudgeRequest) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            msgs = ([{"role": "system", "content": req.system}] if req.system else []) + [
                {"role": "user", "content": req.user}]
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            text = f"{req.system}\n\n{req.user}\n\n" if req.system else f"{req.user}\n\n"
        return text + req.prompt.score_prefix

    def _score(self, req: JudgeRequest) -> JudgeReply:
        import torch

        fmt = req.prompt.output_format
        closing = "]]" if req.prompt.score_prefix.endswith("[[") else ""
        if fmt == "rating":  # the prompt's own scale: 1-10, or 1-5 for ELYZA-tasks-100
            lo, hi = getattr(req.prompt, "scale", (1, 10))
            labels = [str(s) for s in range(int(lo), int(hi) + 1)]
        else:
            labels = ["A", "B", "C"] if fmt == "verdict" else ["1", "2", "3"]
        prompt_ids = self.tokenizer(self._prompt_text(req), add_special_tokens=True)["input_ids"]
        conts = [self.tokenizer(lab + closing, add_special_tokens=False)["input_ids"] for lab in labels]
        seq_lp = self.continuation_logprobs(prompt_ids, conts)
        probs = torch.softmax(torch.tensor(seq_lp), dim=0)
        dist = {lab: round(float(p), 4) for lab, p in zip(labels, probs)}
        if fmt == "rating":
            score = float(sum(int(lab) * float(p) for lab, p in zip(labels, probs)))
            return JudgeReply(f"{req.prompt.score_prefix}{score:.2f}{closing}", len(prompt_ids), 0,
                              score=score, extra={"dist": dist})
        best = labels[int(probs.argmax())]
        verdict = {"A": "A", "B": "B", "C": "tie", "1": "A", "2": "B", "3": "tie"}[best]
        return JudgeReply(f"{req.prompt.score_prefix}{best}{closing}", len(prompt_ids), 0,
                          verdict=verdict, extra={"dist": dist})

    def continuation_logprobs(self, prompt_ids: list[int], conts: list[list[int]]) -> list[float]:
        """log p(cont | prompt) for each continuation. The prompt (long: question + answers) runs
        once; its KV cache is repeated for the short continuations (one batch, right-padded)."""
        import inspect

        import torch

        model, dev = self.model, self.device
        params = inspect.signature(model.forward).parameters
        cache_kw = "cache" if "cache" in params else "past_key_values"
        # only the last position's logits are needed: skip the vocabulary projection elsewhere
        keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prompt_ids], device=dev), use_cache=True, **keep)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()
            cache = getattr(out, "cache", None) or out.past_key_values
            width = max(len(c) for c in conts)
            if width == 1:
                return [float(first[c[0]]) for c in conts]
            cache.batch_repeat_interleave(len(conts))
            ids = torch.zeros((len(conts), width), dtype=torch.long)
            mask = torch.zeros((len(conts), len(prompt_ids) + width), dtype=torch.long)
            mask[:, :len(prompt_ids)] = 1
            for i, c in enumerate(conts):
                ids[i, :len(c)] = torch.tensor(c)
                mask[i, len(prompt_ids):len(prompt_ids) + len(c)] = 1
            out2 = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False, **{cache_kw: cache})
            rest = torch.log_softmax(out2.logits.float(), dim=-1).cpu()
        return [float(first[c[0]]) + sum(float(rest[i, j - 1, c[j]]) for j in range(1, len(c)))
                for i, c in enumerate(conts)]

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        if self.model is None:
            await asyncio.to_thread(self._load)
        self.calls += 1
        return await asyncio.to_thread(self._score, req)

    async def aclose(self) -> None:
        self.model = None


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the hash of ``parts``."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
    return int(h[:12], 16) / 16 ** 12


def ja_ratio(text: str) -> float:
    """Share of hiragana, katakana and kanji among the non-space characters."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    ja = sum(1 for c in chars if "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff")
    return ja / len(chars)


def fake_quality(answer: str) -> float:
    """The fake judge's opinion of an answer, 1-10: mostly a hash (stable, varied), plus a mild
    preference for longer answers (up to ~600 chars) and for Japanese text."""
    if not answer.strip():
        return 1.0
    return 1.5 + 4.5 * _unit("q", answer) + 2.5 * min(len(answer), 600) / 600 + 1.5 * ja_ratio(answer)


class FakeBackend:
    """Deterministic judge: scores from `fake_quality`; with temperature > 0 a hash-seeded
    +-1 noise per repeat; pairwise verdicts prefer the first position by 0.3 (a small
    position bias, so the inconsistency and home-advantage figures have something to show).
    Test doubles that misbehave (parse errors...) subclass it in the tests, not here."""

    def __init__(self, cfg: JudgeBackendConfig) -> None:
        self.cfg = cfg
        self.calls = 0
        self.retries = 0

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        self.calls += 1
        cfg, p = self.cfg, req.prompt
        noise = (2 * _unit("n", req.key, req.repeat) - 1) if cfg.temperature > 0 else 0.0
        if p.output_format == "rating":
            # fake_quality is on 1-10; mapped onto the prompt's scale (1-5 for ELYZA-tasks-100)
            lo, hi = getattr(p, "scale", (1, 10))
            q = lo + (fake_quality(req.answers[0]) - 1.0) / 9.0 * (hi - lo) + noise * (hi - lo) / 9.0
            score = int(round(min(float(hi), max(float(lo), q))))
            text = f"回答の内容を確認しました（長さ {len(req.answers[0])} 文字）。\n{p.score_prefix}{score}]]"
        else:
            diff = fake_quality(req.answers[0]) + 0.3 - fake_quality(req.answers[1]) + noise
            v = "C" if abs(diff) < 0.5 else ("A" if diff > 0 else "B")
            text = (f"両方の回答を比べました。\n{p.score_prefix}{v}]]" if p.output_format == "verdict"
                    else "両方の回答を比べました。\n" + {"A": "1", "B": "2", "C": "3"}[v])
        return JudgeReply(text, (len(req.system) + len(req.user)) // 2, len(text) // 2)

    async def aclose(self) -> None:
        pass


BACKENDS = {"openai": OpenAIBackend, "hf": HFBackend, "fake": FakeBackend}
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"


def judge_identity(cfg: JudgeBackendConfig) -> dict:
    """What identifies the judge in a cache key: backend, model, the endpoint actually called
    (openai: ``base_url``, else the SDK's own default from $OPENAI_BASE_URL), the sampling
    parameters, and for a local hf model folder the fingerprint of its files (retrained weights
    or a new chat template make new keys). Execution knobs (concurrency, retries...) are not in it."""
    ident: dict = {"backend": cfg.backend, "model": cfg.model, "temperature": cfg.temperature,
                   "max_tokens": cfg.max_tokens, "base_url": None}
    if cfg.backend == "openai":
        ident["base_url"] = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL).rstrip("/")
    if cfg.backend == "hf":
        from ja_instruct.config import resolve_path
        from ja_instruct.manifest import model_dir_fingerprint

        path = resolve_path(cfg.model)
        if path.is_dir():
            ident["files"] = model_dir_fingerprint(path)
    return ident


def judge_inputs(cfg: JudgeBackendConfig) -> dict[str, str]:
    """Manifest inputs of a judge that its config does not show: ``endpoint``, the URL an openai
    judge really calls (with ``base_url`` null it comes from $OPENAI_BASE_URL; hashed, since a
    URL may carry credentials), and ``model_files``, a local hf judge's files."""
    from ja_instruct.io import stable_hash

    ident = judge_identity(cfg)
    inputs = {}
    if cfg.backend == "openai":
        inputs["endpoint"] = stable_hash(ident["base_url"])
    if cfg.backend == "hf" and ident.get("files"):
        inputs["model_files"] = ident["files"]
    return inputs


def public_url(url: str | None) -> str | None:
    """``url`` without user info, query and fragment, where credentials may hide: what may be
    published (stats.json, a dataset card)."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


def public_judge_config(cfg):
    """A judge section (`JudgeConfig`) as saved beside outputs: every endpoint URL without user
    info or query (`public_url`), where a key could hide."""
    backend = cfg.backend.model_copy(update={"base_url": public_url(cfg.backend.base_url)})
    panel = [b.model_copy(update={"base_url": public_url(b.base_url)}) for b in cfg.panel]
    return cfg.model_copy(update={"backend": backend, "panel": panel})


def make_backend(cfg: JudgeBackendConfig):
    """The backend named by ``cfg.backend`` (the registry is `BACKENDS`)."""
    return BACKENDS[cfg.backend](cfg)
