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
        key = os.environ.get(cfg.api_key_env) or "EMPTY"  # local servers accept any key
        self.client = AsyncOpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout)
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
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError,
                    openai.BadRequestError) as e:
                # the user's mistake (key, model name, URL): stop the run, retrying cannot help
                raise UserError(f"judge API refused the request: {e.__class__.__name__}: {str(e)[:200]}",
                                field="judge.backend", hint=f"Check judge.backend.model/base_url and ${cfg.api_key_env}.") from None
            except (openai.APIError, json.JSONDecodeError) as e:  # 429, 5xx, time-out, connection, malformed body
                status = getattr(e, "status_code", None)
                if status is not None and 400 <= status < 500 and status not in (408, 409, 429):
                    raise JudgeCallError(f"HTTP {status}: {str(e)[:200]}") from None
                if attempt == cfg.max_retries:
                    raise JudgeCallError(f"gave up after {attempt + 1} tries: {e.__class__.__name__}: {str(e)[:200]}") from None
                delay = _retry_after(e)
                if delay is None:
                    delay = min(60.0, cfg.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.5)
                self.retries += 1
                log.debug("judge call failed (%s), retry %d in %.2fs", e.__class__.__name__, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.close()


class HFBackend:
    """Local transformers judge, logprob-weighted score (see module doc)."""

    RATING = [str(s) for s in range(1, 11)]

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
        labels = self.RATING if fmt == "rating" else (["A", "B", "C"] if fmt == "verdict" else ["1", "2", "3"])
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
    ``fake_parse_error_rate`` makes that share of calls answer without any score."""

    def __init__(self, cfg: JudgeBackendConfig) -> None:
        self.cfg = cfg
        self.calls = 0
        self.retries = 0

    async def judge(self, req: JudgeRequest) -> JudgeReply:
        self.calls += 1
        cfg, p = self.cfg, req.prompt
        noise = (2 * _unit("n", req.key, req.repeat) - 1) if cfg.temperature > 0 else 0.0
        if cfg.fake_parse_error_rate and _unit("e", req.key, req.attempt) < cfg.fake_parse_error_rate:
            text = "よく分かりませんでした。"  # no score anywhere
        elif p.output_format == "rating":
            score = int(round(min(10.0, max(1.0, fake_quality(req.answers[0]) + noise))))
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


def make_backend(cfg: JudgeBackendConfig):
    """The backend named by ``cfg.backend`` (the registry is `BACKENDS`)."""
    return BACKENDS[cfg.backend](cfg)
