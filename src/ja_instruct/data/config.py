"""Config of the data stage: sources, cleaning, mixture and licence policy.

This module is imported for ``--help`` and by `ja_instruct.recipe`, so it may
import only the stdlib, pydantic, `ja_instruct.config` and `ja_instruct.judge.config`
(itself light: the judge backends are configured, not imported).

A source is one dataset (a local file or folder, or a Hugging Face hub id) in
one of the `FORMATS`; each carries its licence (an SPDX id) so that the built
dataset can record the licence of every example and the licence policy can
refuse non-commercial data in a commercial mixture.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ja_instruct.config import StrictModel
from ja_instruct.judge.config import JudgeBackendConfig

FORMATS = ("alpaca", "oasst", "messages", "fastchat-answers")
"""Names of the source formats (see `ja_instruct.data.sources.READERS`)."""

Format = Literal["alpaca", "oasst", "messages", "fastchat-answers"]

# Licences that forbid commercial use. Any SPDX id with an "-NC" component
# (CC-BY-NC-*, CC-BY-NC-SA-*, CC-BY-NC-ND-*) counts too, see `licence_forbids_commercial`.
NONCOMMERCIAL_LICENSES = frozenset({"other-noncommercial", "research-only", "llama2-noncommercial"})

# Licences that say nothing: commercial use needs an explicit `commercial: true`.
UNKNOWN_LICENSES = frozenset({"unknown", "other", "noassertion"})


def licence_forbids_commercial(spdx: str) -> bool:
    """True for licences that forbid commercial use (CC-BY-NC-4.0, CC-BY-NC-SA-4.0, ...)."""
    s = spdx.strip()
    return s.lower() in NONCOMMERCIAL_LICENSES or bool(re.search(r"(^|-)NC(-|$)", s, flags=re.IGNORECASE))


class SourceConfig(StrictModel):
    """One input dataset of the mixture."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    """Short unique name of the source; stored in the `source` column and used in stats (letters, digits, ``._-``)."""
    path: str
    """Where the data is: a local ``.json``/``.jsonl``/``.parquet`` file, a local folder
    (``save_to_disk`` output or data files), ``embedded:NAME`` (a file shipped in the package),
    a `datasets` builder name used with ``data_files`` (``parquet``, ``json``), or a Hugging
    Face hub dataset id (``kunishou/databricks-dolly-15k-ja``; needs the network or the local
    HF cache). A path that looks local (ends in ``.jsonl``/``.json``/``.parquet``/``.csv``...,
    starts with ``/``, ``./``, ``~``, or is ``dir/name`` with an existing ``dir``) and does not
    exist is a "file not found" error, never a hub lookup. For ``fastchat-answers`` it is the
    FastChat question JSONL."""
    format: Format
    """Record format: ``alpaca`` (instruction/input/output), ``oasst`` (flat message table
    rebuilt into threads), ``messages`` (OpenAI ``messages`` or ShareGPT ``conversations``),
    ``fastchat-answers`` (question JSONL ``path`` + answer JSONL files ``answers``)."""
    license: str = Field(pattern=r"^\S+$")
    """Licence of the data as an SPDX id (``CC-BY-SA-3.0``, ``Apache-2.0``, ``CC-BY-NC-4.0``);
    recorded on every example."""
    commercial: bool | None = None
    """Whether commercial use is allowed. Default: derived from ``license`` (false for NC
    licences and for ``unknown``/``other``/``NOASSERTION``). Setting it true on an NC licence
    is an error."""
    weight: float = Field(default=1.0, ge=0.0)
    """Mixture weight: the source contributes round(weight * kept rows) examples; >1
    repeats every row floor(weight) times plus a seeded random remainder, <1 takes a
    seeded random subset, 0 leaves the source out."""
    split: str = "train"
    """Split to read from a hub dataset / `datasets` builder (ignored for local files)."""
    subset: str | None = None
    """Configuration (subset) name of a hub dataset, passed as ``name`` to ``datasets.load_dataset``."""
    revision: str | None = None
    """Git revision (branch, tag or commit sha) of a hub dataset. The commit a build read is
    recorded in stats.json and the manifest (a new upstream commit triggers a rebuild); without
    a revision the build warns and prints the ``revision: <sha>`` that pins it."""
    data_files: list[str] | None = None
    """``data_files`` for ``datasets.load_dataset`` when ``path`` is a builder (``parquet``, ``json``)
    or a hub id."""
    text_field: str | None = None
    """``oasst``: the field holding the message text. Default: ``text_ja`` when a row has
    it, else ``text``."""
    thread_mode: Literal["best", "all"] = "best"
    """``oasst``: ``best`` keeps one thread per tree following the best-ranked reply at each
    step; ``all`` keeps every root-to-leaf path (ending on an assistant message)."""
    lang: list[str] | None = None
    """Keep only rows whose ``lang`` field is one of these (``[ja]``); rows without a
    ``lang`` field are kept. Default: no language filter."""
    drop_failed_translation: bool = True
    """Drop rows flagged ``ng_translation == "1"`` (failed machine translation), counted as
    ``failed_translation``."""
    where: dict[str, str] = {}
    """Keep only rows where each named field matches the regular expression (``re.search``),
    e.g. ``{instruction: "ニュース"}`` to select a subset of a large dataset."""
    exclude: dict[str, str] = {}
    """Drop rows where a named field matches the regular expression (counted as ``filtered``),
    e.g. ``{text: "翻訳"}``; for ``oasst`` a dropped message cuts off its replies too."""
    answers: list[str] = []
    """``fastchat-answers``: answer JSONL files, folders of them, or glob patterns; each
    answer becomes one conversation (question turns interleaved with the answer turns)."""
    models: list[str] | None = None
    """``fastchat-answers``: keep only answers of these ``model_id`` values. Default: all."""
    max_rows: int | None = Field(default=None, ge=1)
    """Read at most this many records of the source (of each answer file for
    ``fastchat-answers``), for quick trials. Default: all."""

    @model_validator(mode="after")
    def _check(self) -> "SourceConfig":
        if self.commercial and licence_forbids_commercial(self.license):
            raise ValueError(f"source '{self.name}': licence {self.license} forbids commercial use, "
                             "so commercial: true is contradictory (remove it or set it false)")
        if self.format == "fastchat-answers" and not self.answers:
            raise ValueError(f"source '{self.name}': format fastchat-answers needs 'answers' "
                             "(answer JSONL files, folders or globs)")
        if self.answers and self.format != "fastchat-answers":
            raise ValueError(f"source '{self.name}': 'answers' is only used by format fastchat-answers")
        for field, pattern in {**self.where, **self.exclude}.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"source '{self.name}': where.{field}: invalid regular expression ({e})") from None
        return self

    @property
    def allows_commercial(self) -> bool:
        """The effective commercial-use flag: the explicit flag, else derived from the licence."""
        if licence_forbids_commercial(self.license):
            return False
        if self.commercial is None:  # an unknown licence grants nothing until the user says so
            return self.license.lower() not in UNKNOWN_LICENSES
        return self.commercial


class NearDedupConfig(StrictModel):
    """Near-duplicate removal: two conversations whose character n-gram sets have an estimated
    Jaccard similarity at or above ``threshold`` are one (``datasketch`` MinHash LSH)."""

    threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of the two n-gram sets at or above which the later copy is
    dropped. 0.8 removes copies that differ by a few characters or a re-punctuated sentence and
    keeps different examples on the same topic."""
    ngram: int = Field(default=5, ge=1, le=32)
    """Characters per shingle (after the ``normalized`` text normalisation)."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    """MinHash permutations: more is a closer Jaccard estimate and a slower build."""


class ContaminationConfig(StrictModel):
    """Benchmark contamination check: character n-gram overlap between every training (and
    held-out) example and every question of the listed benchmark question sets."""

    mode: Literal["flag", "drop"] = "flag"
    """``flag``: list the hits in stats.json, the dataset card and the model card, and keep the
    examples; ``drop``: also remove the examples that contain a benchmark question
    (``contaminated``)."""
    benchmarks: list[str] = Field(default=["embedded:questions_ja.jsonl"], min_length=1)
    """Question sets to check against, as `generate.questions` names them: a FastChat question
    JSONL path (Rakuda, Japanese MT-Bench), a parquet/json/csv file or dataset folder, an HF hub id
    (`yuzuai/rakuda-questions`), or `embedded:NAME`."""
    ngram: int = Field(default=10, ge=5, le=200)
    """Characters per n-gram compared, after NFKC and case folding with whitespace, punctuation and
    control characters removed. 10: one changed character in a 50-character question leaves about
    80% of its n-grams, and no real answer on the same topics shared half of a question's 10-grams
    by chance (docs/data.md has the measurement)."""
    min_overlap: float = Field(default=0.5, gt=0.0, le=1.0)
    """An example contains a benchmark question when at least this share of the question's
    n-grams occur in the example's text."""


