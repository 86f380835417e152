"""The prompts the pairs stage samples answers for: the data stage's conversations, or a question set.

* ``prompts: data``: each conversation of the recipe's dataset (``train.dataset_dir``, else the
  data stage's folder, built or brought up to date first), TRAINING split only: the held-out
  split stays unseen by every training stage, DPO included. The prompt is the conversation up
  to its last user turn before the last assistant answer (an Alpaca ``input`` merged into its
  instruction, as the tokenizer template does). The generate stage answers questions made of
  user turns only, answering each turn after ITS OWN earlier answers; a data prompt with
  earlier assistant turns cannot be asked that way without changing it, so it is dropped
  (``multi_turn``), and so is one with its own system message (``has_system``: one
  ``model.system_prompt`` applies to every prompt). The same prompt twice (a source weighted
  above 1) is sampled once (``duplicate_prompt``).
* a question set (as ``generate.questions``): the first turn of each question.

``limit`` keeps the first N usable prompts. Every prompt keeps its row id (or question id),
which names its pair.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ja_instruct.pairs.select import DUPLICATE_PROMPT, HAS_SYSTEM, MULTI_TURN, NO_PROMPT

DATA = "data"


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``text`` is the user turn the model answers."""

    question_id: int | str
    text: str
    category: str = "general"
    source: str = ""
    license: str | None = None

    @property
    def key(self) -> str:
        return str(self.question_id)


@dataclass
class PromptSet:
    """The prompts of a run and what was left out (reason -> rows)."""

    prompts: list[Prompt]
    available: int
    dropped: Counter = field(default_factory=Counter)

    def questions(self):
        """The prompts as generate-stage `Question`s (one turn each)."""
        from ja_instruct.generate.questions import Question

        return [Question(question_id=p.question_id, category=p.category, turns=[p.text]) for p in self.prompts]

    def licenses(self) -> list[str]:
        """The distinct licences of the prompts' sources (data prompts; [] for question sets)."""
        return sorted({p.license for p in self.prompts if p.license})


def prompt_of(messages: list[dict]) -> tuple[str | None, str | None]:
    """(the user turn to answer, None) for a conversation, or (None, drop reason)."""
    from ja_instruct.data.templates import merge_input_messages

    msgs = merge_input_messages(messages)
    last_answer = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
    head = msgs[:last_answer]
    last_user = max((i for i, m in enumerate(head) if m["role"] == "user"), default=None)
    if last_user is None or not head[last_user]["content"].strip():
        return None, NO_PROMPT
    head = head[:last_user + 1]
    if any(m["role"] == "assistant" for m in head):
        return None, MULTI_TURN
    if any(m["role"] == "system" for m in head):
        return None, HAS_SYSTEM
    # consecutive user messages before the answer are one instruction, as the data stage's judge reads it
    return "\n\n".join(m["content"] for m in head if m["role"] == "user"), None


def data_prompts(dataset_dir: Path, limit: int | None) -> PromptSet:
    """The prompts of a dataset folder written by ``ja-instruct data build`` (training split)."""
    from ja_instruct.data import load_dataset_dir

    ds = load_dataset_dir(dataset_dir)
    out, dropped, seen, ids = [], Counter(), set(), set()
    for row in ds:
        text, why = prompt_of(row["messages"])
        if why is None and (text in seen or str(row["id"]) in ids):
            why = DUPLICATE_PROMPT
        if why is not None:
            dropped[why] += 1
            continue
        seen.add(text)
        ids.add(str(row["id"]))
        out.append(Prompt(question_id=str(row["id"]), text=text, source=f"data:{row.get('source') or 'unknown'}",
                          license=row.get("license")))
        if limit is not None and len(out) >= limit:
            break
    return PromptSet(out, len(ds), dropped)


def question_prompts(source: str, split: str, limit: int | None) -> PromptSet:
    """The first turn of each question of a question set (see `ja_instruct.generate.questions`)."""
    from ja_instruct.generate.questions import load_questions

    qs = load_questions(source, split=split, limit=limit)
    return PromptSet([Prompt(q.question_id, q.turns[0], q.category, source) for q in qs], len(qs))


def dataset_dir(recipe) -> Path:
    """The dataset the prompts come from, brought up to date from the recipe's data section
    (the data stage does nothing when its build is current), as the train stage does; an
    explicit ``train.dataset_dir`` is the user's folder and only read."""
    from ja_instruct.errors import UserError
    from ja_instruct.train.identity import is_dataset_dir, recipe_dataset_dir

    path = recipe_dataset_dir(recipe)
    own = recipe.train is None or not recipe.train.dataset_dir
    if recipe.data is None or not own:
        if not is_dataset_dir(path):
            raise UserError(f"pairs.prompts is 'data' but there is no dataset at {path}", field="pairs.prompts",
                            hint="Add a data section to the recipe (or run `ja-instruct data build RECIPE`), "
                                 "or set pairs.prompts to a question set.")
        return path
    import logging

    from ja_instruct.data.build import build_dataset, fingerprint, is_complete

    if not is_complete(path, fingerprint(recipe.data, recipe.seed)):
        build_dataset(recipe.data, path, seed=recipe.seed, echo=logging.getLogger(__name__).info)
    return path


def prompts_fingerprint(recipe, cfg) -> tuple[str, Path | None]:
    """(identity of the prompts, the dataset folder for ``prompts: data``) without reading every
    row: the dataset's own fingerprint (its manifest's), or the question set's content hash
    (question sets are small). ``limit`` is in the section's config hash."""
    if cfg.prompts == DATA:
        from ja_instruct.train.identity import data_fingerprint

        path = dataset_dir(recipe)
        return f"data:{data_fingerprint(path)}", path
    from ja_instruct.generate.identity import questions_fingerprint

    return questions_fingerprint(question_prompts(cfg.prompts, cfg.split, cfg.limit).questions()), None
