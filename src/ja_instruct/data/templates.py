"""Prompt templates: conversation messages -> the exact text a model is trained on.

A conversation is a list of ``{"role", "content"}`` messages (roles ``system``,
``user``, ``input``, ``assistant``; see `ja_instruct.data.sources`). Three templates:

* ``"plamo"``: the PLaMo-13B-Instruct prompt, built exactly as its model card does::

      sep = "\\n\\n### "
      prompt = [header1, header2]          # no newline between the two header sentences
      for msg in messages:
          prompt.append(sep + roles[msg.role] + ":\\n" + msg.content)
      prompt.append(sep + "応答" + ":\\n")  # generation prompt

  with roles user -> 指示, input -> 入力, assistant -> 応答.
* ``"llmjp-alpaca"``: the llm-jp Japanese Alpaca prompt, same layout, header
  ``以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。``.
* ``"tokenizer"``: the tokenizer's own chat template (``apply_chat_template``), with
  ``input`` messages merged into the preceding user message as ``user + "\\n\\n" + input``.

EOS in the text. Every assistant turn is followed by the tokenizer's EOS, which is
trained, so the model learns to stop; a multi-turn generation prompt carries the
same EOS after earlier assistant turns, exactly as in training. `Template.render`
writes EOS as the tokenizer's eos *string* (``</s>``): ``render(..., eos_token=...)``
takes it explicitly, and a template obtained with ``get_template(name, tokenizer)``
has it bound already (``eos_token=None`` renders no EOS: for display only).
Tokenisers turn that string into the single EOS id (special tokens are matched
as a whole), see `ja_instruct.data.tokenize`.

Every template also has a Jinja ``chat_template`` that renders identically in
``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)``
(transformers passes ``eos_token`` to it); `install_chat_template` writes it into a
tokenizer so exported models and vLLM's chat API format prompts exactly as training did.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ja_instruct.errors import UserError

ROLES = ("system", "user", "input", "assistant")

# The card's header is two sentences joined with no separator.
PLAMO_HEADER = "以下はタスクを説明する指示で、文脈を説明した入力とペアになっています。" + "要求を適切に補完するよう応答を書いてください。"
# llm-jp/llm-jp-sft dataset.py builds f"{system_message}\n\n### 指示:\n{user}\n\n### 応答:\n" + response
# (tokenised with the tokenizer's EOS), later turns "\n\n### 指示:\n{user}\n\n### 応答:\n{response}";
# its inference.py "alpaca" prompt is "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。
# \n\n### 指示:\n{}\n\n### 応答:\n". We follow that, adding "\n\n### 入力:\n{input}" for Alpaca inputs.
LLMJP_ALPACA_HEADER = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"

_UNSET: Any = object()  # "use the eos_token bound to the template"


def validate_messages(messages: Sequence[dict]) -> list[dict]:
    """Check a conversation's shape; return it as plain ``{"role", "content"}`` dicts.

    Rules: at least one message; roles in `ROLES`; ``system`` only first; ``input``
    directly after a ``user`` message; contents are strings.
    """
    if not messages:
        raise UserError("conversation has no messages", hint="Each example needs at least one user message.")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UserError(f"message {i} has unknown role {role!r}", hint=f"Roles: {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise UserError(f"message {i} ({role}) has no text content", hint="'content' must be a string.")
        if role == "system" and i != 0:
            raise UserError(f"message {i}: a system message must come first")
        if role == "input" and (i == 0 or messages[i - 1].get("role") != "user"):
            raise UserError(f"message {i}: an input message must directly follow a user message")
        out.append({"role": role, "content": content})
    return out


def merge_input_messages(messages: Sequence[dict]) -> list[dict]:
    """Merge each ``input`` message into the preceding user message (``user + "\\n\\n" + input``),
    for templates that have no input role."""
    out: list[dict] = []
    for m in validate_messages(messages):
        if m["role"] == "input":
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(m)
    return out


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation and where its trained text lies.

    Attributes:
        text: the full text.
        spans: ``(start, end)`` character spans to train on (each assistant response
            plus the end-of-turn/EOS text after it), in order, non-overlapping.
        eos_starts: character offsets where the template inserted the EOS string
            (tokenisation checks each became the single EOS id).
    """

    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)
    eos_starts: list[int] = field(default_factory=list)


