"""A tiny OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` like a judge (``評価：[[n]]`` or ``[[A]]``,
derived from a hash of the request) after ``delay`` seconds, and can inject faults:
``faults`` is a list consumed one per request (``None`` = answer normally):

* ``("429", retry_after)``: HTTP 429 with a ``Retry-After`` header;
* ``("500",)``: HTTP 500;
* ``("hang", seconds)``: sleep before answering (the client times out);
* ``("garbage",)``: HTTP 200 whose text holds no score;
* ``("badjson",)``: HTTP 200 whose body is not JSON;
* ``("400",)`` / ``("401",)`` / ``("404",)``...: that HTTP status with an OpenAI-style error body.

``gate`` (a `threading.Event`) holds every request until it is set: a test can line up
what happens while calls are in flight. ``refuse`` maps a substring to an HTTP status: every request whose user message contains
it gets that status (e.g. ``{"わかりません": 400}``: a context-length refusal for one answer,
on every try). ``always_garbage`` answers every request without a score. The server records
every request (time, hash of system + user message, fault, Authorization header) in ``log``
and the peak number of requests in flight in ``max_in_flight``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# status -> (message, code) of the OpenAI-style error bodies the server can answer with
_ERRORS = {
    "400": ("This model's maximum context length is 8192 tokens. However, your messages resulted in "
            "9000 tokens. Please reduce the length of the messages.", "context_length_exceeded"),
    "401": ("Incorrect API key provided.", "invalid_api_key"),
    "403": ("You are not allowed to use this model.", "permission_denied"),
    "404": ("The model does not exist or you do not have access to it.", "model_not_found"),
    "413": ("Request too large.", "request_too_large"),
    "422": ("Unprocessable request.", "unprocessable"),
}


class LoopbackJudgeServer:
    """Start with ``with LoopbackJudgeServer(delay=0.3) as srv: srv.base_url``."""

    def __init__(self, delay: float = 0.0, faults: list | None = None, always_garbage: bool = False,
                 refuse: dict[str, int] | None = None, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.faults = list(faults or [])
        self.refuse = dict(refuse or {})
        self.always_garbage = always_garbage
        self.log: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                self._send(200, json.dumps({"object": "list", "data": [{"id": "loopback", "object": "model"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server._handle(self, body, self.headers.get("Authorization", ""))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def message_hash(system: str, user: str) -> str:
        """The same hash the judge stores as ``input_hash`` (`ja_instruct.judge.store.text_hash`)."""
        return hashlib.sha256(json.dumps([system, user], ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]

    def _handle(self, h, body: dict, auth: str = "") -> None:
        msgs = body.get("messages", [])
        system = next((m["content"] for m in msgs if m["role"] == "system"), "")
        user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
            refused = next((str(code) for text, code in self.refuse.items() if text in user), None)
            if refused and fault is None:
                fault = (refused,)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.log.append({"t": time.monotonic(), "hash": self.message_hash(system, user),
                             "fault": fault[0] if fault else None, "auth": auth})
        try:
            if self.gate is not None:
                self.gate.wait(timeout=120)
            if self.delay:
                time.sleep(self.delay)
            if fault and fault[0] == "429":
                return h._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": str(fault[1])})
            if fault and fault[0] == "500":
                return h._send(500, b'{"error": {"message": "boom"}}')
            if fault and fault[0] in _ERRORS:
                message, code = _ERRORS[fault[0]]
                err = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
                return h._send(int(fault[0]), json.dumps(err).encode())
            if fault and fault[0] == "hang":
                time.sleep(fault[1])
            if fault and fault[0] == "badjson":
                return h._send(200, b"<html>not json")
            digest = int(hashlib.sha256(user.encode()).hexdigest()[:8], 16)
            if self.always_garbage or (fault and fault[0] == "garbage"):
                text = "すみません、採点できません。"
            elif "[[A]]" in user or "[[A]]" in system:
                text = "比較しました。\n判定：[[" + "ABC"[digest % 3] + "]]"
            else:
                text = f"採点しました。\n評価：[[{1 + digest % 10}]]"
            resp = {"id": "cmpl-1", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "loopback"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(user) // 2, "completion_tokens": len(text) // 2,
                              "total_tokens": (len(user) + len(text)) // 2}}
            h._send(200, json.dumps(resp, ensure_ascii=False).encode())
        finally:
            with self._lock:
                self.in_flight -= 1

    def start(self) -> "LoopbackJudgeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LoopbackJudgeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
