"""Bad input fails before any compute, with one clear line (exit 2) from `ja-instruct train`."""

from __future__ import annotations

import pytest

from conftest_train import write_dataset_dir, write_recipe
from ja_instruct.cli import main


@pytest.mark.parametrize("case, expected", [
    ("missing_model", "does not exist"),
    ("batch", "is not a multiple of"),
    ("accum", "!= micro_batch_size 2 x grad_accum 3 x world size 1"),
    ("too_long", "over the model's limit of 512 positions"),
    ("empty", "is empty"),
    ("no_dataset", "does not exist"),
])
def test_bad_input_is_a_clear_user_error(tmp_path, tiny_model_dir, toy_dataset_dir, capsys, case, expected):
    model, data, train = tiny_model_dir, toy_dataset_dir, {}
    if case == "missing_model":
        model = tmp_path / "no-such-model"
    elif case == "batch":
        train = {"global_batch_size": 5, "micro_batch_size": 2}
    elif case == "accum":
        train = {"global_batch_size": 12, "micro_batch_size": 2, "grad_accum": 3}
    elif case == "too_long":
        train = {"max_length": 1024}
    elif case == "empty":
        data = write_dataset_dir(tmp_path / "empty", [])
    elif case == "no_dataset":
        data = tmp_path / "nowhere"
    recipe = write_recipe(tmp_path / "r.yaml", model, data, tmp_path / "out", **train)
    rc = main(["train", str(recipe)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out" / "train" / "checkpoints").exists()  # nothing was trained
