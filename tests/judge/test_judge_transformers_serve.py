"""The openai backend against a real `transformers serve` (FastAPI + uvicorn) with the tiny local model."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ja_instruct.io import read_jsonl
from ja_instruct.judge.run import run_judging

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_judge_against_transformers_serve(make_recipe, tiny_model_dir, tmp_path):
    for mod in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"`transformers serve` needs {mod} (pip install 'transformers[serving]')")
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        pytest.skip("the `transformers` CLI is not installed next to this Python")
    model = tmp_path / "tiny"  # the tiny tokenizer has no chat template; the server needs one
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([str(exe), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.skip(f"transformers serve exited: {proc.stderr.read().decode()[-300:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("transformers serve did not come up within 90 s")
                time.sleep(0.5)
        recipe = make_recipe(models=["model-a"], turns=[1], limit=2, backend={
            "backend": "openai", "model": str(model), "base_url": f"http://127.0.0.1:{port}/v1",
            "api_key_env": "JT_NO_KEY", "max_tokens": 8, "parse_retries": 0, "concurrency": 2})
        out = run_judging(recipe, tmp_path / "j", progress=False)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    recs = read_jsonl(out / "judgments.jsonl")
    # a random tiny model writes noise: each judgment is stored, ok or parse_error, never dropped
    assert len(recs) == 2 and all(r["status"] in ("ok", "parse_error") and r["text"] for r in recs)
    assert all(r["usage"]["prompt_tokens"] > 0 and r["usage"]["completion_tokens"] > 0 for r in recs)