class Template:
    """A prompt template. Subclasses implement `render_with_spans`."""

    name: str
    #: Jinja chat template rendering exactly like `render` (None if there is none).
    chat_template: str | None = None

    def render_with_spans(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                          eos_token: str | None = _UNSET) -> Rendered:
        raise NotImplementedError

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False,
               eos_token: str | None = _UNSET) -> str:
        """The conversation as text; with ``add_generation_prompt`` (the messages end with a
        user/input turn) the prompt for generation, ending in the response header.

        ``eos_token``: the string written after each assistant turn; defaults to the one
        bound by ``get_template(name, tokenizer)`` (None: no EOS).
        """
        return self.render_with_spans(messages, add_generation_prompt, eos_token).text


def _jinja_str(s: str) -> str:
    """A Python string as a single-quoted Jinja string literal (newlines as \\n)."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


@dataclass(frozen=True)
class AlpacaTemplate(Template):
    """The ``### 指示:`` / ``### 入力:`` / ``### 応答:`` family (PLaMo card, llm-jp Alpaca).

    Text = (system content if the first message is ``system``, else ``header``), then for
    each message ``"\\n\\n### " + role name + ":\\n" + content`` (+ EOS after each assistant
    message), then, for generation, ``"\\n\\n### 応答:\\n"``.
    """

    name: str
    header: str
    eos_token: str | None = None
    role_names: tuple[tuple[str, str], ...] = (("user", "指示"), ("input", "入力"), ("assistant", "応答"))
    sep: str = "\n\n### "

    def bind(self, tokenizer: Any) -> "AlpacaTemplate":
        """This template with the tokenizer's EOS string as the default ``eos_token``."""
        return dataclasses.replace(self, eos_token=getattr(tokenizer, "eos_token", None))

    def render_with_spans(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                          eos_token: str | None = _UNSET) -> Rendered:
        eos = self.eos_token if eos_token is _UNSET else eos_token
        msgs = validate_messages(messages)
        roles = dict(self.role_names)
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        eos_starts: list[int] = []
        pos = 0

        def emit(s: str) -> int:
            nonlocal pos
            parts.append(s)
            pos += len(s)
            return pos - len(s)

        if msgs[0]["role"] == "system":  # a system message replaces the header
            emit(msgs[0]["content"])
            msgs = msgs[1:]
        else:
            emit(self.header)
        for m in msgs:
            emit(self.sep + roles[m["role"]] + ":\n")
            start = emit(m["content"])
            if m["role"] == "assistant":
                if eos:
                    eos_starts.append(emit(eos))
                spans.append((start, pos))
        if add_generation_prompt:
            emit(self.sep + roles["assistant"] + ":\n")
        return Rendered("".join(parts), spans, eos_starts)

    @property
    def chat_template(self) -> str:  # type: ignore[override]
        """The Jinja equivalent of `render` (``eos_token`` comes from the tokenizer).

        Assistant turns sit in ``{% generation %}`` blocks so transformers'
        ``return_assistant_tokens_mask`` (TRL's assistant-only loss) works too.
        """
        roles = ", ".join(f"{_jinja_str(k)}: {_jinja_str(v)}" for k, v in self.role_names)
        sep, gen = _jinja_str(self.sep), _jinja_str(self.sep + dict(self.role_names)["assistant"] + ":\n")
        return (
            f"{{#- ja-instruct prompt template '{self.name}' -#}}\n"
            f"{{%- set roles = {{{roles}}} -%}}\n"
            "{%- if messages[0]['role'] == 'system' -%}\n"
            "{{- messages[0]['content'] -}}\n"
            "{%- set loop_messages = messages[1:] -%}\n"
            "{%- else -%}\n"
            f"{{{{- {_jinja_str(self.header)} -}}}}\n"
            "{%- set loop_messages = messages -%}\n"
            "{%- endif -%}\n"
            "{%- for message in loop_messages -%}\n"
            "{%- if message['role'] not in roles -%}\n"
            "{{- raise_exception('unknown role ' + message['role'] + ' (a system message must come first)') -}}\n"
            "{%- endif -%}\n"
            f"{{{{- {sep} + roles[message['role']] + ':\\n' -}}}}\n"
            "{%- if message['role'] == 'assistant' -%}\n"
            "{%- generation -%}{{- message['content'] -}}{%- if eos_token -%}{{- eos_token -}}{%- endif -%}"
            "{%- endgeneration -%}\n"
            "{%- else -%}\n"
            "{{- message['content'] -}}\n"
            "{%- endif -%}\n"
            "{%- endfor -%}\n"
            f"{{%- if add_generation_prompt -%}}{{{{- {gen} -}}}}{{%- endif -%}}\n"
        )


