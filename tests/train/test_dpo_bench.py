"""benchmarks/dpo_throughput.py: its --tiny mode runs every contender (ours, TRL default, TRL
tuned, ours under FSDP2 on 2 ranks) and the model-state memory configuration end to end and
reports every figure; its step clock leaves saving out of the training-steps window."""

from __future__ import annotations

import json
import math
import os
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dpo_throughput.py"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_bench") / "out.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out)], env=ENV, capture_output=True,
                       text=True, timeout=420)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


@pytest.mark.slow
def test_tiny_run_reports_every_figure(tiny_run):
    res, stdout = tiny_run
    assert res["same_token_ids"] is True  # ours and TRL train on the very same token ids
    table = res["results"]
    assert sorted(table) == ["ours", "trl_default", "trl_tuned"]
    steps = res["data"]["steps"]
    for name, fig in table.items():
        assert fig["steps"] == steps and fig["pairs"] == res["data"]["train_pairs"], name
        for key in ("pairs_per_cpu_s", "pairs_per_wall_s", "peak_rss_mib", "peak_rss_net_mib", "steady_rss_net_mib",
                    "cpu_s", "wall_s"):
            assert _positive(fig[key]), (name, key, fig[key])
        assert fig["steady_rss_mib"] <= fig["peak_rss_mib"] + 1  # sampled inside the run: never above its peak
        # the training steps alone: steps 2..N (step 1 and everything around the steps left out)
        assert fig["steps_pairs"] == (steps - 1) * res["data"]["pairs_per_step"], name
        assert _positive(fig["steps_pairs_per_cpu_s"]) and _positive(fig["save_cpu_s"]), name
        assert fig["steps_cpu_s"] + fig["save_cpu_s"] < fig["cpu_s"], name
        # DPO starts at ln 2 and every contender learns the (learnable) preference on held-out pairs
        assert abs(res["heldout_before"]["loss"] - math.log(2)) < 1e-6
        assert fig["heldout"]["loss"] < res["heldout_before"]["loss"], name
    # TRL's defaults are what the benchmark says they are; the tuned run keeps no reference model
    assert table["trl_default"]["ref_model"] is True and table["trl_default"]["gradient_checkpointing"] is True
    assert table["trl_tuned"]["ref_model"] is False and table["trl_tuned"]["bf16"] is False
    # like ours (a DCP checkpoint of the last step, then final/), TRL saves its last step, then its model
    for name in ("trl_default", "trl_tuned"):
        assert table[name]["checkpoints"] == [f"checkpoint-{steps}"], name
    # its default batches (several pairs, padded to the longest) pad more than one pair at a time
    assert table["trl_default"]["padding_share"] > table["trl_tuned"]["padding_share"] > 0
    v = res["verdict"]
    for name in ("trl_default", "trl_tuned"):
        assert _positive(v[name]["cpu_ratio"]) and isinstance(v[name]["loss_agrees_2pct"], bool)
        assert _positive(v[name]["steps_cpu_ratio"])
    # fp32 and the same inputs: ours and TRL tuned end at the same held-out loss on the tiny run
    assert abs(v["trl_tuned"]["heldout_loss_rel_diff"]) < 0.02
    assert isinstance(v["target_throughput_met"], bool) and isinstance(v["target_throughput_met_steps"], bool)
    assert "| ours |" in stdout and "target >= 1.5x TRL tuned at equal loss" in stdout


@pytest.mark.slow
def test_tiny_run_measures_fsdp2_memory_per_rank(tiny_run):
    res, stdout = tiny_run
    f = res["verdict"]["fsdp2"]
    assert "error" not in f, f.get("error")
    assert len(f["steady_rss_net_per_rank_mib"]) == 2 and all(_positive(x) for x in f["steady_rss_net_per_rank_mib"])
    assert _positive(f["ratio_steady_rss"]) and _positive(f["ratio_peak_rss"])
    # FSDP2 shards parameters, gradients and AdamW state: each rank holds about half
    assert 0.45 < f["ratio_model_state"] <= 0.55 and f["target_met_model_state"] is True
    assert f["heldout"]["loss"] < res["heldout_before"]["loss"]
    assert "FSDP2, 2 ranks (gloo)" in stdout


@pytest.mark.slow
def test_tiny_run_measures_the_model_state_configuration(tiny_run):
    res, stdout = tiny_run
    setup, f = res["memory_config"], res["verdict"]["fsdp2_model_state"]
    assert "error" not in f, f.get("error")
    assert setup["activation_checkpointing"] is True and setup["micro_batch_pairs"] == 1 and setup["steps"] == 3
    assert setup["tokens_per_pair_max"] <= 128
    # a bigger model than the throughput one, trained alike in one process and on 2 ranks
    assert setup["model"]["parameters"] > res["model"]["parameters"]
    assert 0.45 < f["ratio_model_state"] <= 0.55
    assert _positive(f["ratio_steady_rss"]) and len(f["model_state_share_per_rank"]) == 2
    assert 0 < f["one_process"]["model_state_share"] <= 1 and all(0 < x <= 1 for x in f["model_state_share_per_rank"])
    # same pairs, same settings: FSDP2 reaches the one process's loss
    assert abs(f["last_loss"] - f["one_process"]["last_loss"]) < 1e-3
    assert "model-state configuration" in stdout


def _load_bench():
    spec = importlib.util.spec_from_file_location("dpo_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_step_clock_times_steps_2_to_n_without_saving():
    clock = _load_bench().StepClock(last=3)
    _burn(0.05)  # step 1 and what comes before it: not in the window
    clock.step_end(1)
    _burn(0.05)
    clock.step_end(2)
    _burn(0.05)
    with clock.saving():  # the last step's checkpoint, saved before the hook (as ours does)
        _burn(0.2)
    clock.step_end(3)
    with clock.saving():  # the export after the steps
        _burn(0.05)
    assert 0.1 <= clock.window["cpu_s"] < 0.15
    assert clock.save_cpu >= 0.25
