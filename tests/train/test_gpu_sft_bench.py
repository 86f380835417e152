"""benchmarks/gpu_sft.py: its CPU smoke mode runs the GPU benchmark's code path end to end, and
without CUDA the plain command stops with one clear line."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_sft.py"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_sft_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_cpu_smoke_run_reports_every_figure(tmp_path):
    out = tmp_path / "out.json"
    steps, micro, seq = 2, 2, 128
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--compile", "off",
                        "--steps", str(steps), "--micro-batch", str(micro), "--seq-len", str(seq),
                        "--peak-tflops", "1", "--json", str(out)],
                       env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    runs = res["runs"]
    assert [(x["activation_checkpointing"], x["compile"]) for x in runs] == [(False, False), (True, False)]
    vocab = res["model"]["shape"]["vocab_size"]
    for run in runs:
        assert run["status"] == "ok", run
        for key in ("tokens_per_s_per_gpu", "mfu", "hfu", "mfu_torchtitan_formula", "peak_memory_gib", "loss",
                    "step_s_median"):
            assert _positive(run[key]), (key, run[key])
        # every row is exactly seq tokens (topped up), so the timed tokens are known from the options
        assert run["timed_tokens"] == steps * micro * seq
        # random weights on random tokens: the loss per supervised token is about ln(vocab)
        assert abs(run["loss"] - math.log(vocab)) < 0.5
        assert 0 <= run["isolation_max_abs_diff"] < 0.5
    off, on = runs
    assert on["hfu"] > on["mfu"] and off["hfu"] == pytest.approx(off["mfu"])  # recomputation only with AC
    assert res["device"]["peak_tflops"] == 1.0 and res["device"]["world_size"] == 1
    # The reference's MFU, derived from its published tokens/s with torchtitan's formula, must land
    # in the range torchtitan states for it ("33% to 39%"): checks the formula and the 8B count.
    ref = res["reference"]["mfu_torchtitan_formula"]
    assert 0.33 <= ref["FSDP"] < 0.34 and 0.39 <= ref["FSDP + torch.compile"] < 0.40
    assert "5,762 tokens/s/GPU" in r.stdout and "compare MFU, not tokens/s" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--json", str(tmp_path / "out.json")],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--device cpu --tiny" in lines[0], r.stderr
    assert not (tmp_path / "out.json").exists()


def test_gpu_peak_by_name_prefers_the_specific_model():
    bench = _bench()
    assert bench.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3")[0] > bench.peak_tflops("NVIDIA H100 NVL")[0]
    assert bench.peak_tflops("NVIDIA H200")[0] == bench.peak_tflops("NVIDIA H100 80GB HBM3")[0]
    assert bench.peak_tflops("NVIDIA L40S")[0] > bench.peak_tflops("NVIDIA L40")[0] > \
        bench.peak_tflops("NVIDIA L4")[0]
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert bench.peak_tflops("Tesla T4")[0] is None  # unknown: no MFU rather than a guess
