"""Config of the generate stage (placeholder: being written)."""

from ja_instruct.config import StrictModel


class GenerateConfig(StrictModel):
    """The 'generate' section of a recipe."""