class QualityConfig(StrictModel):
    """Judge-scored filtering: a judge grades every example (prompt and response) on a Japanese
    rubric; the examples under the bar are dropped (``low_quality``)."""

    judge: JudgeBackendConfig
    """The judge model and how it is called, as in the judge stage (`openai`, `hf`, or `fake`
    for tests and dry runs; required, no default)."""
    prompt: str = "quality-ja"
    """Rubric: one of our prompt files in `ja_instruct/judge/prompts/` (`quality-ja`) or a path to a
    prompt file of the same schema."""
    threshold: float | None = None
    """Keep the examples whose score is at least this (1-10 scale). An example the judge could not
    score (parse error, refusal) is dropped and counted in ``errors``. Exactly one of ``threshold``
    and ``top_fraction``."""
    top_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    """Keep ceil(top_fraction x n) of each source's n examples, the best scored first (ties broken
    by id); unscored examples are never kept."""
    sources: list[str] | None = None
    """Names of the sources to score and filter; null: every source."""
    cache: str | None = None
    """The judgment store (JSONL), shared with nothing else by default:
    `<data dir>.quality-cache.jsonl` beside the dataset folder, so a rebuild, or a killed build,
    re-scores only new or changed examples."""

    @model_validator(mode="after")
    def _one_rule(self) -> "QualityConfig":
        if (self.threshold is None) == (self.top_fraction is None):
            raise ValueError("data.quality needs exactly one of threshold (keep scores >= it) and "
                             "top_fraction (keep the best share of each source)")
        return self


