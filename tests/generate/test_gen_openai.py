"""The openai backend against real HTTP servers on 127.0.0.1 (real openai SDK client)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ja_instruct.errors import UserError
from ja_instruct.generate.backends import OpenAIBackend, SamplingParams
from ja_instruct.generate.config import ModelSpec
from ja_instruct.generate.run import run_generation
from ja_instruct.io import read_jsonl_store
from ja_instruct.recipe import load_recipe


class ChatServer:
    """A minimal OpenAI-compatible chat-completions server: records requests, tracks concurrency,
    fails the first ``fail_first`` requests with a 500, answers 401 to a wrong key."""

    def __init__(self, fail_first: int = 0, key: str = "sk-test", delay: float = 0.05):
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = self.max_in_flight = self.errors = 0
        self.fail_first, self.key, self.delay = fail_first, key, delay
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.auth.append(self.headers.get("Authorization", ""))
                    if server.errors < server.fail_first:
                        server.errors += 1
                        return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                    if self.headers.get("Authorization") != f"Bearer {server.key}":
                        return self._send(401, {"error": {"message": "bad key", "type": "invalid_api_key"}})
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(server.delay)
                with server.lock:
                    server.in_flight -= 1
                last = body["messages"][-1]["content"]
                text = f"「{last}」への回答です。" + ("長い" * 10 if body["max_tokens"] < 8 else "")
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "length" if body["max_tokens"] < 8 else "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}})

            def _send(self, code, obj):
                data = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ChatServer(fail_first=1)
    yield s
    s.close()


def test_run_against_local_endpoint(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "sk-test")
    q = tmp_path / "q.jsonl"
    rows = [{"question_id": i, "category": "writing" if i == 0 else "地理",
             "turns": [f"質問{i}"] + (["続きの質問"] if i == 0 else [])} for i in range(8)]
    q.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nout_dir: {tmp_path / 'run'}\nseed: 7\ngenerate:\n  questions: {q}\n"
                      f"  category_temperature: {{writing: 0.7}}\n  models:\n"
                      f"    - {{id: api-model, backend: openai, path: served-name, base_url: '{server.url}',\n"
                      f"       api_key_env: MY_TEST_KEY, concurrency: 3, send_top_k: true}}\n", encoding="utf-8")
    out = run_generation(load_recipe(recipe))
    recs = {r["question_id"]: r for r in read_jsonl_store(out / "api-model.jsonl")}
    assert sorted(recs) == list(range(8))
    assert server.errors == 1 and len(server.requests) == 9  # the 500 was retried by the SDK
    assert all(a == "Bearer sk-test" for a in server.auth)  # the key comes from the named env var
    assert 2 <= server.max_in_flight <= 3  # concurrent, within the limit
    assert recs[0]["choices"][0]["turns"] == ["「質問0」への回答です。", "「続きの質問」への回答です。"]
    second = next(r for r in server.requests if len(r["messages"]) == 3)
    assert second["messages"][1] == {"role": "assistant", "content": "「質問0」への回答です。"}
    by_q = {r["messages"][0]["content"]: r for r in server.requests if len(r["messages"]) == 1}
    assert by_q["質問0"]["temperature"] == 0.7 and by_q["質問1"]["temperature"] == 1.0
    assert by_q["質問1"]["model"] == "served-name" and by_q["質問1"]["top_p"] == 0.95
    assert by_q["質問1"]["top_k"] == 50 and by_q["質問1"]["seed"] == 7 and by_q["質問1"]["max_tokens"] == 512
    assert recs[1]["health"][0]["n_tokens"] == 7 and not recs[1]["health"][0]["truncated"]
    assert "sk-test" not in (out / "config.yaml").read_text()  # configs hold the env var's name only


def test_truncation_bad_key_and_missing_key(monkeypatch):
    s = ChatServer()
    try:
        spec = ModelSpec(id="m", backend="openai", base_url=s.url, api_key_env="MY_TEST_KEY")
        monkeypatch.setenv("MY_TEST_KEY", "sk-test")
        [g] = OpenAIBackend(spec, None).generate([[{"role": "user", "content": "こんにちは"}]],
                                                 SamplingParams(max_new_tokens=4))
        assert g.truncated and "top_k" not in s.requests[-1]  # top_k only with send_top_k
        monkeypatch.setenv("MY_TEST_KEY", "sk-wrong")
        with pytest.raises(UserError, match="AuthenticationError 401"):
            OpenAIBackend(spec, None).generate([[{"role": "user", "content": "x"}]], SamplingParams())
        monkeypatch.delenv("MY_TEST_KEY")
        assert OpenAIBackend.api_key(spec) == "EMPTY"  # a local endpoint needs no key
        remote = spec.model_copy(update={"base_url": "https://api.example.com/v1"})
        with pytest.raises(UserError, match="MY_TEST_KEY"):
            OpenAIBackend.check(remote, None)
    finally:
        s.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn")),
                    reason="`transformers serve` needs fastapi + uvicorn (pip install 'transformers[serving]')")
def test_transformers_serve_with_tiny_model(tiny_model_dir, tmp_path):
    """A real `transformers serve` process with the tiny local model and the real client."""
    from transformers import AutoTokenizer

    model_dir = tmp_path / "chat-model"
    import shutil

    shutil.copytree(tiny_model_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    from ja_instruct.data.templates import install_chat_template

    install_chat_template(tok, "plamo")  # the server needs a chat template
    tok.save_pretrained(model_dir)
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), str(model_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        import httpx

        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.skip(f"`transformers serve` did not start: {proc.stderr.read().decode()[-300:] if proc.poll() is not None else 'timeout'}")
            time.sleep(0.5)
        spec = ModelSpec(id="served", backend="openai", path=str(model_dir), base_url=f"http://127.0.0.1:{port}/v1",
                         concurrency=2, max_retries=0, timeout=60)
        gens = OpenAIBackend(spec, None).generate(
            [[{"role": "user", "content": "日本の首都は？"}], [{"role": "user", "content": "富士山"}]],
            SamplingParams(temperature=0.0, max_new_tokens=5))
        assert len(gens) == 2 and all(g.n_tokens is None or g.n_tokens <= 6 for g in gens)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
