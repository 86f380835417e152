"""Tokenise conversations for SFT: ids, and labels that train only the responses.

The rendered conversation (`ja_instruct.data.templates`) is tokenised **once, as a
whole**, so the ids are exactly what the model sees at inference: tokenising the
prompt and the response separately and concatenating would differ wherever a
token crosses the prompt/response boundary (``:\\n`` + the response's first
character often merge into one BPE token). Labels then come from character
offsets: a token is trained iff its character span overlaps a response (or the
EOS after it); everything else gets -100. A token straddling the boundary is
trained, since the model has to produce it.

EOS after each assistant turn is written into the text as the tokenizer's eos
string, which fast and slow tokenizers alike turn into the single EOS id; this is
checked. BOS: with our templates (``plamo``, ``llmjp-alpaca``), special tokens the
tokenizer puts before a text (``add_special_tokens``: BOS for Llama/PLaMo-style
tokenizers) are added once in front, unless the text already starts with them;
special tokens it would append at the end are not (our EOS is explicit). With the
tokenizer's own template nothing is added, as ``apply_chat_template(tokenize=True)``
and vLLM's chat API do (such templates write their BOS themselves). `encode_prompt`
applies the same rule to generation prompts.

A message whose content contains a special-token string (``</s>``) would turn into
control tokens; such conversations are dropped and counted.

Over-long conversations are dropped by default in training (``train.overlong: drop``): a
truncated answer has no EOS, so training on it teaches the model not to stop.
`describe_token_stats` says what happened in one line: kept whole, truncated, dropped and why.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

from ja_instruct.data.templates import Template, TokenizerTemplate, adds_bos, get_template
from ja_instruct.errors import UserError

IGNORE_INDEX = -100
OVERLONG_POLICIES = ("truncate", "drop")
STATUSES = ("kept", "truncated", "dropped_overlong", "dropped_no_response", "dropped_special_tokens")


class _Encoder:
    """What tokenisation needs to know about a tokenizer, computed once."""

    def __init__(self, tokenizer: Any) -> None:
        if getattr(tokenizer, "eos_token", None) is None or tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no EOS token, so responses cannot be terminated",
                            hint="Set tokenizer.eos_token (e.g. in tokenizer_config.json).")
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.prefix_ids = adds_bos(tokenizer)
        self.prefix_text = "".join(tokenizer.convert_ids_to_tokens(self.prefix_ids))
        specials = sorted({t for t in getattr(tokenizer, "all_special_tokens", []) if t}, key=len, reverse=True)
        self.special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
        self.is_fast = bool(getattr(tokenizer, "is_fast", False))

    def prefix_for(self, text: str) -> list[int]:
        """BOS (or whatever the tokenizer adds in front), unless the text already starts with it."""
        if self.prefix_ids and self.prefix_text and text.startswith(self.prefix_text):
            return []
        return list(self.prefix_ids)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(tokenizer: Any, text: str, template: str | Template | None = None) -> list[int]:
    """Token ids of a prompt rendered with ``template`` exactly as training tokenised it
    (the BOS rule of the module doc; ``template=None`` means one of ours)."""
    enc = _Encoder(tokenizer)
    prefix = [] if isinstance(template, TokenizerTemplate) or template == "tokenizer" else enc.prefix_for(text)
    return prefix + enc.encode(text)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def trained_mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """True for each token whose character span overlaps one of ``spans`` (both sorted)."""
    mask, j = [], 0
    for ts, te in offsets:
        while j < len(spans) and ts >= spans[j][1]:
            j += 1
        mask.append(j < len(spans) and te > spans[j][0] and te > ts)
    return mask


def trained_mask_from_prefixes(enc: _Encoder, text: str, ids: Sequence[int],
                               spans: Sequence[tuple[int, int]]) -> list[bool]:
    """The same mask for slow tokenizers (no offsets): tokenise the text up to each span
    boundary; tokens the prefix reproduces lie before it, the first differing one straddles it."""
    mask = [False] * len(ids)
    for s, e in spans:
        a = _lcp(enc.encode(text[:s]), ids)
        upto = enc.encode(text[:e])
        b = _lcp(upto, ids)
        if b < len(upto):
            b += 1  # the token straddling the span's end overlaps it
        for i in range(a, min(b, len(ids))):
            mask[i] = True
    return mask


def encode_conversation(tokenizer: Any, template: str | Template, messages: Sequence[dict],
                        max_length: int | None, overlong: str = "truncate",
                        _enc: _Encoder | None = None) -> tuple[dict | None, str]:
    """`tokenize_conversation`, plus what happened: one of `STATUSES`."""
    if overlong not in OVERLONG_POLICIES:
        raise UserError(f"overlong must be one of {', '.join(OVERLONG_POLICIES)}, got {overlong!r}",
                        field="overlong")
    if max_length is not None and max_length < 1:
        raise UserError(f"max_length must be positive, got {max_length}", field="max_length")
    enc = _enc or _Encoder(tokenizer)
    template = get_template(template, tokenizer)
    if not any(m.get("role") == "assistant" for m in messages):
        return None, "dropped_no_response"
    if enc.special_re and any(enc.special_re.search(m.get("content") or "") for m in messages):
        return None, "dropped_special_tokens"

    rendered = template.render_with_spans(messages, add_generation_prompt=False, eos_token=tokenizer.eos_token)
    text, spans = rendered.text, rendered.spans
    prefix = [] if isinstance(template, TokenizerTemplate) else enc.prefix_for(text)
    if enc.is_fast:
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = out["input_ids"], out["offset_mapping"]
        mask = trained_mask_from_offsets(offsets, spans)
        for pos in rendered.eos_starts:  # each EOS string must have become exactly the EOS token
            i = bisect.bisect_left(offsets, pos, key=lambda o: o[0])
            if i == len(ids) or ids[i] != enc.eos_id or tuple(offsets[i]) != (pos, pos + len(tokenizer.eos_token)):
                raise UserError(f"the tokenizer does not turn its eos string {tokenizer.eos_token!r} into the EOS id",
                                hint="Mark the EOS token as special in the tokenizer (added_tokens).")
    else:
        ids = enc.encode(text)
        mask = trained_mask_from_prefixes(enc, text, ids, spans)
        if ids.count(enc.eos_id) < len(rendered.eos_starts):
            raise UserError(f"the tokenizer does not turn its eos string {tokenizer.eos_token!r} into the EOS id",
                            hint="Mark the EOS token as special in the tokenizer.")

    input_ids = prefix + ids
    labels = [IGNORE_INDEX] * len(prefix) + [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    status = "kept"
    if max_length is not None and len(input_ids) > max_length:
        if overlong == "drop":
            return None, "dropped_overlong"
        # Keep the start: the prompt and as much of the (first) response as fits.
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(lab == IGNORE_INDEX for lab in labels):
            return None, "dropped_overlong"
        status = "truncated"
    return {"input_ids": input_ids, "labels": labels}, status


def tokenize_conversation(tokenizer: Any, template: str | Template, messages: Sequence[dict],
                          max_length: int | None, overlong: str = "truncate") -> dict | None:
    """Tokenise one conversation for SFT.

    Args:
        tokenizer: a HF tokenizer (fast: offsets; slow: prefix re-tokenisation).
        template: a `Template` or its name (``"plamo"``, ``"llmjp-alpaca"``, ``"tokenizer"``).
        messages: ``[{"role", "content"}, ...]`` with at least one assistant message.
        max_length: most tokens kept (None: no limit).
        overlong: ``"truncate"`` keeps the first ``max_length`` tokens (the result must
            still train at least one token, else it is dropped); ``"drop"`` drops it.

    Returns:
        ``{"input_ids", "labels"}`` (labels -100 on prompt tokens; every response and the
        EOS after it trained), or None when dropped (no response, over-length, or a
        special-token string inside a message). The ids equal tokenising the rendered
        text at once (after the tokenizer's BOS with our templates, see the module doc).
    """
    return encode_conversation(tokenizer, template, messages, max_length, overlong)[0]


def tokenize_dataset(dataset: Any, tokenizer: Any, template: str | Template, max_length: int | None,
                     overlong: str = "drop") -> tuple[Any, dict[str, int]]:
    """Tokenise a dataset with a ``messages`` column (the data stage's output).

    Returns:
        ``(Dataset with input_ids, labels, num_supervised columns, stats)``; stats counts
        ``total, kept, truncated, dropped_overlong, dropped_no_response,
        dropped_special_tokens, supervised_tokens, tokens``. ``kept`` is every example in the
        result, truncated ones INCLUDED (whole ones: ``kept - truncated``); say it to people with
        `describe_token_stats`. Token counts are over kept examples, after truncation.
    """
    import datasets
    from tqdm.auto import tqdm

    if "messages" not in dataset.column_names:
        raise UserError("the dataset has no 'messages' column",
                        hint="Build it with `ja-instruct data build` (columns id, source, messages, ...).")
    enc = _Encoder(tokenizer)
    template = get_template(template, tokenizer)
    stats = {k: 0 for k in ("total", "kept", "truncated", "dropped_overlong", "dropped_no_response",
                            "dropped_special_tokens", "supervised_tokens", "tokens")}
    cols: dict[str, list] = {"input_ids": [], "labels": [], "num_supervised": []}
    n = len(dataset)
    with tqdm(total=n, desc=f"tokenise ({template.name})", unit="ex", disable=n < 2000) as bar:
        for batch in dataset.select_columns(["messages"]).iter(batch_size=1000):
            for messages in batch["messages"]:
                out, status = encode_conversation(tokenizer, template, messages, max_length, overlong, _enc=enc)
                stats["total"] += 1
                if out is None:
                    stats[status] += 1
                    continue
                stats["kept"] += 1
                if status == "truncated":
                    stats["truncated"] += 1
                n_sup = sum(lab != IGNORE_INDEX for lab in out["labels"])
                stats["supervised_tokens"] += n_sup
                stats["tokens"] += len(out["input_ids"])
                cols["input_ids"].append(out["input_ids"])
                cols["labels"].append(out["labels"])
                cols["num_supervised"].append(n_sup)
            bar.update(len(batch["messages"]))
    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "labels": datasets.Sequence(datasets.Value("int32")),
                                  "num_supervised": datasets.Value("int32")})
    return datasets.Dataset.from_dict(cols, features=features), stats


def drop_reasons(max_length: int | None, overlong: str = "drop") -> dict[str, str]:
    """Why an example with each dropped status of `STATUSES` was left out, in words."""
    limit = f"{max_length} tokens" if max_length is not None else "the length limit"
    return {
        # with `truncate` an example is only dropped when no answer token is left within the limit
        "dropped_overlong": f"prompt alone fills {limit}" if overlong == "truncate" else f"longer than {limit}",
        "dropped_no_response": "no assistant turn",
        "dropped_special_tokens": "special-token string in a message",
    }


def example_counts(stats: dict, max_length: int | None, overlong: str = "drop") -> dict:
    """The examples of a `tokenize_dataset` run with nothing implied: ``{"total", "kept_whole",
    "truncated", "dropped": {reason in words: n}}`` (for manifests and model cards)."""
    truncated = stats.get("truncated", 0)
    return {"total": stats.get("total", 0), "kept_whole": stats.get("kept", 0) - truncated, "truncated": truncated,
            "dropped": {why: stats[status] for status, why in drop_reasons(max_length, overlong).items()
                        if stats.get(status)}}


def describe_token_stats(stats: dict, max_length: int | None, overlong: str = "drop") -> str:
    """One unambiguous line about a `tokenize_dataset` run, e.g.
    ``tokenise: 306 kept, 49 dropped (longer than 256 tokens)`` or
    ``tokenise: 355 kept (296 of them truncated to 256 tokens), 2 dropped (no assistant turn)``.

    Truncated examples are always named: ``kept`` never silently includes them."""
    kept, truncated = stats.get("kept", 0), stats.get("truncated", 0)
    head = f"tokenise: {kept} kept"
    if truncated:
        head += f" ({truncated} of them truncated to {max_length} tokens)"
    parts = [head]
    for status, why in drop_reasons(max_length, overlong).items():
        if stats.get(status):
            parts.append(f"{stats[status]} dropped ({why})")
    return ", ".join(parts)
