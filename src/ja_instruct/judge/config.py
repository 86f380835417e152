"""Config of the judge stage (placeholder: being written)."""

from ja_instruct.config import StrictModel


class JudgeConfig(StrictModel):
    """The 'judge' section of a recipe."""
