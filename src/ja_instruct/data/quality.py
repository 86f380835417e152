"""Judge-scored filtering of training examples (``data.quality``).

A judge (any backend of the judge stage: ``openai``, ``hf``, ``fake``) grades every example of the
selected sources on a Japanese rubric (``quality-ja``: helpful, correct, natural Japanese, not a
broken or partial translation, not repetitive) from 1 to 10; the examples under the bar are dropped
(``low_quality``). The judging itself is the judge stage's: `ja_instruct.judge.engine.execute`
with its backends, retries, rate limit, concurrency and `JudgmentStore`, not a copy.

**What the judge sees.** One request per example: the prompt's system message, and its template
rendered with ``question`` = the instruction and ``answer`` = the last assistant message
(`conversation_pair`). An ``input`` message (alpaca) follows its instruction under ``### 入力:``.
A system message and the earlier turns of a multi-turn conversation go into ``question`` as
context: ``【システムメッセージ】``, then ``【これまでの会話】`` (every earlier user / assistant
turn), then ``【最後の指示】``. The last response is graded; the rubric tells the judge to lower
the score for broken earlier assistant turns too, since every assistant turn is trained on.

**The cache.** The cache key is the judge stage's `request_key`: the judge's identity (backend,
model, endpoint, sampling), the exact rendered messages and the prompt's parse settings. So a
re-build makes 0 judge calls, an edited example (instruction or response) is a new request and
only it is judged, two identical examples share one judgment, and a killed build loses only the
calls in flight (each judgment is appended and fsynced as it arrives). Default store:
``<data dir>.quality-cache.jsonl`` beside the dataset folder (the build replaces the folder).

**Unscored examples are dropped.** A judgment stored as ``parse_error`` (no score after the
parse retries) or ``error`` (the endpoint refused the request: context length, content filter)
has no score. Such an example was not vetted, so it is never kept (the filter's promise is that
every kept example passed); it is counted in ``errors`` and dropped with the others. A call that
still fails after every retry (network, 5xx, 429) is not stored: `score_examples` raises a
`UserError` after storing every judgment it made, and the next build asks only for the rest.

**Selection** (`select`). ``threshold``: keep ``score >= threshold``. ``top_fraction``: per source,
keep the ``ceil(top_fraction * n)`` best scored examples (n = the source's examples given, scored
or not; ceil, so a non-zero fraction never empties a source; unscored ones are never kept), best
first, ties broken by id (then by position). Sources not in ``data.quality.sources`` are not scored
and pass untouched. Scores are kept as the judge gives them (the ``hf`` judge's expected value is
fractional); the histogram rounds them half up to an integer 1-10.

**Token estimate** (`estimate`, ``--dry-run``; also printed before scoring). Distinct requests not
in the cache x estimated prompt tokens. With an ``hf`` judge its tokenizer counts them exactly (the
prompt as the hf judge builds it); otherwise characters are converted: 1 token per non-ASCII
character and 1 per 4 ASCII characters, plus 8 per message. This is a rule of thumb (BPE
tokenizers of API judges spend roughly one token per Japanese character), not a measurement made
against the judge's tokenizer: compare it with the real ``usage`` in stats.json after a first
run before trusting it for a budget. Completion tokens:
``min(max_tokens, 200)`` per call (two or three sentences of reasons and the score line; the hf
judge generates nothing: 0). Cost = tokens x the judge's ``price_*_per_1k`` fields (null without prices).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ja_instruct.config import resolve_path
from ja_instruct.data.config import QualityConfig
from ja_instruct.errors import UserError
from ja_instruct.judge.config import EXECUTION_FIELDS
from ja_instruct.judge.prompt import JudgePrompt

ASCII_CHARS_PER_TOKEN = 4
"""Character -> token rule of the estimate: ASCII characters per token."""
TOKENS_PER_NON_ASCII_CHAR = 1.0
"""... and tokens per non-ASCII (Japanese) character."""
TOKENS_PER_MESSAGE = 8
"""... plus this many per chat message (role markers), two messages per request."""
EST_COMPLETION_TOKENS = 200
"""Estimated completion tokens of one judgment (capped by the judge's ``max_tokens``)."""
# How the scoring runs, what it costs, where the key is read from: never which scores it gives,
# so never a reason to rebuild the data (and retrain on it).
RUN_ONLY_JUDGE_FIELDS = EXECUTION_FIELDS | {"api_key_env", "price_prompt_per_1k", "price_completion_per_1k"}
CACHE_SUFFIX = ".quality-cache.jsonl"


# --------------------------------------------------------------------------- paths, prompt, config

def quality_cache_path(cfg: QualityConfig, out_dir: Path) -> Path:
    """The judgment store of ``cfg``: ``cfg.cache`` (``embedded:`` / ``~`` resolved), else
    ``<out_dir>.quality-cache.jsonl`` beside the dataset folder ``out_dir``."""
    if cfg.cache:
        return resolve_path(cfg.cache)
    out = Path(out_dir)
    return out.with_name(out.name + CACHE_SUFFIX)


def prompt_path(cfg: QualityConfig) -> Path:
    """The prompt file of ``cfg.prompt``: one of ours by name (``quality-ja``), else a path."""
    from ja_instruct.judge.prompt import PROMPTS_DIR, builtin_prompt_names

    name = cfg.prompt
    ours = PROMPTS_DIR / f"{name}.yaml"
    if "/" not in name and "\\" not in name and not name.endswith((".yaml", ".yml")) and ours.is_file():
        return ours
    path = resolve_path(name)
    if not path.is_file():
        raise UserError(f"no prompt file {name!r}", field="data.quality.prompt",
                        hint=f"Use one of our prompts ({', '.join(builtin_prompt_names())}; quality-ja is the "
                             "data-quality rubric) or the path of a prompt file of the same schema.")
    return path


def load_quality_prompt(cfg: QualityConfig) -> JudgePrompt:
    """The rubric of ``cfg`` (checked: a single-answer prompt whose output is a 1-10 rating)."""
    from ja_instruct.judge.prompt import load_prompt_file

    p = load_prompt_file(prompt_path(cfg))
    if p.kind != "single" or p.output_format != "rating":
        raise UserError(f"prompt '{p.name}' is a {p.kind} prompt with output_format {p.output_format}; "
                        "data.quality needs kind single and output_format rating (a 1-10 score)",
                        field="data.quality.prompt", hint="Use quality-ja.")
    return p


def hashed_quality_config(cfg: QualityConfig) -> dict:
    """``cfg`` as the data manifest should hash it: everything that decides the scores and the
    selection (judge identity and sampling, prompt name, threshold / top_fraction, sources),
    without where the cache lives, the prices and the judge's execution knobs (concurrency, rate limit,
    retries, time-out, device), which change how the scoring runs, never its result."""
    from ja_instruct.io import stable_hash

    data = cfg.model_dump(mode="json")
    data.pop("cache", None)
    for k in RUN_ONLY_JUDGE_FIELDS:
        data["judge"].pop(k, None)
    if data["judge"].get("base_url"):  # the manifest stores its config: no credentials in clear
        data["judge"]["base_url"] = stable_hash(data["judge"]["base_url"])
    return data


def quality_inputs(cfg: QualityConfig) -> dict[str, str]:
    """Manifest inputs the config does not show: the prompt file's content (``quality_prompt``),
    the endpoint an openai judge calls and a local hf judge's files (`judge_inputs`). Cheap:
    nothing is loaded."""
    from ja_instruct.judge.backends import judge_inputs
    from ja_instruct.manifest import file_fingerprint

    inputs = {"quality_prompt": file_fingerprint(prompt_path(cfg))}
    names = {"endpoint": "quality_endpoint", "model_files": "quality_judge_model"}
    inputs.update({names[k]: v for k, v in judge_inputs(cfg.judge).items()})
    return inputs


def _public_identity(ident: dict) -> dict:
    """The judge identity for stats.json (published with the dataset): no credentials in the URL."""
    from ja_instruct.judge.backends import public_url

    return {**ident, "base_url": public_url(ident.get("base_url"))}


def _cost(usage: dict, judge) -> float | None:
    if judge.price_prompt_per_1k is None and judge.price_completion_per_1k is None:
        return None
    return round((usage["prompt_tokens"] * (judge.price_prompt_per_1k or 0)
                  + usage["completion_tokens"] * (judge.price_completion_per_1k or 0)) / 1000, 6)


# --------------------------------------------------------------------------- what the judge sees

def _with_inputs(messages: list[dict]) -> list[dict]:
    """Each ``input`` message merged into its instruction under ``### 入力:``."""
    from ja_instruct.data.templates import validate_messages

    out: list[dict] = []
    for m in validate_messages(messages):
        if m["role"] == "input":
            out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n\n### 入力:\n{m['content']}"}
        else:
            out.append(m)
    return out


def conversation_pair(messages: list[dict]) -> tuple[str, str]:
    """(question, answer) shown to the judge for one conversation: the answer is the last
    assistant message; the question is the instruction before it, preceded by the system message
    and the earlier turns as context when there are any (see the module doc)."""
    msgs = _with_inputs(messages)
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:  # nothing to grade (the cleaner drops these): the judge sees an empty answer
        before, answer = msgs, ""
    else:
        before, answer = msgs[:last], msgs[last]["content"]
    system = [m["content"] for m in before if m["role"] == "system"]
    turns = [m for m in before if m["role"] != "system"]
    # the instruction: the user messages right before the answer
    k = len(turns)
    while k > 0 and turns[k - 1]["role"] == "user":
        k -= 1
    earlier, instruction = turns[:k], "\n\n".join(m["content"] for m in turns[k:])
    if not system and not earlier:
        return instruction, answer
    parts = [f"【システムメッセージ】\n{system[0]}"] if system else []
    if earlier:
        names = {"user": "ユーザー", "assistant": "アシスタント"}
        parts.append("【これまでの会話】\n" + "\n\n".join(f"### {names[m['role']]}:\n{m['content']}" for m in earlier))
        parts.append(f"【最後の指示】\n{instruction}")
    else:
        parts.append(f"【指示】\n{instruction}")
    return "\n\n".join(parts), answer


def render_request(example: dict, prompt: JudgePrompt) -> tuple[str, str]:
    """(user message, judged answer) of the judge's request for ``example``."""
    from ja_instruct.judge.prompt import build_context

    question, answer = conversation_pair(example["messages"])
    return prompt.render(build_context([question], [answer])), answer


def _selected(cfg: QualityConfig) -> Callable[[str], bool]:
    names = None if cfg.sources is None else set(cfg.sources)
    return lambda source: names is None or source in names


@dataclass
class _Planned:
    index: int  # position in the examples given
    key: str  # the request's cache key
    user: str | None  # the rendered message; None when the key was already stored
    answer: str


def _plan(examples: list[dict], cfg: QualityConfig, prompt: JudgePrompt, ident: dict,
          stored: Callable[[str], bool]) -> list[_Planned]:
    """One request per example of a selected source; the rendered text is kept only when the
    store lacks the key (memory: ~150k rendered examples need not all be held)."""
    from ja_instruct.judge.store import request_key

    take = _selected(cfg)
    out = []
    for i, ex in enumerate(examples):
        if not take(ex["source"]):
            continue
        user, answer = render_request(ex, prompt)
        key = request_key(ident, prompt.system, user, prompt, 0)
        out.append(_Planned(i, key, None if stored(key) else user, answer))
    return out


# --------------------------------------------------------------------------- estimate

def _token_counter(cfg: QualityConfig, prompt: JudgePrompt) -> tuple[Callable[[list[str]], list[int]], str]:
    """(count the prompt tokens of a batch of user messages, how they are counted): the hf judge's
    own tokenizer when it loads (no model), else the character rule of the module doc."""
    how = "characters"
    if cfg.judge.backend == "hf":
        try:
            from ja_instruct.judge.backends import HFBackend, JudgeRequest
            from ja_instruct.models import load_tokenizer

            backend = HFBackend(cfg.judge)
            backend.tokenizer = load_tokenizer(cfg.judge.model)
        except Exception as e:  # noqa: BLE001 - an estimate falls back, it never fails the dry run
            how = f"characters (the judge's tokenizer did not load: {e.__class__.__name__})"
        else:
            def count_hf(users: list[str]) -> list[int]:
                # the exact text the hf judge scores: its chat template, ending at the score prefix
                texts = [backend._prompt_text(JudgeRequest("", prompt.system, u, prompt, [])) for u in users]
                return [len(ids) for ids in backend.tokenizer(texts, add_special_tokens=True)["input_ids"]]
            return count_hf, f"the tokenizer of {cfg.judge.model}"
    system = _char_tokens(prompt.system)

    def count_chars(users: list[str]) -> list[int]:
        return [system + _char_tokens(u) + 2 * TOKENS_PER_MESSAGE for u in users]
    return count_chars, how


def _char_tokens(text: str) -> int:
    ascii_chars = len(text.encode("ascii", "ignore"))  # C speed: 150k examples in well under a second
    return math.ceil((len(text) - ascii_chars) * TOKENS_PER_NON_ASCII_CHAR + ascii_chars / ASCII_CHARS_PER_TOKEN)


def _estimate(planned: list[_Planned], cfg: QualityConfig, prompt: JudgePrompt, ident: dict) -> dict:
    todo: dict[str, str] = {}
    for p in planned:
        if p.user is not None:
            todo.setdefault(p.key, p.user)
    count, how = _token_counter(cfg, prompt) if todo else ((lambda users: []), "-")
    users = list(todo.values())
    prompt_tokens = sum(sum(count(users[i:i + 1000])) for i in range(0, len(users), 1000))
    per_call = 0 if cfg.judge.backend == "hf" else min(cfg.judge.max_tokens, EST_COMPLETION_TOKENS)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": per_call * len(todo)}
    to_judge = sum(p.user is not None for p in planned)
    return {"judge": _public_identity(ident), "prompt": prompt.id, "examples": len(planned),
            "cached": len(planned) - to_judge, "to_judge": to_judge, "calls": len(todo), **usage,
            "cost": _cost(usage, cfg.judge), "tokens_counted_by": how}


def estimate(examples: list[dict], cfg: QualityConfig, cache: Path) -> dict:
    """What scoring ``examples`` would take, without a call or a model (``--dry-run``)::

        {"judge": {...}, "prompt": "quality-ja@1", "examples": int (of the selected sources),
         "cached": int (examples whose judgment is stored), "to_judge": int (examples needing a call),
         "calls": int (distinct requests: identical examples share one), "prompt_tokens": int,
         "completion_tokens": int (estimated, for those calls), "cost": float | None,
         "tokens_counted_by": str}

    The store is only read (nothing is created when it does not exist)."""
    from ja_instruct.judge.backends import judge_identity
    from ja_instruct.judge.store import JudgmentStore

    prompt = load_quality_prompt(cfg)
    ident = judge_identity(cfg.judge)
    cache = Path(cache)
    if cache.is_file():
        with JudgmentStore(cache) as store:
            planned = _plan(examples, cfg, prompt, ident, store.__contains__)
    else:
        planned = _plan(examples, cfg, prompt, ident, lambda key: False)
    return _estimate(planned, cfg, prompt, ident)


def _n(x: int) -> str:
    return f"{x:,}"


def _money(c: float) -> str:
    return f"{c:,.2f}" if c >= 0.1 else f"{c:.2g}"


def describe_estimate(est: dict) -> str:
    """One line for an `estimate` (``--dry-run``, and before scoring)."""
    head = (f"quality: {_n(est['examples'])} examples to score with the {est['judge']['backend']} judge "
            f"{est['judge']['model']} ({est['prompt']})")
    if not est["calls"]:
        return f"{head}: all {_n(est['cached'])} cached, no judge call needed"
    cost = f", cost about {_money(est['cost'])}" if est.get("cost") is not None else ""
    return (f"{head}: {_n(est['to_judge'])} need a judge call ({_n(est['calls'])} distinct requests, about "
            f"{_n(est['prompt_tokens'])} prompt + {_n(est['completion_tokens'])} completion tokens estimated "
            f"from {est['tokens_counted_by']}{cost}), {_n(est['cached'])} cached")


# --------------------------------------------------------------------------- scoring

@dataclass
class QualityResult:
    """What `score_examples` found. ``ids`` / ``values`` / ``status`` are aligned with the examples
    given (``status`` None and ``values`` None for sources that are not scored)."""

    ids: list[str]
    values: list[float | None]
    status: list[str | None]  # "ok" | "parse_error" | "error" (refused) | None (source not selected)
    judge: dict  # judge identity as published in stats.json
    prompt: str  # "name@version"
    scored: int = 0  # examples of the selected sources (judged now + cached)
    judged_now: int = 0
    cached: int = 0
    errors: int = 0  # of those, unscored (parse errors and refusals)
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    """Tokens of every judgment behind the scores (cached ones included, each request once)."""
    cost: float | None = None
    run_usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    """Tokens this run spent (0 when everything was cached)."""
    run_cost: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    """id -> score of every example of a selected source (None: unscored)."""


def score_examples(examples: list[dict], cfg: QualityConfig, cache: Path, *, echo: Callable[[str], Any] = print,
                   progress: bool = True) -> QualityResult:
    """Score every example (``{"id", "source", "messages"}``) of the sources ``cfg.sources``
    selects, judging only what the store at ``cache`` lacks (see the module doc). Prints the
    estimate before and what was spent after; raises a `UserError` when calls failed after every
    retry (what was judged is stored: the next run asks only for the rest)."""
    from ja_instruct.judge.backends import judge_identity, make_backend
    from ja_instruct.judge.engine import Item, RunStats, execute
    from ja_instruct.judge.store import JudgmentStore

    cache = Path(cache)
    if cache.is_dir():
        raise UserError("the quality cache is a folder, not a file", file=cache, field="data.quality.cache",
                        hint="Set data.quality.cache to a JSONL file path (default <data dir>.quality-cache.jsonl).")
    prompt = load_quality_prompt(cfg)
    ident = judge_identity(cfg.judge)
    with JudgmentStore(cache) as store:
        planned = _plan(examples, cfg, prompt, ident, store.__contains__)
        if planned:
            echo(describe_estimate(_estimate(planned, cfg, prompt, ident)))
        base = {"mode": "quality", "judge": cfg.judge.model, "prompt": prompt.id, "repeat": 0}
        items = [Item(p.key, {**base, "id": examples[p.index]["id"], "source": examples[p.index]["source"]},
                      prompt, prompt.system, p.user or "", [p.answer]) for p in planned]
        if any(p.user is not None for p in planned):
            backend = make_backend(cfg.judge)
            concurrency = 1 if cfg.judge.backend == "hf" else cfg.judge.concurrency
            stats = execute(items, backend, store, concurrency, cfg.judge.parse_retries, progress=progress)
        else:  # everything stored: no backend is even built
            stats = RunStats(items=len(items), cached=len(items))
        if stats.failed:
            raise UserError(f"quality: {stats.failed} judge call(s) failed after every retry ({stats.errors[0]}); "
                            f"the {stats.judged} judgment(s) made are stored in {cache}",
                            field="data.quality.judge",
                            hint="Re-run the build to finish (stored judgments are not asked again).")
        records = {p.key: store.get(p.key) for p in planned}
    missing = sum(1 for r in records.values() if r is None)
    if missing:  # not expected once nothing failed; never let an example pass unjudged
        raise UserError(f"quality: {missing} request(s) have no stored judgment after the run", file=cache,
                        field="data.quality.judge", hint="Re-run the build to judge them.")
    values: list[float | None] = [None] * len(examples)
    status: list[str | None] = [None] * len(examples)
    for p in planned:
        rec = records[p.key]
        status[p.index] = rec["status"]
        values[p.index] = rec["score"] if rec["status"] == "ok" else None
    usage = {k: sum((r.get("usage") or {}).get(k, 0) for r in records.values())
             for k in ("prompt_tokens", "completion_tokens")}
    run_usage = {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens}
    errors = [status[p.index] for p in planned if status[p.index] != "ok"]
    result = QualityResult(
        ids=[ex["id"] for ex in examples], values=values, status=status, judge=_public_identity(ident),
        prompt=prompt.id, scored=len(planned), judged_now=stats.judged, cached=stats.cached, errors=len(errors),
        usage=usage, cost=_cost(usage, cfg.judge), run_usage=run_usage, run_cost=_cost(run_usage, cfg.judge),
        scores={examples[p.index]["id"]: values[p.index] for p in planned})
    if planned and result.judged_now:
        spent = f"{_n(run_usage['prompt_tokens'])} prompt + {_n(run_usage['completion_tokens'])} completion tokens"
        cost = f", cost {_money(result.run_cost)}" if result.run_cost is not None else ""
        echo(f"quality: judged {_n(result.judged_now)} now ({spent}{cost}), {_n(result.cached)} from the cache {cache}")
    elif planned:
        echo(f"quality: all {_n(result.cached)} scores from the cache {cache}, no judge call made")
    if errors:
        kinds = Counter(errors)
        echo(f"quality: {_n(len(errors))} example(s) could not be scored ({kinds.get('parse_error', 0)} without a "
             f"score after the parse retries, {kinds.get('error', 0)} refused by the judge endpoint); they are "
             "dropped (low_quality), never kept unvetted. To ask again, delete their lines from the cache.")
    return result


# --------------------------------------------------------------------------- selection

def _aligned(examples: list[dict], result: QualityResult) -> tuple[list[float | None], list[str | None]]:
    """(score, status) of each example: by position when ``examples`` is the list scored, else by id."""
    if [ex["id"] for ex in examples] == result.ids:
        return result.values, result.status
    by_id: dict[str, tuple[float | None, str | None]] = {}
    ambiguous = set()
    for i, v, s in zip(result.ids, result.values, result.status):
        if i in by_id and by_id[i] != (v, s):
            ambiguous.add(i)
        by_id[i] = (v, s)
    bad = [ex["id"] for ex in examples if ex["id"] not in by_id or ex["id"] in ambiguous]
    if bad:
        raise ValueError(f"select() got {len(bad)} example(s) that score_examples() did not score unambiguously "
                         f"(first: {bad[0]!r}); pass the examples that were scored, or a subset of them")
    pairs = [by_id[ex["id"]] for ex in examples]
    return [v for v, _ in pairs], [s for _, s in pairs]


def _top_count(n: int, fraction: float) -> int:
    """ceil(fraction * n), without float noise (0.3 * 10 is 3, not 4)."""
    return math.ceil(round(n * fraction, 9))


def _bucket(score: float) -> str:
    """The histogram bin: the score rounded half up, clamped to 1-10."""
    return str(min(10, max(1, math.floor(score + 0.5))))


def select(examples: list[dict], result: QualityResult, cfg: QualityConfig) -> tuple[list[dict], dict]:
    """(kept examples, ``stats["quality"]``). Keeps ``score >= cfg.threshold``, or the best
    ``ceil(cfg.top_fraction * n)`` of each selected source (ties by id); unscored examples are
    dropped; other sources pass untouched. The kept examples are copies carrying their score
    under ``"quality"`` (None for untouched sources), in the order given."""
    values, status = _aligned(examples, result)
    take = _selected(cfg)
    chosen = [take(ex["source"]) for ex in examples]
    keep = [True] * len(examples)
    by_source: dict[str, list[int]] = {name: [] for name in (cfg.sources or [])}
    for i, ex in enumerate(examples):
        if chosen[i]:
            by_source.setdefault(ex["source"], []).append(i)
    for idxs in by_source.values():
        if cfg.threshold is not None:
            for i in idxs:
                keep[i] = values[i] is not None and values[i] >= cfg.threshold
        else:
            ranked = sorted((i for i in idxs if values[i] is not None),
                            key=lambda i: (-values[i], examples[i]["id"], i))
            best = set(ranked[:_top_count(len(idxs), cfg.top_fraction)])
            for i in idxs:
                keep[i] = i in best
    histogram = {}
    for name, idxs in by_source.items():
        counts = Counter(_bucket(values[i]) for i in idxs if values[i] is not None)
        histogram[name] = {str(s): counts.get(str(s), 0) for s in range(1, 11)}
    scored = sum(chosen)
    kept_scored = sum(1 for i in range(len(examples)) if chosen[i] and keep[i])
    stats = {
        "judge": result.judge, "prompt": result.prompt, "threshold": cfg.threshold, "top_fraction": cfg.top_fraction,
        "scored": scored, "judged_now": result.judged_now, "cached": result.cached,
        "kept": kept_scored, "dropped": scored - kept_scored,
        "errors": sum(1 for i in range(len(examples)) if chosen[i] and status[i] != "ok"),
        "histogram": histogram, "usage": dict(result.usage), "cost": result.cost,
        # prices are not hashed (a new price must not rebuild the data): the cost says which it used
        "prices": {"prompt_per_1k": cfg.judge.price_prompt_per_1k,
                   "completion_per_1k": cfg.judge.price_completion_per_1k},
    }
    kept = [{**ex, "quality": values[i]} for i, ex in enumerate(examples) if keep[i]]
    return kept, stats


def dropped_by_source(examples: list[dict], kept: list[dict]) -> dict[str, int]:
    """How many examples of each source `select` dropped (the ``low_quality`` drop reason)."""
    left = Counter(ex["source"] for ex in kept)
    before = Counter(ex["source"] for ex in examples)
    return {name: n - left.get(name, 0) for name, n in before.items() if n - left.get(name, 0)}


def describe(stats_quality: dict) -> str:
    """The line the build prints after filtering, from ``stats["quality"]``."""
    q = stats_quality
    rule = (f"below {float(q['threshold'])}" if q.get("threshold") is not None
            else f"outside the best {q['top_fraction'] * 100:g}% of each source")
    unscored = f" ({_n(q['errors'])} of them unscored)" if q.get("errors") else ""
    usage = q.get("usage") or {}
    tokens = f"{_n(usage.get('prompt_tokens', 0))} prompt"
    tokens += f" + {_n(usage['completion_tokens'])} completion tokens" if usage.get("completion_tokens") else " tokens"
    cost = f", cost {_money(q['cost'])}" if q.get("cost") is not None else ""
    return (f"quality: scored {_n(q['scored'])} ({_n(q['judged_now'])} now, {_n(q['cached'])} cached), "
            f"kept {_n(q['kept'])}, dropped {_n(q['dropped'])} {rule}{unscored}; {tokens}{cost}")
