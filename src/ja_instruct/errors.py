"""User-facing errors.

A `UserError` is a mistake the user can fix (bad recipe, malformed input file,
missing path). The CLI prints it as one clear line and exits with status 2,
without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error caused by user input, reported without a traceback (exit code 2).

    Args:
        message: what is wrong.
        file: the file the problem is in, if any.
        line: 1-based line number in ``file``, if known.
        field: the field / key that is wrong (``data.sources[0].format``), if any.
        hint: what the user should do about it.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f", line {self.line}" if self.line else "") + ": "
        elif self.line:
            where = f"line {self.line}: "
        field = f"field '{self.field}': " if self.field else ""
        hint = f" {self.hint}" if self.hint else ""
        return f"{where}{field}{self.message}.{hint}".replace("..", ".")
