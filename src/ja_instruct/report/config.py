"""Config of the report stage (placeholder: being written)."""

from ja_instruct.config import StrictModel


class ReportConfig(StrictModel):
    """The 'report' section of a recipe."""
