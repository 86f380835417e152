"""Run judge items concurrently: cache look-up, claims, calls, parse retries, the store, usage.

An `Item` is one judgment to make (one answer x turn x repeat, or one ordered pair).
`execute` judges every request whose key the store lacks (items sending the identical request
share one call), at most ``concurrency`` at a time, and appends each result as soon as it
is known. Keys another process has claimed on the same store are not called: they are
awaited and read from the store (see `ja_instruct.judge.store`). `item_record` turns a
stored judgment into the judgments.jsonl record of one item.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field

from ja_instruct.judge.backends import JudgeCallError, JudgeItemError, JudgeRequest
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
    cached: int = 0  # items whose judgment was already stored (or was made by another run meanwhile)
    judged: int = 0  # items whose judgment this run made
    waited: int = 0  # items judged by another run on the same store while this one waited
    calls: int = 0  # judge calls incl. parse retries (HTTP retries are counted by the backend)
    parse_retries: int = 0
    parse_errors: int = 0
    refused: int = 0  # items the endpoint refused this run (stored with status "error")
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # messages of the failed calls


async def _judge_one(item: Item, backend, parse_retries: int, stats: RunStats) -> dict:
    text, score, verdict, extra = "", None, None, {}
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for attempt in range(parse_retries + 1):
        req = JudgeRequest(item.key, item.system, item.user, item.prompt, item.answers,
                           attempt=attempt, repeat=item.record.get("repeat", 0))
        stats.calls += 1
        try:
            reply = await backend.judge(req)
        except JudgeItemError as e:  # refused for what it contains: stored, never averaged
            return _error_record(item, str(e), usage, attempt + 1)
        usage["prompt_tokens"] += reply.prompt_tokens
        usage["completion_tokens"] += reply.completion_tokens
        text, extra = reply.text, reply.extra
        if reply.score is not None or reply.verdict is not None:
            score, verdict = reply.score, reply.verdict
        else:
            score, verdict = parse_judgment(item.prompt.output_format, text, item.prompt.scale)
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


def _error_record(item: Item, message: str, usage: dict, attempts: int) -> dict:
    rec = dict(item.record)
    rec.update(score=None, verdict=None, status="error", error=message, text="", key=item.key, usage=usage,
               attempts=attempts, input_hash=text_hash([item.system, item.user]))
    return rec


def item_record(item: Item, stored: dict) -> dict:
    """The judgments.jsonl record of ``item`` from the stored judgment of its key. Items that
    send the identical request share one stored judgment, so the item's own fields (model,
    question, order...) are put back, and a pairwise verdict is mapped from the verdict about
    the order as shown."""
    rec = dict(stored)
    rec.update(item.record)
    if item.record.get("mode") == "pairwise" and stored.get("status") == "ok" and "verdict_shown" in stored:
        shown = stored["verdict_shown"]
        rec["verdict"] = unswap(shown) if item.swapped else shown
    return rec


async def _execute(items: list[Item], backend, store: JudgmentStore, concurrency: int, parse_retries: int,
                   retry: set[str], progress: bool) -> RunStats:
    from tqdm import tqdm

    stats = RunStats(items=len(items))
    groups: dict[str, list[Item]] = {}  # identical requests are judged once
    for it in items:
        groups.setdefault(it.key, []).append(it)

    def needed(key: str) -> bool:
        old = store.get(key)
        return old is None or old.get("status") in retry

    # decide and claim in one step under the store lock: another run's claim on a key is
    # released only after its record is appended, so no key is judged by both
    with store.locked():
        store.refresh()
        todo = [k for k in groups if needed(k)]
        seen = {k: store.version(k) for k in todo}
        mine = [k for k in todo if store.claim(k)]
    claimed = set(mine)
    theirs = [k for k in todo if k not in claimed]
    stats.cached = sum(len(groups[k]) for k in groups) - sum(len(groups[k]) for k in todo)
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(todo), desc="judging", unit="request", file=sys.stderr, disable=not progress or not todo)

    async def worker(key: str) -> None:
        it, n = groups[key][0], len(groups[key])
        try:
            async with sem:
                try:
                    rec = await _judge_one(it, backend, parse_retries, stats)
                except JudgeCallError as e:
                    stats.failed += n
                    stats.errors.append(str(e))
                    log.warning("judgment %s failed: %s (left for the next run)", key[:8], e)
                    return
            store.add(rec)  # under the store lock; the claim is released after it (finally)
            stats.judged += n
            stats.parse_errors += n * (rec["status"] == "parse_error")
            if rec["status"] == "error":
                stats.refused += n
                log.warning("judgment %s refused by the endpoint: %s (stored as status 'error')", key[:8],
                            rec["error"])
            stats.prompt_tokens += rec["usage"]["prompt_tokens"]
            stats.completion_tokens += rec["usage"]["completion_tokens"]
        finally:
            store.release(key)
            bar.update(1)

    async def await_others() -> None:
        """Wait for the keys another run claimed; judge those it left without a record."""
        pending = list(theirs)
        if not pending:
            return
        pid = store.holder(pending[0])
        log.info("judge: %d request(s) are being judged by another run%s sharing %s; waiting for them",
                 len(pending), f" (pid {pid})" if pid else "", store.path)
        mine_too: list[asyncio.Task] = []
        while pending:
            still = []
            for key in pending:
                if not store.claim(key):
                    still.append(key)
                    continue
                with store.locked():
                    store.refresh()
                if store.version(key) != seen[key]:  # the other run stored it
                    store.release(key)
                    stats.waited += len(groups[key])
                    stats.cached += len(groups[key])
                    bar.update(1)
                else:  # it died or gave up: judge it here
                    mine_too.append(asyncio.create_task(worker(key)))
            pending = still
            if pending:
                await asyncio.sleep(0.1)
        await asyncio.gather(*mine_too)

    tasks = [asyncio.create_task(worker(k)) for k in mine] + [asyncio.create_task(await_others())]
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
            retry_parse_errors: bool = False, progress: bool = True, retry_errors: bool = False) -> RunStats:
    """Judge every item whose key ``store`` lacks (with ``retry_parse_errors`` / ``retry_errors``
    also those stored as ``parse_error`` / ``error``); returns this run's `RunStats`."""
    retry = {s for s, on in (("parse_error", retry_parse_errors), ("error", retry_errors)) if on}
    t0 = time.perf_counter()
    stats = asyncio.run(_execute(items, backend, store, concurrency, parse_retries, retry, progress))
    stats.seconds = time.perf_counter() - t0
    return stats
