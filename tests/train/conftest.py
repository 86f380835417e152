"""Fixtures of the train tests (helpers live in conftest_train.py, importable by name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest_train import make_conversations, write_dataset_dir


@pytest.fixture(scope="session")
def toy_dataset_dir(tmp_path_factory) -> Path:
    """48 tiny Japanese conversations in a dataset directory (the data stage's format)."""
    return write_dataset_dir(tmp_path_factory.mktemp("toy_data"), make_conversations(48))
