"""Config of the pairs stage: judge-labelled preference pairs for DPO (``ja-instruct pairs``).

This module is imported for ``--help`` and by `ja_instruct.recipe`, so it may import only
the stdlib, pydantic and the other stages' config modules.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ja_instruct.config import StrictModel
from ja_instruct.generate.config import ModelSpec
from ja_instruct.judge.config import JudgeConfig


class PairsConfig(StrictModel):
    """The 'pairs' section of a recipe: (chosen, rejected) answer pairs labelled by an AI judge (RLAIF).

    For each prompt, ``samples`` answers are drawn from ``model`` (the generate stage's backends,
    vLLM included, at ``temperature`` > 0) and judged (the judge stage's backends and cache):
    single grades, or pairwise in both orders. The best and the worst answer make a pair when
    their margin is at least ``margin``. Or ``input`` names an existing preference set, read
    as it is.
    """

    input: str | None = None
    """An existing preference set instead of sampling and judging: a JSONL file with ``prompt``,
    ``chosen``, ``rejected`` (strings, or message lists as in UltraFeedback-binarized), HH-RLHF's
    layout (``chosen``/``rejected`` transcripts with ``Human:``/``Assistant:`` turns), or an HF
    dataset folder / hub id with those columns. null: sample and judge."""
    split: str = "train"
    """Split to read when ``input`` or ``prompts`` is an HF dataset folder or hub id."""
    prompts: str = "data"
    """Where the prompts come from: ``data`` (the user turn of each single-turn conversation of the
    recipe's dataset, training split; conversations with earlier assistant turns or their own
    system message are dropped and counted: ``multi_turn``, ``has_system``) or a question set as
    in ``generate.questions`` (first turn of each question)."""
    limit: int | None = Field(None, ge=1)
    """Only the first N prompts (smoke tests, demos)."""
    model: ModelSpec | None = None
    """The model that answers (usually the SFT model the DPO run starts from), as a generate
    model spec; its ``id`` names the answer file. Needed unless ``input`` is set."""
    samples: int = Field(4, ge=2, le=64)
    """Answers sampled per prompt (sample k with seed + k)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (> 0: the answers to one prompt must differ)."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = Field(50, ge=0)
    """Top-k cut-off (0: off)."""
    max_new_tokens: int = Field(512, ge=1)
    """Most tokens per answer; a cut answer is never kept as ``chosen``."""
    repetition_penalty: float = Field(1.0, gt=0)
    """hf/vllm repetition penalty (1.0: none)."""
    seed: int | None = None
    """Sampling seed; default the recipe's ``seed``."""
    judge: JudgeConfig | None = None
    """How the answers are judged: a judge section (``mode: single`` or ``pairwise``, backend,
    prompts); its ``answers_dir``, ``models`` and ``questions`` are the stage's own and must be left
    out. null: the recipe's ``judge`` section."""
    margin: float = Field(1.0, ge=0)
    """Keep a prompt's (best, worst) pair only when the judge separates them by at least this:
    the score difference (``single``), or the difference in wins over the other samples whose
    verdicts agree in both orders (``pairwise``)."""
    heldout_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of the kept pairs set aside (``split: heldout``), never trained on: DPO measures its
    preference accuracy on them."""
    license: str | None = None
    """Licence of the prompts' source, recorded with the pairs (default: the data stage's licences,
    or ``unknown``)."""
    judge_terms: str | None = None
    """The judge's terms of use that bind the labels (e.g. an API's terms on training competing
    models), recorded with the pairs."""

    @model_validator(mode="after")
    def _what_to_do(self) -> "PairsConfig":
        if self.input is None and self.model is None:
            raise ValueError("set pairs.model (the model whose sampled answers are judged), or pairs.input "
                             "(an existing preference set)")
        if self.judge is not None:
            taken = [k for k in ("answers_dir", "models", "questions") if getattr(self.judge, k) is not None]
            if taken:
                raise ValueError(f"pairs.judge.{taken[0]} is set by the pairs stage itself: leave it out")
            if self.judge.mode == "pairwise-baseline":
                raise ValueError("pairs.judge.mode must be single or pairwise (the samples have no baseline)")
        return self
