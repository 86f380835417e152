"""Shared fixtures: offline hub, the real-data folder, a tiny Llama + tokenizer built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny import build_tiny_llama, build_tiny_tokenizer  # noqa: F401  (tests/ is on sys.path)

# Nothing may download from a hub while testing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
SHARED_DATA = Path(os.environ.get("JA_INSTRUCT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real Japanese benchmark data); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a fresh clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A tiny byte-level BPE tokenizer that knows some Japanese."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A HF model directory holding a random 2-layer Llama and the tiny tokenizer (read-only use)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer)
