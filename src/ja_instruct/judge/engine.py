"""Run judge items concurrently: cache look-up, calls, parse retries, the store, usage.

An `Item` is one judgment to make (one answer x turn x repeat, or one ordered pair).
`execute` judges every item whose key is not yet in the store, at most
``concurrency`` at a time, and appends each result as soon as it is known.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field

from ja_instruct.judge.backends import JudgeCallError, JudgeRequest
from ja_instruct.judge.parse import parse_judgment, unswap
from ja_instruct.judge.prompt import JudgePrompt
from ja_instruct.judge.store import JudgmentStore, text_hash

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One judgment to make. ``record`` holds the judgments.jsonl fields known before the call."""

    key: str
    record: dict
    prompt: JudgePrompt
    system: str
    user: str
    answers: list[str]  # as shown (A first)
    swapped: bool = False  # pairwise: model_b was shown as A


@dataclass
class RunStats:
    """What this run did (cached items cost nothing)."""

    items: int = 0
    cached: int = 0
    judged: int = 0
    calls: int = 0  # judge calls incl. parse retries (HTTP retries are counted by the backend)
    parse_retries: int = 0
    parse_errors: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


async def _judge_one(item: Item, backend, parse_retries: int, stats: RunStats) -> dict:
    text, score, verdict, extra = "", None, None, {}
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for attempt in range(parse_retries + 1):
        req = JudgeRequest(item.key, item.system, item.user, item.prompt, item.answers,
                           attempt=attempt, repeat=item.record.get("repeat", 0))
        reply = await backend.judge(req)
        stats.calls += 1
        usage["prompt_tokens"] += reply.prompt_tokens
        usage["completion_tokens"] += reply.completion_tokens
        text, extra = reply.text, reply.extra
        if reply.score is not None or reply.verdict is not None:
            score, verdict = reply.score, reply.verdict
        else:
            score, verdict = parse_judgment(item.prompt.output_format, text)
        if score is not None or verdict is not None:
            break
        if attempt < parse_retries:
            stats.parse_retries += 1
    ok = score is not None or verdict is not None
    raw = verdict
    if item.swapped:
        verdict = unswap(verdict)
    rec = dict(item.record)
    rec.update(score=score, verdict=verdict, status="ok" if ok else "parse_error", text=text,
               key=item.key, usage=usage, attempts=attempt + 1, input_hash=text_hash([item.system, item.user]))
    if extra:
        rec.update(extra)  # e.g. the hf judge's score distribution ("dist")
    if item.record.get("mode") == "pairwise":
        rec["verdict_shown"] = raw  # the verdict about the order as shown (for position bias)
    return rec


async def _execute(items: list[Item], backend, store: JudgmentStore, concurrency: int, parse_retries: int,
                   retry_parse_errors: bool, progress: bool) -> RunStats:
    from tqdm import tqdm

    stats = RunStats(items=len(items))
    todo = []
    for it in items:
        old = store.get(it.key)
        if old is not None and not (retry_parse_errors and old.get("status") == "parse_error"):
            stats.cached += 1
        else:
            todo.append(it)
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(todo), desc="judging", unit="item", file=sys.stderr, disable=not progress or not todo)

    async def worker(it: Item) -> None:
        async with sem:
            try:
                rec = await _judge_one(it, backend, parse_retries, stats)
            except JudgeCallError as e:
                stats.failed += 1
                stats.errors.append(str(e))
                log.warning("judgment %s failed: %s (left for the next run)", it.key[:8], e)
                bar.update(1)
                return
        store.add(rec)  # single-threaded event loop: appends never interleave
        stats.judged += 1
        stats.parse_errors += rec["status"] == "parse_error"
        stats.prompt_tokens += rec["usage"]["prompt_tokens"]
        stats.completion_tokens += rec["usage"]["completion_tokens"]
        bar.update(1)

    tasks = [asyncio.create_task(worker(it)) for it in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        bar.close()
        if hasattr(backend, "aclose"):
            await backend.aclose()
    return stats


def execute(items: list[Item], backend, store: JudgmentStore, concurrency: int = 16, parse_retries: int = 2,
            retry_parse_errors: bool = False, progress: bool = True) -> RunStats:
    """Judge every item not yet in ``store``; returns this run's `RunStats`."""
    t0 = time.perf_counter()
    stats = asyncio.run(_execute(items, backend, store, concurrency, parse_retries, retry_parse_errors, progress))
    stats.seconds = time.perf_counter() - t0
    return stats
