"""Judge prompts: our own versioned YAML files, and FastChat's ``judge_prompts.jsonl``.

Our files live in ``ja_instruct/judge/prompts/<name>.yaml`` with exactly these keys
(unknown keys are errors)::

    name, version, kind (single|pairwise), description, system,
    template (jinja2), output_format (rating|verdict|verdict123), score_prefix, scale

``scale`` ([lo, hi], default [1, 10]) is the range of a rating prompt's grades: a rating
outside it is a parse error (retried), the hf judge weighs the grades lo..hi, the language
guard's floor is ``lo``, and every judgment records it (summaries never average across scales).

A *family* (``single-ja``, ``pair-ja``) has variants picked per item: ``<family>-ref``
for reference-guided questions and ``<family>-multi`` for turns after the first.
Templates see ``question``, ``answer`` (single) / ``answer_a``, ``answer_b`` (pairwise),
``reference`` (None when not reference-guided), ``eval_aspect`` (the item's own grading
aspect, ELYZA-tasks-100's; None for other sets) and ``turns`` (a list of dicts with the
same keys, one per turn so far). The FastChat variable names (``question_1``,
``answer_a_2``, ``ref_answer_1``...) are available too, so a FastChat file renders
with ``str.format`` from the same context.

``score_prefix`` is where the judge's answer puts the score (``評価：[[``): the local
``hf`` judge ends its prompt there and reads the score tokens' probabilities.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ValidationError, field_validator

from ja_instruct.config import StrictModel, UniqueKeyLoader, validation_to_user_error
from ja_instruct.errors import UserError

PROMPTS_DIR = Path(__file__).parent / "prompts"
ROLES = ("single", "single-ref", "single-multi", "single-ref-multi",
         "pair", "pair-ref", "pair-multi", "pair-ref-multi")
FASTCHAT_DEFAULT_NAMES = {
    "single": "single-v1", "single-ref": "single-math-v1",
    "single-multi": "single-v1-multi-turn", "single-ref-multi": "single-math-v1-multi-turn",
    "pair": "pair-v2", "pair-ref": "pair-math-v1",
    "pair-multi": "pair-v2-multi-turn", "pair-ref-multi": "pair-math-v1-multi-turn",
}
DEFAULT_SCALE = (1, 10)
# Our prompt family for questions that carry their own grading aspect (ELYZA-tasks-100): picked
# for them automatically when judge.prompt and judge.judge_prompts are unset.
ASPECT_FAMILY = "single-ja-elyza"
# FastChat's output_format field -> (our parser, where the score goes for the hf judge)
FASTCHAT_FORMATS = {"[[rating]]": ("rating", "Rating: [["), "[[評価]]": ("rating", "評価：[["),
                    "[[A]]": ("verdict", "[["), "last": ("verdict123", "")}
FASTCHAT_KEYS = {"name", "type", "system_prompt", "prompt_template", "description", "category", "output_format"}


class PromptFile(StrictModel):
    """One of our prompt files (strict: unknown keys are errors)."""

    name: str
    """Prompt name (the file stem)."""
    version: int
    """A label for people (shown in judgments and the report as `name@version`); bump it when the
    wording changes. The cache key does not rely on it: it hashes the rendered text itself."""
    kind: Literal["single", "pairwise"]
    """Single-answer grading or pairwise comparison."""
    description: str = ""
    """What the prompt is for."""
    system: str
    """System message."""
    template: str
    """User message, a jinja2 template."""
    output_format: Literal["rating", "verdict", "verdict123"]
    """How the judge's answer is parsed (see `ja_instruct.judge.parse`)."""
    score_prefix: str
    """Text right before the score in the judge's answer (the hf judge's prompt ends here)."""
    scale: tuple[int, int] = DEFAULT_SCALE
    """[lowest, highest] grade of a rating prompt (ELYZA-tasks-100: [1, 5]); a rating outside it
    is a parse error. Recorded on every judgment; scores on different scales are never averaged."""

    @field_validator("scale")
    @classmethod
    def _scale_order(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] >= value[1]:
            raise ValueError(f"scale must be [lowest, highest] with lowest < highest (got {list(value)})")
        return value


