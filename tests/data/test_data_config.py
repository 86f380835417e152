"""DataConfig validation, licence detection and the shipped recipes (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ja_instruct.cli import main
from ja_instruct.config import describe_fields
from ja_instruct.data import build_dataset
from ja_instruct.data.config import DataConfig, SourceConfig, licence_forbids_commercial
from ja_instruct.data.mix import check_licence_policy
from ja_instruct.errors import UserError
from ja_instruct.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
COMMERCIAL = ["dolly-15k-ja", "oasst1-89k-ja", "hh-rlhf-49k-ja", "llm-japanese-wikinews"]


@pytest.mark.parametrize("spdx, nc", [("CC-BY-NC-4.0", True), ("CC-BY-NC-SA-4.0", True), ("cc-by-nc-nd-4.0", True),
                                      ("CC-BY-SA-3.0", False), ("Apache-2.0", False), ("MIT", False),
                                      ("CC-BY-4.0", False), ("other-noncommercial", True)])
def test_licence_forbids_commercial(spdx, nc):
    assert licence_forbids_commercial(spdx) is nc
    src = SourceConfig(name="s", path="x.jsonl", format="alpaca", license=spdx)
    assert src.allows_commercial is (not nc)


def test_every_data_key_is_documented():
    rows = describe_fields(DataConfig, "data.")
    assert len(rows) > 25
    assert [key for key, _, _, doc in rows if not doc] == []


def test_shipped_recipes_load_offline():
    com = load_recipe(RECIPES / "plamo-13b-instruct.yaml")
    nc = load_recipe(RECIPES / "plamo-13b-instruct-nc.yaml")
    assert com.data.licence_policy == "commercial" and nc.data.licence_policy == "noncommercial"
    assert [s.name for s in com.data.sources] == COMMERCIAL
    assert [s.name for s in nc.data.sources] == COMMERCIAL + ["japanese-alpaca"]
    paths = {s.name: (s.path, s.format, s.license) for s in nc.data.sources}
    assert paths["dolly-15k-ja"] == ("kunishou/databricks-dolly-15k-ja", "alpaca", "CC-BY-SA-3.0")
    assert paths["oasst1-89k-ja"] == ("kunishou/oasst1-89k-ja", "oasst", "Apache-2.0")
    assert paths["hh-rlhf-49k-ja"] == ("kunishou/hh-rlhf-49k-ja", "alpaca", "MIT")
    assert paths["japanese-alpaca"][2] == "CC-BY-NC-4.0"
    check_licence_policy(com.data)  # every commercial source passes
    check_licence_policy(nc.data)   # noncommercial accepts the NC source
    assert load_recipe(RECIPES / "shared-data.yaml").data.sources[0].format == "fastchat-answers"


def test_commercial_policy_refuses_the_nc_recipe(tmp_path, capsys):
    nc = load_recipe(RECIPES / "plamo-13b-instruct-nc.yaml", ["data.licence_policy=commercial"])
    with pytest.raises(UserError) as e:
        build_dataset(nc.data, tmp_path / "out")  # refused before any download is tried
    assert "'japanese-alpaca'" in str(e.value) and "CC-BY-NC-4.0" in str(e.value)
    rc = main(["data", "build", str(RECIPES / "plamo-13b-instruct-nc.yaml"), "--set",
               "data.licence_policy=commercial", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "japanese-alpaca" in err and "forbids commercial use" in err and "data.sources[4]" in err
    assert not (tmp_path / "out").exists()


def test_config_validation_messages():
    with pytest.raises(ValueError, match="needs 'answers'"):
        SourceConfig(name="f", path="q.jsonl", format="fastchat-answers", license="MIT")
    with pytest.raises(ValueError, match="only used by format fastchat-answers"):
        SourceConfig(name="f", path="q.jsonl", format="alpaca", license="MIT", answers=["a.jsonl"])
    with pytest.raises(ValueError, match="invalid regular expression"):
        SourceConfig(name="f", path="q.jsonl", format="alpaca", license="MIT", where={"instruction": "("})
    with pytest.raises(ValueError):
        SourceConfig(name="f", path="q.jsonl", format="alpaca", license="MIT", weight=-1)
    with pytest.raises(ValueError):
        DataConfig(sources=[])
