"""The generate stage: answers for a question set (Rakuda, Japanese MT-Bench, ...) per model.

Entry points (imported lazily so that ``--help`` stays fast):
``run_generation(recipe, out_dir=None, models=None) -> Path`` (`ja_instruct.generate.run`) and
``load_questions(source, ...) -> list[Question]`` (`ja_instruct.generate.questions`).
"""

from __future__ import annotations

from typing import Any

_LAZY = {"run_generation": "ja_instruct.generate.run", "load_questions": "ja_instruct.generate.questions",
         "Question": "ja_instruct.generate.questions"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