# Private-use code points: never produced by templates, so a placeholder is found unambiguously.
_PH = "\ue000{}\ue001"
_PH_RE = re.compile("\ue000(\\d+)\ue001")


class TokenizerTemplate(Template):
    """The tokenizer's own chat template; ``input`` merged into the user message.

    Trained spans are found by rendering the conversation with placeholder contents,
    so a response that also appears in the prompt is never mistaken for it. After each
    response, an end-of-turn special token that the template writes right after it
    (``<|im_end|>``, ``</s>``, ``<|eot_id|>``...) is trained too; if the template
    writes none after the final response, the tokenizer's EOS is appended there.
    """

    name = "tokenizer"

    def __init__(self, tokenizer: Any) -> None:
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise UserError("template 'tokenizer' needs a tokenizer with a chat template, and this one has none",
                            hint="Use template 'plamo' or 'llmjp-alpaca' (base models have no chat template).")
        self.tokenizer = tokenizer
        self.chat_template = template
        self.eos_token = getattr(tokenizer, "eos_token", None)
        # Longest first, so "<|im_end|>" wins over a shorter token that prefixes it.
        self._end_tokens = sorted({t for t in getattr(tokenizer, "all_special_tokens", []) if t}, key=len,
                                  reverse=True)

    def _apply(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False,
               eos_token: str | None = _UNSET) -> str:
        return self._apply(merge_input_messages(messages), add_generation_prompt)

    def render_with_spans(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                          eos_token: str | None = _UNSET) -> Rendered:
        msgs = merge_input_messages(messages)
        text = self._apply(msgs, add_generation_prompt)
        skeleton = self._apply([{"role": m["role"], "content": _PH.format(i)} for i, m in enumerate(msgs)],
                               add_generation_prompt)
        found = [int(x) for x in _PH_RE.findall(skeleton)]
        if found != list(range(len(msgs))):
            # The template changes or drops contents (trims, rewrites): locate them by search.
            return self._spans_by_search(text, msgs, add_generation_prompt)
        # Rebuild the text from the skeleton, noting where each assistant content lands.
        out, spans, pos, last = [], [], 0, 0
        for match in _PH_RE.finditer(skeleton):
            out.append(skeleton[last:match.start()])
            pos += match.start() - last
            m = msgs[int(match.group(1))]
            out.append(m["content"])
            if m["role"] == "assistant":
                spans.append((pos, pos + len(m["content"])))
            pos += len(m["content"])
            last = match.end()
        out.append(skeleton[last:])
        rebuilt = "".join(out)
        if rebuilt != text:  # content-dependent template logic
            return self._spans_by_search(text, msgs, add_generation_prompt)
        return self._finish(text, spans, msgs, add_generation_prompt)

    def _spans_by_search(self, text: str, msgs: list[dict], add_generation_prompt: bool) -> Rendered:
        spans, cursor = [], 0
        for i, m in enumerate(msgs):
            content = m["content"]
            at = text.find(content, cursor)
            if at < 0 and content.strip():
                content = content.strip()
                at = text.find(content, cursor)
            if at < 0:
                raise UserError(f"cannot find message {i} ({m['role']}) in the tokenizer's chat template output",
                                hint="This chat template rewrites messages; use template 'plamo' or 'llmjp-alpaca'.")
            if m["role"] == "assistant":
                spans.append((at, at + len(content)))
            cursor = at + len(content)
        return self._finish(text, spans, msgs, add_generation_prompt)

    def _finish(self, text: str, spans: list[tuple[int, int]], msgs: list[dict],
                add_generation_prompt: bool) -> Rendered:
        """Extend each response span over the end-of-turn token that follows it."""
        out = []
        for s, e in spans:
            end_tok = next((t for t in self._end_tokens if text.startswith(t, e)), None)
            out.append((s, e + len(end_tok)) if end_tok else (s, e))
        eos_starts: list[int] = []
        if (out and msgs[-1]["role"] == "assistant" and not add_generation_prompt and out[-1][1] == spans[-1][1]
                and self.eos_token and text[spans[-1][1]:].strip() == ""):
            # The template ends the final response with nothing: append EOS so the model learns to stop.
            e = spans[-1][1]
            text = text[:e] + self.eos_token + text[e:]
            eos_starts.append(e)
            out[-1] = (out[-1][0], e + len(self.eos_token))
        return Rendered(text, out, eos_starts)


