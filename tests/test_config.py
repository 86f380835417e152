"""The recipe machinery: strict keys with suggestions and lines, --set, docs, saving."""

from __future__ import annotations

import pytest
import yaml
from pydantic import Field

from ja_instruct.config import (StrictModel, apply_overrides, describe_fields, load_config, reference_markdown,
                                resolve_path, save_config)
from ja_instruct.errors import UserError


class Inner(StrictModel):
    format: str = "alpaca"
    """How the file is laid out."""
    weight: float = 1.0
    """Sampling weight."""


class Outer(StrictModel):
    name: str = "x"
    """The name."""
    sources: list[Inner] = Field(default_factory=list)
    """The sources."""


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_unknown_key_names_key_file_line_and_closest(tmp_path):
    p = write(tmp_path, "name: a\nsources:\n  - format: alpaca\n    wieght: 2\n")
    with pytest.raises(UserError) as e:
        load_config(Outer, p)
    msg = str(e.value)
    assert "wieght" in msg and str(p) in msg and "line 4" in msg and "did you mean 'weight'" in msg.lower()
    assert "sources[0].wieght" in msg


def test_wrong_type_names_field_and_line(tmp_path):
    p = write(tmp_path, "name: a\nsources:\n  - weight: lots\n")
    with pytest.raises(UserError) as e:
        load_config(Outer, p)
    assert "line 3" in str(e.value) and "sources[0].weight" in str(e.value) and "'lots'" in str(e.value)


def test_invalid_yaml_reports_line(tmp_path):
    p = write(tmp_path, "name: a\nsources: [\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(Outer, p)


def test_overrides_parse_yaml_values_and_index_lists(tmp_path):
    p = write(tmp_path, "sources:\n  - format: alpaca\n")
    cfg = load_config(Outer, p, ["name=b", "sources.0.weight=2.5"])
    assert cfg.name == "b" and cfg.sources[0].weight == 2.5
    with pytest.raises(UserError, match="out of range"):
        apply_overrides({"sources": []}, ["sources.3.weight=1"])
    with pytest.raises(UserError, match="KEY=VALUE|key=value"):
        apply_overrides({}, ["name"])


def test_describe_fields_recurses_with_docstrings():
    rows = {key: (tp, default, doc) for key, tp, default, doc in describe_fields(Outer)}
    assert rows["sources[].weight"] == ("float", "1.0", "Sampling weight.")
    assert rows["name"][2] == "The name."


def test_every_recipe_key_has_a_docstring():
    from ja_instruct.recipe import Recipe

    missing = [key for key, _, _, doc in describe_fields(Recipe) if not doc]
    assert missing == []


def test_readme_recipe_reference_is_current():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert reference_markdown() in readme, "regenerate it: python -m ja_instruct.config (see README)"


def test_save_config_round_trips(tmp_path):
    cfg = Outer(name="z", sources=[Inner(weight=3)])
    path = save_config(cfg, tmp_path / "out")
    assert load_config(Outer, path) == cfg
    assert yaml.safe_load(path.read_text())["sources"][0]["weight"] == 3


def test_resolve_path_embedded():
    assert resolve_path("embedded:x.jsonl").parts[-2:] == ("assets", "x.jsonl")
    assert str(resolve_path("a/b")) == "a/b"
