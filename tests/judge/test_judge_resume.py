"""Kill-and-resume: a judge process SIGKILLed mid-way, then re-run: nothing lost, nothing duplicated,
no repeated API call for a finished item (calls counted at the server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ja_instruct.io import read_jsonl, read_jsonl_store
from ja_instruct.testing.loopback import LoopbackJudgeServer
from ja_instruct.judge.run import run_judging

from judge_helpers import write_recipe


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(judge_inputs, tmp_path):
    out = tmp_path / "judge"
    with LoopbackJudgeServer(delay=0.15) as srv:
        judge = {"questions": judge_inputs["questions"], "answers_dir": judge_inputs["answers_dir"], "bootstrap": 0,
                 "backend": {"backend": "openai", "model": "loopback", "base_url": srv.base_url,
                             "api_key_env": "JT_NO_KEY", "concurrency": 2}}
        recipe_path = write_recipe(tmp_path / "recipe.yaml", judge)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "ja_instruct.cli", "judge", str(recipe_path), "--out", str(out),
                                 "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        store = out / "cache.jsonl"
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if store.exists() and len(read_jsonl_store(store)) >= 5:
                    break
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done = read_jsonl_store(store)
        assert 5 <= len(done) < 18, f"the kill came too late or too early ({len(done)} stored)"
        assert not (out / "judgments.jsonl").exists()
        calls_before = len(srv.log)
        done_hashes = {r["input_hash"] for r in done}

        run_judging(__import__("ja_instruct.recipe", fromlist=["x"]).load_recipe(recipe_path), out, progress=False)
        second = srv.log[calls_before:]

    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == 18 and len({r["key"] for r in recs}) == 18  # nothing lost, nothing duplicated
    stored = read_jsonl_store(out / "cache.jsonl")
    assert len(stored) == len({r["key"] for r in stored}) == 18  # no record appended twice
    assert not done_hashes & {e["hash"] for e in second}  # no finished item asked again
    assert len(second) == 18 - len(done)