class CleanConfig(StrictModel):
    """Cleaning applied to every conversation after parsing."""

    strip: bool = True
    """Strip leading/trailing whitespace of every message."""
    dedup: Literal["none", "exact", "normalized"] = "normalized"
    """De-duplication across all sources (first occurrence in recipe order wins): ``exact``
    compares the texts as they are, ``normalized`` after NFKC, case folding and whitespace
    collapsing, ``none`` keeps duplicates."""
    dedup_key: Literal["conversation", "prompt"] = "conversation"
    """What counts as a duplicate: the whole ``conversation``, or only its ``prompt`` (the
    user/system/input turns; keeps one answer per question)."""
    min_chars: int = Field(default=1, ge=0)
    """Drop conversations whose assistant text (all assistant turns) is shorter than this
    many characters (``too_short``)."""
    max_chars: int | None = Field(default=16000, ge=1)
    """Drop conversations longer than this many characters in total (``too_long``); null: no limit."""
    max_turns: int | None = Field(default=None, ge=1)
    """Drop conversations with more than this many assistant turns (``too_many_turns``); null: no limit."""
    near_dedup: NearDedupConfig | None = None
    """Near-duplicate removal (``near_duplicate``) after the exact/normalised one: MinHash LSH over
    character n-grams (Japanese has no spaces to split words on). Like ``dedup``, across all
    sources, and the copy of the source listed first in the recipe is kept. null: off."""


class HeldoutConfig(StrictModel):
    """Cleaned examples kept out of training, to evaluate on (the generate stage scores each
    model's NLL of their reference answers)."""

    fraction: float = Field(default=0.0, ge=0.0, le=0.5)
    """Share of the cleaned examples (after cleaning and de-duplication, before the weights, so a
    held-out example never reaches training as a weight repeat) held out of the training set for
    evaluation. The split is made per group of examples that share text (the threads of one
    ``oasst`` tree, the answers of all models to one ``fastchat-answers`` question; any other
    example alone): a group is held out, whole, iff a uniform number hashed from (seed, source
    name, group) is below it, so no held-out turn is trained on inside a sibling example, and
    adding sources or rows never changes which of the others are held out. 0: no held-out split."""
    max_examples: int | None = Field(default=None, ge=1)
    """Most held-out examples: of the groups ``fraction`` selects, keep whole groups in ascending
    hash order over all sources, stopping before the one that would exceed the cap (the rest go
    back to training). Ignored when ``fraction`` is 0. Default: no cap."""


class DataConfig(StrictModel):
    """The 'data' section of a recipe: which sources, how to clean and mix them."""

    sources: list[SourceConfig] = Field(min_length=1)
    """The input datasets, in priority order (de-duplication keeps the first occurrence)."""
    clean: CleanConfig = CleanConfig()
    """Cleaning: whitespace, de-duplication, length filters."""
    licence_policy: Literal["commercial", "noncommercial"] = "commercial"
    """``commercial`` refuses any source whose licence forbids commercial use (the build
    stops with an error naming it); ``noncommercial`` accepts them (the output is then
    for non-commercial use only)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad input rows (malformed JSON, missing or wrongly typed fields, non-UTF-8 bytes):
    ``raise`` stops with one clear error naming file, line and field; ``skip`` skips the
    row and counts it as ``malformed``. ``--on-error`` on the command line overrides it."""
    shuffle: bool = True
    """Shuffle the final mixture (seeded by the recipe's ``seed``)."""
    heldout: HeldoutConfig = HeldoutConfig()
    """Held-out split for evaluation (``<out>/heldout``, same columns as the dataset): a share of
    the cleaned examples that never reaches training."""
    contamination: ContaminationConfig | None = None
    """Benchmark contamination check (Rakuda, Japanese MT-Bench, the embedded questions, any question
    set): hits are listed in stats.json and stated in the dataset card, the model card and the
    report; ``drop`` removes them. null: no check (the cards then say it was not checked)."""
    quality: QualityConfig | None = None
    """Judge-scored filtering (scores in the dataset's ``quality`` column and stats.json). null: off."""

    @model_validator(mode="after")
    def _quality_sources_exist(self) -> "DataConfig":
        if self.quality is not None and self.quality.sources:
            names = [s.name for s in self.sources]
            unknown = [n for n in self.quality.sources if n not in names]
            if unknown:
                raise ValueError(f"data.quality.sources names no source: {', '.join(unknown)} "
                                 f"(the sources are: {', '.join(names)})")
        return self

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"two sources are named '{s.name}'; source names must be unique")
            seen.add(s.name)
        return sources
