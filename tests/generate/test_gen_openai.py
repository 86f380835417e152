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
from ja_instruct.generate.backends import OpenAIBackend, SamplingParams, openai_extras, sends_extra
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
        assert g.truncated and s.requests[-1]["top_k"] == 50  # a local server gets top_k by default
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


# What each server kind must receive for top_k 20 and penalty 1.1 when sampling (their own names and
# defaults: llama.cpp penalises a 64-token window and cuts at top_k 40 / min_p 0.05 unless told).
EXPECTED_EXTRAS = {
    "vllm": {"top_k": 20, "repetition_penalty": 1.1},
    "llama.cpp": {"top_k": 20, "repeat_penalty": 1.1, "repeat_last_n": -1, "min_p": 0.0},
    "transformers": {"generation_config": {"top_k": 20, "repetition_penalty": 1.1, "do_sample": True}},
}


@pytest.fixture
def keyed(monkeypatch):
    """A ChatServer, and the environment variable (MY_TEST_KEY) holding its key."""
    monkeypatch.setenv("MY_TEST_KEY", "sk-test")
    s = ChatServer(delay=0.0)
    yield s
    s.close()


@pytest.mark.parametrize("kind", sorted(EXPECTED_EXTRAS))
def test_sampling_settings_reach_the_server(kind, keyed, caplog):
    s = keyed
    spec = ModelSpec(id="m", backend="openai", base_url=s.url, server=kind, max_retries=0, api_key_env="MY_TEST_KEY")
    OpenAIBackend(spec, None).generate([[{"role": "user", "content": "こんにちは"}]],
                                       SamplingParams(temperature=0.7, top_k=20, repetition_penalty=1.1))
    body = s.requests[-1]
    extras = {k: v for k, v in body.items() if k not in ("model", "messages", "temperature", "top_p",
                                                              "max_tokens", "seed")}
    if "generation_config" in extras:
        extras["generation_config"] = json.loads(extras["generation_config"])
    assert extras == EXPECTED_EXTRAS[kind]
    assert body["temperature"] == 0.7 and body["top_p"] == 0.95
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # everything was sent


def test_greedy_sends_the_penalty_even_at_one(keyed):
    s = keyed
    spec = ModelSpec(id="m", backend="openai", base_url=s.url, max_retries=0, api_key_env="MY_TEST_KEY")
    OpenAIBackend(spec, None).generate([[{"role": "user", "content": "x"}]],
                                       SamplingParams(temperature=0.0, repetition_penalty=1.0))
    # the server's own default (llama.cpp's was 1.1) must not stand in for the recipe's 1.0;
    # top_k cannot change a greedy answer and stays out
    assert s.requests[-1]["repetition_penalty"] == 1.0 and "top_k" not in s.requests[-1]


def test_settings_not_sent_are_reported_once(keyed, caplog):
    s = keyed
    spec = ModelSpec(id="gpt", backend="openai", base_url=s.url, send_extra=False, max_retries=0,
                     api_key_env="MY_TEST_KEY")
    backend = OpenAIBackend(spec, None)
    params = SamplingParams(temperature=0.7, top_k=20, repetition_penalty=1.1)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            backend.generate([[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]], params)
    assert len(s.requests) == 4
    assert not any(k in r for r in s.requests for k in ("top_k", "repetition_penalty", "repeat_penalty",
                                                        "generation_config"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "top_k=20" in warnings[0] and "repetition_penalty=1.1" in warnings[0]
    assert openai_extras(spec, params).not_sent == ("top_k", "repetition_penalty")
    # Another server fills what is not sent with its own defaults (vLLM: the model's generation_config),
    # so even neutral values are "not sent" there ...
    assert openai_extras(spec, SamplingParams(temperature=0.7, top_k=0, repetition_penalty=1.0)).not_sent == (
        "top_k", "repetition_penalty")
    assert openai_extras(spec, SamplingParams(temperature=0.0, top_k=20)).not_sent == ("repetition_penalty",)
    # ... while what OpenAI's own API does anyway is not: no top_k cut, no penalty, or greedy decoding
    api = spec.model_copy(update={"base_url": None})
    assert openai_extras(api, SamplingParams(temperature=0.7, top_k=0, repetition_penalty=1.0)).not_sent == ()
    assert openai_extras(api, SamplingParams(temperature=0.0, top_k=20, repetition_penalty=1.0)).not_sent == ()


@pytest.mark.parametrize(("base_url", "send_extra", "send_top_k", "expected"), [
    (None, None, False, False),                                  # the SDK's default: api.openai.com
    ("https://api.openai.com/v1", None, False, False),
    ("https://x.openai.azure.com/openai", None, False, False),
    ("http://127.0.0.1:8000/v1", None, False, True),
    ("https://api.together.xyz/v1", None, False, True),
    ("https://api.openai.com/v1", True, False, True),            # the user's word wins
    ("http://127.0.0.1:8000/v1", False, False, False),
    ("https://api.openai.com/v1", None, True, True),             # the older key still means "send"
])
def test_who_gets_extra_settings(base_url, send_extra, send_top_k, expected):
    spec = ModelSpec(id="m", backend="openai", base_url=base_url, send_extra=send_extra, send_top_k=send_top_k)
    assert sends_extra(spec) is expected


def test_answer_records_say_what_was_not_sent(keyed, tmp_path):
    s = keyed
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question_id": 1, "category": "地理", "turns": ["質問"]}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\nout_dir: {tmp_path / 'run'}\ngenerate:\n  questions: {q}\n  temperature: 0.0\n"
        f"  repetition_penalty: 1.1\n  models:\n"
        f"    - {{id: local, backend: openai, base_url: '{s.url}', api_key_env: MY_TEST_KEY}}\n"
        f"    - {{id: strict, backend: openai, base_url: '{s.url}', api_key_env: MY_TEST_KEY, send_extra: false}}\n",
        encoding="utf-8")
    out = run_generation(load_recipe(recipe))
    local = read_jsonl_store(out / "local.jsonl")[0]["generation"]
    strict = read_jsonl_store(out / "strict.jsonl")[0]["generation"]
    assert local["repetition_penalty"] == 1.1 and "not_sent" not in local
    assert strict["repetition_penalty"] == 1.1 and strict["not_sent"] == ["repetition_penalty"]
    sent = [r.get("repetition_penalty") for r in s.requests]
    assert sorted(sent, key=str) == [1.1, None]  # one request each; only `local` carried it


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
                         concurrency=2, max_retries=0, timeout=60, server="transformers")
        gens = OpenAIBackend(spec, None).generate(
            [[{"role": "user", "content": "日本の首都は？"}], [{"role": "user", "content": "富士山"}]],
            SamplingParams(temperature=0.0, max_new_tokens=5))
        assert len(gens) == 2 and all(g.n_tokens is None or g.n_tokens <= 6 for g in gens)
        # the penalty reaches the model through `generation_config` (the server refuses unknown fields with
        # 422): a random model repeats itself greedily, and a strong penalty changes that
        conv = [[{"role": "user", "content": "日本の首都は？"}]]
        plain, penalised = (OpenAIBackend(spec, None).generate(conv, SamplingParams(
            temperature=0.0, max_new_tokens=24, repetition_penalty=p))[0].text for p in (1.0, 50.0))
        assert plain != penalised
    finally:
        proc.terminate()
        proc.wait(timeout=20)