@dataclass(frozen=True)
class JudgePrompt:
    """A loaded prompt, ready to render."""

    name: str
    version: str
    kind: str  # "single" | "pairwise"
    system: str
    template: str
    output_format: str
    score_prefix: str
    engine: str  # "jinja" (ours) | "format" (FastChat)
    scale: tuple[int, int] = DEFAULT_SCALE  # grades of a rating prompt (FastChat's are 1-10)

    @property
    def id(self) -> str:
        """``name@version``: stored in every judgment (the cache key hashes the rendered text)."""
        return f"{self.name}@{self.version}"

    def render(self, ctx: dict) -> str:
        """The user message for one item (``ctx`` from `build_context`)."""
        if self.engine == "format":
            try:
                return self.template.format(**ctx)
            except KeyError as e:
                raise UserError(f"prompt '{self.name}' uses {{{e.args[0]}}}, which this item lacks",
                                hint="Pick a prompt of the right kind in judge_prompt_names.") from None
        return _compiled(self.template).render(**ctx).strip() + "\n"


@functools.lru_cache(maxsize=64)
def _compiled(template: str):
    """A jinja2 template compiled once per text (StrictUndefined: a missing variable is an error)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    return env.from_string(template)


def build_context(questions: list[str], answers: list[str] | None = None, answers_b: list[str] | None = None,
                  references: list[str] | None = None, eval_aspect: str | None = None) -> dict:
    """Template variables for a turn: lists hold every turn so far (the last is judged);
    ``eval_aspect`` is the item's own grading aspect (the same for every turn)."""
    turns = []
    for i, q in enumerate(questions):
        t = {"question": q, "reference": references[i] if references and i < len(references) else None}
        if answers_b is None:
            t["answer"] = answers[i] if answers else ""
        else:
            t["answer_a"], t["answer_b"] = answers[i], answers_b[i]
        turns.append(t)
    ctx = dict(turns[-1], turns=turns, eval_aspect=eval_aspect)
    for i, t in enumerate(turns, 1):  # FastChat's names
        ctx[f"question_{i}"] = t["question"]
        ctx[f"ref_answer_{i}"] = t["reference"] if t["reference"] is not None else ""
        for k in ("answer", "answer_a", "answer_b"):
            if k in t:
                ctx[f"{k}_{i}"] = t[k]
    return ctx


def load_prompt_file(path: str | Path) -> JudgePrompt:
    """Load one of our YAML prompt files strictly."""
    path = Path(path)
    try:
        # strict like recipes: a BOM is fine, a key given twice is an error naming both lines
        raw = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=UniqueKeyLoader)  # noqa: S506
    except yaml.YAMLError as e:
        raise UserError(f"invalid YAML in prompt file: {e}", file=path) from None
    try:
        p = PromptFile.model_validate(raw)
    except ValidationError as err:
        raise validation_to_user_error(err, PromptFile, path) from None
    return JudgePrompt(p.name, str(p.version), p.kind, p.system, p.template, p.output_format,
                       p.score_prefix, "jinja", tuple(p.scale))


def builtin_prompt_names() -> list[str]:
    """Names of the prompts shipped in the package."""
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))


