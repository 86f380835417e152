"""Two `ja-instruct judge` processes sharing one cache: each request is sent once, whatever the
timing; a killed process leaves no claim behind. Calls are counted at the server."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from ja_instruct.io import read_jsonl, read_jsonl_store
from ja_instruct.testing.loopback import LoopbackJudgeServer

from judge_helpers import write_recipe

N_ITEMS = 18  # 3 models x 6 (question, turn)


def _start(recipe, out):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ja_instruct.cli", "judge", str(recipe), "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    return proc, lines


def _wait_for(lines: queue.Queue, text: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {timeout} s")


def _until(cond, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _recipe(tmp_path, judge_inputs, srv):
    judge = {"questions": judge_inputs["questions"], "answers_dir": judge_inputs["answers_dir"], "bootstrap": 0,
             "cache": str(tmp_path / "shared-cache.jsonl"),
             "backend": {"backend": "openai", "model": "loopback", "base_url": srv.base_url,
                         "api_key_env": "JT_NO_KEY", "concurrency": 4, "timeout": 60}}
    return write_recipe(tmp_path / "recipe.yaml", judge)


@pytest.mark.slow
def test_two_runs_on_one_cache_send_each_request_once(judge_inputs, tmp_path):
    gate = threading.Event()  # the server holds every answer until both runs are under way
    with LoopbackJudgeServer(gate=gate) as srv:
        recipe = _recipe(tmp_path, judge_inputs, srv)
        a, _ = _start(recipe, tmp_path / "a")
        b = None
        try:
            _until(lambda: len(srv.log) >= 1)  # A has claimed its requests and is calling
            b, b_lines = _start(recipe, tmp_path / "b")
            line = _wait_for(b_lines, "being judged by another run")
            assert f"pid {a.pid}" in line
            gate.set()
            assert a.wait(timeout=120) == 0 and b.wait(timeout=120) == 0
        finally:
            gate.set()
            for p in (a, b):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        hashes = [e["hash"] for e in srv.log]
    assert len(hashes) == N_ITEMS and len(set(hashes)) == N_ITEMS  # exactly one call per item
    stored = read_jsonl_store(tmp_path / "shared-cache.jsonl")
    assert len(stored) == N_ITEMS and len({r["key"] for r in stored}) == N_ITEMS  # no line twice, none torn
    ra, rb = (read_jsonl(tmp_path / d / "judgments.jsonl") for d in ("a", "b"))
    assert len(ra) == len(rb) == N_ITEMS and ra == rb


@pytest.mark.slow
def test_a_killed_run_leaves_no_claim_behind(judge_inputs, tmp_path):
    gate = threading.Event()
    with LoopbackJudgeServer(gate=gate) as srv:
        recipe = _recipe(tmp_path, judge_inputs, srv)
        a, _ = _start(recipe, tmp_path / "a")
        b = None
        try:
            _until(lambda: len(srv.log) >= 1)
            b, b_lines = _start(recipe, tmp_path / "b")
            _wait_for(b_lines, "being judged by another run")
            a.send_signal(signal.SIGKILL)  # A dies holding every claim, with calls in flight
            a.wait()
            n_a = len(srv.log)
            gate.set()
            assert b.wait(timeout=120) == 0  # B takes over instead of waiting forever
        finally:
            gate.set()
            for p in (a, b):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        b_hashes = [e["hash"] for e in srv.log[n_a:]]
    assert len(b_hashes) == len(set(b_hashes)) == N_ITEMS  # A stored nothing; B judged each item once
    assert len(read_jsonl(tmp_path / "b" / "judgments.jsonl")) == N_ITEMS
    assert len(read_jsonl_store(tmp_path / "shared-cache.jsonl")) == N_ITEMS
