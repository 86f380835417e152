"""The train stage as a function of its inputs: up to date, new run on a changed config,
resume when switching back, --restart, killed retrains, and `find_trained_model`."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest_train import read_metrics, write_recipe
from ja_instruct.cli import main
from ja_instruct.errors import UserError
from ja_instruct.manifest import make_manifest, read_manifest, write_manifest
from ja_instruct.recipe import load_recipe
from ja_instruct.train import find_trained_model, run_training, train

KILL_AT_STEP = Path(__file__).with_name("kill_at_step.py")


class Killed(Exception):
    """Stands for a crash in the middle of a run."""


def _weights(final: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(final / "model.safetensors")


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _runs(out: Path) -> set[str]:
    return {p.name for p in (out / "checkpoints").iterdir()}


def test_changed_config_trains_a_new_run_and_switching_back_resumes_the_old_one(
        tmp_path, tiny_model_dir, toy_dataset_dir, caplog):
    caplog.set_level(logging.INFO)
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "run", max_steps=2,
                        save_every=1, lr=1e-3)
    a, b = load_recipe(path), load_recipe(path, ["train.lr=0.002"])
    final = run_training(a)
    out = final.parent
    ma, wa = read_manifest(out, "train"), _weights(final)
    run_a = ma.details["run"]
    assert find_trained_model(a) == (final, ma.fingerprint)

    # lr changed, killed after step 1: a NEW run from step 0 (A's checkpoint is not resumed), the
    # change is named, and the folder no longer looks complete although the old final/ is there.
    caplog.clear()

    def crash(step: int) -> None:
        if step == 1:
            raise Killed

    with pytest.raises(Killed):
        train(b.train, dataset_dir=toy_dataset_dir, out=out, seed=1, on_step=crash)
    assert "config changed: lr 0.001 -> 0.002" in caplog.text and "starts at step 0" in caplog.text
    assert "resum" not in caplog.text
    assert read_manifest(out, "train") is None and (final / "config.json").is_file()
    for recipe in (a, b):
        with pytest.raises(UserError, match="no complete trained model"):
            find_trained_model(recipe)
    (run_b,) = _runs(out) - {run_a}
    assert {r["run"] for r in read_metrics(out / "metrics.jsonl").values()} == {run_b}

    # back to A: its checkpoints are still there, so it resumes at its last step (no training),
    # re-exports the same weights and only then prunes B's checkpoints.
    caplog.clear()
    assert run_training(a) == final
    assert f"resuming run {run_a} from step_00000002" in caplog.text and "starts at step 0" not in caplog.text
    assert "removed the checkpoints of 1 other run" in caplog.text
    assert _runs(out) == {run_a}
    assert read_manifest(out, "train").fingerprint == ma.fingerprint
    assert _same(_weights(final), wa)
    metrics = read_metrics(out / "metrics.jsonl")  # A's own lines are back
    assert sorted(metrics) == [1, 2] and {r["run"] for r in metrics.values()} == {run_a}

    # B again: its killed run was pruned, so it starts over; then A's recipe no longer matches.
    caplog.clear()
    assert run_training(b) == final
    assert f"new run {run_b} starts at step 0" in caplog.text
    assert not _same(_weights(final), wa)
    assert {r["run"] for r in read_metrics(out / "metrics.jsonl").values()} == {run_b}
    with pytest.raises(UserError, match="lr 0.002 -> 0.001"):
        find_trained_model(a)
    assert find_trained_model(b)[0] == final


def test_unchanged_rerun_loads_nothing_and_rewrites_nothing(tmp_path, tiny_model_dir, toy_dataset_dir, caplog,
                                                            monkeypatch):
    import ja_instruct.train.loop as loop
    import ja_instruct.train.prepare as prepare

    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "run", max_steps=1)
    final = run_training(load_recipe(path))
    before = {p: p.stat().st_mtime_ns for p in final.parent.rglob("*") if p.is_file()}

    def forbidden(*args, **kwargs):
        raise AssertionError("an up-to-date stage loaded something")

    monkeypatch.setattr(prepare, "prepare", forbidden)
    monkeypatch.setattr(prepare, "load_tokenizer", forbidden)
    monkeypatch.setattr(loop, "build_model", forbidden)
    caplog.set_level(logging.INFO)
    # a logging-only key changed: still the same model
    assert run_training(load_recipe(path, ["train.log_every=5", "train.save_every=3"])) == final
    assert "up to date" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in final.parent.rglob("*") if p.is_file()} == before
    with pytest.raises(AssertionError, match="loaded something"):  # the guard works
        run_training(load_recipe(path, ["train.lr=0.5"]))


def test_out_is_registered_restart_starts_over_and_changes_are_caught(tmp_path, tiny_model_dir, toy_dataset_dir,
                                                                       capsys, monkeypatch):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # main() rebinds logging to this test's stderr
    data = tmp_path / "data"
    shutil.copytree(toy_dataset_dir, data)
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, data, tmp_path / "run", max_steps=2, save_every=1)
    elsewhere = tmp_path / "elsewhere"
    assert main(["train", str(path), "--out", str(elsewhere)]) == 0
    recipe = load_recipe(path)
    final, fp = find_trained_model(recipe)
    assert final == elsewhere / "final" and fp == read_manifest(elsewhere, "train").fingerprint
    assert not (tmp_path / "run" / "train").exists()
    assert find_trained_model(load_recipe(path, ["train.tensorboard=true"]))[0] == final  # logging only
    with pytest.raises(UserError, match="lr 0.001 -> 0.005") as e:
        find_trained_model(load_recipe(path, ["train.lr=0.005"]))
    assert e.value.field == "generate.models"

    capsys.readouterr()
    assert main(["train", str(path), "--out", str(elsewhere), "--restart"]) == 0
    err = capsys.readouterr().err
    assert "--restart: discarded the checkpoints" in err and "starts at step 0" in err and "resum" not in err
    assert sorted(read_metrics(elsewhere / "metrics.jsonl")) == [1, 2]
    assert find_trained_model(recipe)[1] == fp  # same config, same inputs: same identity

    write_manifest(data, make_manifest("data", {"rebuilt": True}))  # the data stage rebuilt the dataset
    with pytest.raises(UserError, match="dataset .* changed"):
        find_trained_model(recipe)


@pytest.mark.slow
def test_retrain_killed_midway_leaves_no_manifest(tmp_path, tiny_model_dir, toy_dataset_dir):
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "run", max_steps=3,
                        save_every=1)
    final = run_training(load_recipe(path))
    env = dict(os.environ, JA_INSTRUCT_TRAIN_FAIL_AT_STEP="2", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, str(KILL_AT_STEP), "train", str(path), "--set", "train.lr=0.002"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]  # SIGKILL
    assert "config changed: lr 0.001 -> 0.002" in r.stderr
    assert (final / "config.json").is_file() and read_manifest(final.parent, "train") is None
    for overrides in ([], ["train.lr=0.002"]):
        with pytest.raises(UserError, match="no complete trained model"):
            find_trained_model(load_recipe(path, overrides))