def load_fastchat_prompts(path: str | Path) -> dict[str, JudgePrompt]:
    """Read a FastChat ``judge_prompts.jsonl``; version = hash of the texts (they carry none)."""
    from ja_instruct.io import iter_jsonl

    out = {}
    for line, rec in iter_jsonl(path):
        missing = {"name", "type", "system_prompt", "prompt_template", "output_format"} - set(rec)
        extra = set(rec) - FASTCHAT_KEYS
        if missing or extra:
            what = f"missing key(s) {sorted(missing)}" if missing else f"unknown key(s) {sorted(extra)}"
            raise UserError(f"not a FastChat judge prompt: {what}", file=path, line=line,
                            hint=f"Expected keys: {sorted(FASTCHAT_KEYS)}.")
        if rec["output_format"] not in FASTCHAT_FORMATS:
            raise UserError(f"unknown output_format {rec['output_format']!r}", file=path, line=line,
                            field="output_format", hint=f"Known: {', '.join(FASTCHAT_FORMATS)}.")
        if rec["type"] not in ("single", "pairwise"):
            raise UserError(f"unknown type {rec['type']!r}", file=path, line=line, field="type",
                            hint="Use 'single' or 'pairwise'.")
        fmt, prefix = FASTCHAT_FORMATS[rec["output_format"]]
        digest = hashlib.sha256(json.dumps([rec["system_prompt"], rec["prompt_template"], rec["output_format"]],
                                           ensure_ascii=False).encode()).hexdigest()[:8]
        out[rec["name"]] = JudgePrompt(rec["name"], f"fc-{digest}", rec["type"], rec["system_prompt"],
                                       rec["prompt_template"], fmt, prefix, "format")
    return out


class PromptSet:
    """Picks the prompt for an item from (kind, reference-guided?, multi-turn?)."""

    def __init__(self, family: str | None = None, fastchat_file: str | Path | None = None,
                 names: dict[str, str] | None = None) -> None:
        self.family = family
        self.fastchat: dict[str, JudgePrompt] | None = None
        self.names = dict(FASTCHAT_DEFAULT_NAMES)
        bad = set(names or {}) - set(ROLES)
        if bad:
            raise UserError(f"unknown prompt role(s) {sorted(bad)}", field="judge.judge_prompt_names",
                            hint=f"Roles: {', '.join(ROLES)}.")
        self.names.update(names or {})
        if fastchat_file is not None:
            self.fastchat = load_fastchat_prompts(fastchat_file)
        self._cache: dict[str, JudgePrompt] = {}

    def _ours(self, name: str) -> JudgePrompt | None:
        if name not in self._cache:
            path = PROMPTS_DIR / f"{name}.yaml"
            if not path.is_file():
                return None
            self._cache[name] = load_prompt_file(path)
        return self._cache[name]

    def get(self, kind: str, ref: bool, multi: bool, family: str | None = None) -> JudgePrompt:
        """The prompt for one item; a `UserError` if the prompt source has none that fits.
        ``family`` overrides the set's own family for this item (ours only; e.g. `ASPECT_FAMILY`
        for a question with its own grading aspect)."""
        base = "single" if kind == "single" else "pair"
        roles = [f"{base}{'-ref' if ref else ''}{'-multi' if multi else ''}"]
        if ref:
            roles.append(f"{base}{'-multi' if multi else ''}")  # reference shown only if the template has a slot
        if self.fastchat is not None:
            for role in roles:
                p = self.fastchat.get(self.names[role])
                if p is not None and p.kind == kind:
                    return p
            of_kind = [p for p in self.fastchat.values() if p.kind == kind]
            if not multi and len(of_kind) == 1:  # e.g. Rakuda's file: one pairwise prompt, pair-ja
                return of_kind[0]
            raise UserError(f"the judge prompt file has no prompt for role '{roles[0]}' "
                            f"(looked for {[self.names[r] for r in roles]})", field="judge.judge_prompt_names",
                            hint="Map the role to a prompt name in judge_prompt_names, or restrict judge.turns.")
        family = family or self.family or ("single-ja" if kind == "single" else "pair-ja")
        for suffix in (["-ref-multi", "-multi"] if multi and ref else ["-multi"] if multi else
                       ["-ref", ""] if ref else [""]):
            p = self._ours(family + suffix)
            if p is not None:
                if p.kind != kind:
                    raise UserError(f"prompt '{p.name}' is a {p.kind} prompt, mode needs {kind}",
                                    field="judge.prompt", hint="Use single-ja or pair-ja.")
                return p
        raise UserError(f"no built-in prompt '{family}' for this item", field="judge.prompt",
                        hint=f"Built-in prompts: {', '.join(builtin_prompt_names())}.")
