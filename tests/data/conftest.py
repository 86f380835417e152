"""Helpers of the data-stage tests: the small fixtures and recipe writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DATA_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


@pytest.fixture
def data_assets() -> Path:
    """tests/assets/data: tiny alpaca / oasst / messages / fastchat files."""
    return DATA_ASSETS


@pytest.fixture
def write_recipe(tmp_path):
    """``write_recipe(sources, **data_keys) -> Path`` of a recipe YAML with a data section."""

    def write(sources: list[dict], name: str = "recipe.yaml", seed: int = 0, **data) -> Path:
        path = tmp_path / name
        # out_dir inside tmp_path: an explicit --out is registered in <out_dir>/layout.json
        recipe = {"name": "t", "seed": seed, "out_dir": str(tmp_path / "run"), "data": {"sources": sources, **data}}
        path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
        return path

    return write


@pytest.fixture
def source():
    """``source(name, path, format, license="Apache-2.0", **keys) -> dict``: a recipe source."""

    def make(name: str, path, fmt: str, license: str = "Apache-2.0", **kw) -> dict:
        return {"name": name, "path": str(path), "format": fmt, "license": license, **kw}

    return make


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The answers the fake judge was asked about, in call order (the fake judge, counted)."""
    from ja_instruct.judge import backends
    from ja_instruct.judge.backends import FakeBackend

    seen: list[str] = []

    class Counting(FakeBackend):
        async def judge(self, req):
            seen.append(req.answers[0])
            return await super().judge(req)

    monkeypatch.setitem(backends.BACKENDS, "fake", Counting)
    return seen
