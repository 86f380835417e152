"""Source formats: turn raw records into conversations (``{"id", "messages"}``).

`READERS` is the registry, one function per format name:

* ``alpaca``: ``instruction`` / ``input`` (optional) / ``output`` records
  (Dolly-15k-ja, HH-RLHF-49k-ja, Japanese Alpaca, llm-japanese-dataset);
* ``oasst``: a flat OpenAssistant message table (``message_id``, ``parent_id``,
  ``role`` prompter/assistant, ``text`` or ``text_ja``, ``lang``, ``rank``)
  rebuilt into threads;
* ``messages``: OpenAI ``messages`` (role/content) or ShareGPT ``conversations``
  (from/value) lists;
* ``fastchat-answers``: a FastChat question JSONL joined with answer JSONL files.

Messages use the team's roles: ``system``, ``user``, ``input``, ``assistant``.
Row-level filters (failed translation, language, ``where``) apply to every format.

An example may carry a ``group``: the examples that share text with each other and must
therefore land on the same side of the held-out split (`ja_instruct.data.mix.select_heldout`).
``oasst`` threads of one tree share the prompt and earlier turns (group: the root message id);
``fastchat-answers`` answers of several models to one question share the question (group: the
question id). Without one, an example is its own group.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from ja_instruct.config import resolve_path
from ja_instruct.data.config import SourceConfig
from ja_instruct.data.records import (Row, SourceStats, dumps_id, expand_answers, iter_rows,
                                      load_question_file)
from ja_instruct.errors import UserError

Example = dict  # {"id": str, "messages": [{"role": str, "content": str}, ...], "group": str (optional)}

# ShareGPT / OpenAI speaker names -> our roles.
ROLE_MAP = {
    "system": "system",
    "user": "user", "human": "user", "prompter": "user",
    "input": "input",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bot": "assistant", "model": "assistant",
}


def keep_row(src: SourceConfig, row: Row, stats: SourceStats) -> bool:
    """Record-level filters shared by all formats; a dropped row is counted by reason."""
    rec = row.rec
    if src.drop_failed_translation and str(rec.get("ng_translation", "")).strip() == "1":
        stats.drop("failed_translation")
        return False
    if src.lang is not None and isinstance(rec.get("lang"), str) and rec["lang"] not in src.lang:
        stats.drop("lang")
        return False
    for key, pattern in src.where.items():
        value = rec.get(key)
        if not isinstance(value, str) or re.search(pattern, value) is None:
            stats.drop("filtered")
            return False
    for key, pattern in src.exclude.items():
        value = rec.get(key)
        if isinstance(value, str) and re.search(pattern, value) is not None:
            stats.drop("filtered")
            return False
    return True


def _ends_with_response(messages: list[dict]) -> list[dict] | None:
    """Trim trailing non-assistant turns; None when no assistant turn is left."""
    while messages and messages[-1]["role"] != "assistant":
        messages = messages[:-1]
    return messages or None


def _row_id(row: Row) -> str:
    for key in ("id", "index", "question_id"):
        if row.rec.get(key) is not None:
            return dumps_id(row.rec[key])
    return str(row.index)


# --------------------------------------------------------------------------- alpaca

def read_alpaca(src: SourceConfig, stats: SourceStats, on_error: str) -> Iterator[Example]:
    """instruction / input / output -> user (+ input) + assistant."""
    hint = "Alpaca records need string fields 'instruction' and 'output' ('input' optional)."
    for row in iter_rows(src, stats, on_error):
        if not keep_row(src, row, stats):
            continue
        try:
            instruction = row.str_field("instruction", hint=hint)
            inp = row.str_field("input", required=False, hint=hint)
            output = row.str_field("output", hint=hint)
        except UserError as err:
            stats.bad_row(err, on_error)
            continue
        messages = [{"role": "user", "content": instruction}]
        if inp.strip():
            messages.append({"role": "input", "content": inp})
        messages.append({"role": "assistant", "content": output})
        yield {"id": _row_id(row), "messages": messages}


# --------------------------------------------------------------------------- messages

def _parse_turns(row: Row) -> list[dict]:
    rec = row.rec
    if "messages" in rec:
        key, role_key, text_key = "messages", "role", "content"
    elif "conversations" in rec:
        key, role_key, text_key = "conversations", "from", "value"
    else:
        raise row.error("missing field 'messages'", field="messages",
                        hint="Records need 'messages' (role/content) or 'conversations' (from/value).")
    turns = rec[key]
    if not isinstance(turns, list) or not turns:
        raise row.error(f"field '{key}' must be a non-empty list", field=key)
    out = []
    system = rec.get("system")
    if isinstance(system, str) and system.strip():
        out.append({"role": "system", "content": system})
    for i, t in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(t, dict):
            raise row.error(f"'{where}' must be an object, got {type(t).__name__}", field=where)
        speaker, text = t.get(role_key), t.get(text_key)
        if not isinstance(speaker, str):
            raise row.error(f"missing or non-string field '{where}.{role_key}'", field=f"{where}.{role_key}")
        if not isinstance(text, str):
            raise row.error(f"missing or non-string field '{where}.{text_key}'", field=f"{where}.{text_key}")
        role = ROLE_MAP.get(speaker.lower())
        if role is None:
            raise row.error(f"unknown role '{speaker}' in '{where}.{role_key}'", field=f"{where}.{role_key}",
                            hint=f"Use one of: {', '.join(sorted(ROLE_MAP))}.")
        if role == "system" and out:
            raise row.error(f"a system message may only come first ('{where}')", field=where)
        out.append({"role": role, "content": text})
    return out


def read_messages(src: SourceConfig, stats: SourceStats, on_error: str) -> Iterator[Example]:
    """OpenAI ``messages`` or ShareGPT ``conversations`` lists."""
    for row in iter_rows(src, stats, on_error):
        if not keep_row(src, row, stats):
            continue
        try:
            messages = _parse_turns(row)
        except UserError as err:
            stats.bad_row(err, on_error)
            continue
        trimmed = _ends_with_response(messages)
        if trimmed is None:
            stats.drop("no_response")
            continue
        yield {"id": _row_id(row), "messages": trimmed}


# --------------------------------------------------------------------------- oasst

def _rank(value: object) -> float:
    """OASST rank: 0 is best; missing / NaN ranks sort last."""
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return float(value)
    return math.inf


def read_oasst(src: SourceConfig, stats: SourceStats, on_error: str) -> Iterator[Example]:
    """Rebuild threads from a flat OASST message table.

    A message dropped by a filter (failed translation, language, deleted) cuts off
    its subtree; those descendants are counted as ``unreachable``. Threads end on
    an assistant message. Counts before threading are messages; after, threads.
    """
    hint = "OASST rows need 'message_id', 'parent_id', 'role' (prompter/assistant) and the text field."
    nodes: dict[str, dict] = {}
    order: list[str] = []
    removed: set[str] = set()
    for row in iter_rows(src, stats, on_error):
        try:
            mid = row.str_field("message_id", hint=hint)
            parent = row.rec.get("parent_id")
            if parent is not None and not isinstance(parent, str):
                raise row.error(f"field 'parent_id' must be a string or null, got {type(parent).__name__}",
                                field="parent_id")
            role = row.str_field("role", hint=hint)
            if role not in ("prompter", "assistant"):
                raise row.error(f"field 'role' must be 'prompter' or 'assistant', got {role!r}", field="role")
            text_field = src.text_field or ("text_ja" if row.rec.get("text_ja") is not None else "text")
            text = row.str_field(text_field, hint=hint)
        except UserError as err:
            stats.bad_row(err, on_error)
            continue
        if row.rec.get("deleted") is True:
            stats.drop("deleted")
            removed.add(mid)
            continue
        if not keep_row(src, row, stats):
            removed.add(mid)
            continue
        nodes[mid] = {"parent": parent or None, "role": role, "text": text,
                      "rank": _rank(row.rec.get("rank")), "children": []}
        order.append(mid)
    roots = []
    for mid in order:
        node = nodes[mid]
        if node["parent"] is None:
            if node["role"] == "prompter":  # a tree must start with a prompt
                roots.append(mid)
        elif node["parent"] in nodes:
            nodes[node["parent"]]["children"].append(mid)
    for root in roots:
        for path in _paths(nodes, root, src.thread_mode):
            messages = [{"role": "user" if nodes[m]["role"] == "prompter" else "assistant",
                         "content": nodes[m]["text"]} for m in path]
            trimmed = _ends_with_response(messages)
            if trimmed is None:
                stats.drop("no_response")
                continue
            # sibling threads share the root prompt and earlier answers: one split group per tree
            yield {"id": path[len(trimmed) - 1], "messages": trimmed, "group": root}
    # messages below a dropped one, orphans, and trees that start with an assistant message
    unreachable = len(nodes) - len(_reachable(nodes, roots))
    if unreachable:
        stats.drop("unreachable", unreachable)


def _reachable(nodes: dict[str, dict], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        m = stack.pop()
        if m not in seen:
            seen.add(m)
            stack.extend(nodes[m]["children"])
    return seen


def _paths(nodes: dict[str, dict], root: str, mode: str) -> Iterator[list[str]]:
    """Root-to-leaf paths: the best-ranked one, or all of them (iterative DFS)."""
    if mode == "best":
        path = [root]
        while nodes[path[-1]]["children"]:
            kids = nodes[path[-1]]["children"]
            path.append(min(kids, key=lambda m: nodes[m]["rank"]))  # stable: ties keep file order
        yield path
        return
    seen_trimmed: set[tuple] = set()
    stack = [[root]]
    while stack:
        path = stack.pop()
        kids = nodes[path[-1]]["children"]
        if kids:
            stack.extend(path + [k] for k in reversed(kids))
            continue
        # a leaf prompter trims back to an assistant prefix that may already have been yielded
        trimmed = list(path)
        while trimmed and nodes[trimmed[-1]]["role"] != "assistant":
            trimmed.pop()
        if tuple(trimmed) in seen_trimmed:
            continue
        seen_trimmed.add(tuple(trimmed))
        yield path


# --------------------------------------------------------------------------- fastchat answers

def read_fastchat_answers(src: SourceConfig, stats: SourceStats, on_error: str) -> Iterator[Example]:
    """Join FastChat questions (``path``) with answer files (``answers``).

    Turn k of the question becomes a user message and turn k of the answer's
    first choice the assistant reply, so two-turn MT-Bench questions become
    two-turn conversations. ``rows_read`` counts answer records.
    """
    questions = load_question_file(resolve_path(src.path), on_error, stats)
    hint = "FastChat answers need 'question_id', 'model_id' and 'choices': [{'turns': [...]}]."
    for file in expand_answers(src, None):
        for row in iter_rows(src, stats, on_error, path=str(file)):
            if not keep_row(src, row, stats):
                continue
            try:
                if "question_id" not in row.rec:
                    raise row.error("missing field 'question_id'", field="question_id", hint=hint)
                model = row.str_field("model_id", required=False, hint=hint) or Path(file).stem
                choices = row.rec.get("choices")
                if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                    raise row.error("field 'choices' must be a non-empty list of objects", field="choices", hint=hint)
                turns = choices[0].get("turns")
                if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                    raise row.error("field 'choices[0].turns' must be a list of strings",
                                    field="choices[0].turns", hint=hint)
            except UserError as err:
                stats.bad_row(err, on_error)
                continue
            if src.models is not None and model not in src.models:
                stats.drop("filtered")
                continue
            qid = str(row.rec["question_id"])
            if qid not in questions:
                stats.drop("unknown_question")
                continue
            messages = []
            for q, a in zip(questions[qid], turns):
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if not messages:
                stats.drop("no_response")
                continue
            # every model's answer to a question shares its turns: one split group per question
            yield {"id": f"{model}:{qid}", "messages": messages, "group": qid}


READERS: dict[str, Callable[[SourceConfig, SourceStats, str], Iterator[Example]]] = {
    "alpaca": read_alpaca,
    "oasst": read_oasst,
    "messages": read_messages,
    "fastchat-answers": read_fastchat_answers,
}


def read_source(src: SourceConfig, stats: SourceStats, on_error: str) -> list[Example]:
    """All conversations of one source: ids prefixed with the source name, and every example's
    held-out split ``group`` set (prefixed the same way; its own id when the format gives none)."""
    reader = READERS.get(src.format)
    if reader is None:  # the config's Literal already guards this; keep the message for API users
        raise UserError(f"unknown format '{src.format}'", hint=f"Valid formats: {', '.join(READERS)}.")
    out = []
    # a bar per source: hub datasets can take minutes (shown on terminals only)
    for ex in tqdm(reader(src, stats, on_error), desc=f"reading {src.name}", unit=" conv",
                   file=sys.stderr, disable=None, leave=False):
        ex["id"] = f"{src.name}:{ex['id']}"
        ex["group"] = f"{src.name}:{ex['group']}" if ex.get("group") is not None else ex["id"]
        out.append(ex)
    stats.examples = len(out)
    return out