def _plamo(tokenizer: Any = None) -> Template:
    t = AlpacaTemplate(name="plamo", header=PLAMO_HEADER)
    return t.bind(tokenizer) if tokenizer is not None else t


def _llmjp_alpaca(tokenizer: Any = None) -> Template:
    t = AlpacaTemplate(name="llmjp-alpaca", header=LLMJP_ALPACA_HEADER)
    return t.bind(tokenizer) if tokenizer is not None else t


def _from_tokenizer(tokenizer: Any = None) -> Template:
    if tokenizer is None:
        raise UserError("template 'tokenizer' needs the tokenizer", hint="Call get_template('tokenizer', tokenizer).")
    return TokenizerTemplate(tokenizer)


#: Registry: template name -> builder taking an optional tokenizer.
TEMPLATES: dict[str, Callable[[Any], Template]] = {
    "plamo": _plamo,
    "llmjp-alpaca": _llmjp_alpaca,
    "tokenizer": _from_tokenizer,
}


def get_template(name: str | Template, tokenizer: Any = None) -> Template:
    """The template called ``name`` (a `Template` is returned as is).

    With ``tokenizer``, the template's default ``eos_token`` is the tokenizer's, so
    ``render`` gives exactly the training text (``"tokenizer"`` requires it).
    """
    if isinstance(name, Template):
        return name
    if name not in TEMPLATES:
        raise UserError(f"unknown prompt template '{name}'", field="template",
                        hint=f"Valid templates: {', '.join(TEMPLATES)}.")
    return TEMPLATES[name](tokenizer)


def adds_bos(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text with ``add_special_tokens=True`` (e.g. [BOS]), often []."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k:k + len(plain)] == plain:
            return list(with_special[:k])
    return []


def install_chat_template(tokenizer: Any, template: str | Template) -> str | None:
    """Set ``tokenizer.chat_template`` to the template's Jinja (so ``save_pretrained`` exports it).

    If the tokenizer puts BOS before every text, the installed template starts with
    ``{{ bos_token }}``: ``apply_chat_template(tokenize=True)`` and vLLM's chat API
    tokenise with ``add_special_tokens=False``, and then produce the same ids as
    training. The ``"tokenizer"`` template leaves the tokenizer as it is. Returns the
    installed template.
    """
    template = get_template(template, tokenizer)
    if isinstance(template, TokenizerTemplate):
        return template.chat_template
    jinja = template.chat_template
    prefix = adds_bos(tokenizer)
    if prefix and getattr(tokenizer, "bos_token", None) and prefix == [tokenizer.bos_token_id]:
        jinja = "{{- bos_token -}}\n" + jinja
    tokenizer.chat_template = jinja
    return jinja
