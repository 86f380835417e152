"""Config of the data stage (placeholder: being written)."""

from ja_instruct.config import StrictModel


class DataConfig(StrictModel):
    """The 'data' section of a recipe."""
