"""Config of the train stage (placeholder: being written)."""

from ja_instruct.config import StrictModel


class TrainConfig(StrictModel):
    """The 'train' section of a recipe."""
