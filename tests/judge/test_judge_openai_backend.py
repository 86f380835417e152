"""The openai backend against real HTTP servers on 127.0.0.1 (a fault-injecting OpenAI-compatible one)."""

from __future__ import annotations

import json

import pytest

from ja_instruct.errors import UserError
from ja_instruct.io import read_jsonl
from ja_instruct.testing.loopback import LoopbackJudgeServer
from ja_instruct.judge.run import run_judging


def _backend(srv, **kw):
    cfg = {"backend": "openai", "model": "loopback-judge", "base_url": srv.base_url, "api_key_env": "JT_NO_KEY",
           "backoff_base": 0.01, "timeout": 5.0}
    cfg.update(kw)
    return cfg


def test_faults_are_retried_and_retry_after_honoured(make_recipe, tmp_path):
    faults = [("429", 0.3), ("500",), ("badjson",)]
    with LoopbackJudgeServer(faults=faults) as srv:
        recipe = make_recipe(models=["model-a"], turns=[1], backend=_backend(srv, concurrency=1))
        out = run_judging(recipe, tmp_path / "j", progress=False)
        log = list(srv.log)
    recs = read_jsonl(out / "judgments.jsonl")
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert [e["fault"] for e in log[:4]] == ["429", "500", "badjson", None]
    assert log[1]["t"] - log[0]["t"] >= 0.29  # waited for Retry-After, not just the 10 ms back-off
    summ = json.loads((out / "summary.json").read_text())
    assert summ["run"]["http_calls"] == 4 + 3 and summ["run"]["http_retries"] == 3
    assert summ["run"]["usage"]["prompt_tokens"] > 0


def test_timeouts_are_retried(make_recipe, tmp_path):
    with LoopbackJudgeServer(faults=[("hang", 3.0)]) as srv:
        recipe = make_recipe(models=["model-a"], turns=[1], limit=1, backend=_backend(srv, timeout=0.5))
        out = run_judging(recipe, tmp_path / "j", progress=False)
        assert len(srv.log) == 2
    assert read_jsonl(out / "judgments.jsonl")[0]["status"] == "ok"


def test_garbage_text_becomes_parse_error_after_retries(make_recipe, tmp_path):
    with LoopbackJudgeServer(always_garbage=True) as srv:
        recipe = make_recipe(models=["model-a"], turns=[1], limit=2, backend=_backend(srv, parse_retries=2))
        out = run_judging(recipe, tmp_path / "j", progress=False)
        assert len(srv.log) == 6  # 2 items x (1 + 2 parse retries)
    recs = read_jsonl(out / "judgments.jsonl")
    assert [r["status"] for r in recs] == ["parse_error", "parse_error"]
    assert all("採点できません" in r["text"] for r in recs)
    summ = json.loads((out / "summary.json").read_text())
    assert summ["models"]["model-a"]["parse_errors"] == 2 and summ["models"]["model-a"]["mean"] is None


def test_one_garbage_answer_then_a_score(make_recipe, tmp_path):
    with LoopbackJudgeServer(faults=[("garbage",)]) as srv:
        recipe = make_recipe(models=["model-a"], turns=[1], limit=1, backend=_backend(srv))
        out = run_judging(recipe, tmp_path / "j", progress=False)
    r = read_jsonl(out / "judgments.jsonl")[0]
    assert r["status"] == "ok" and r["attempts"] == 2


def test_exhausted_retries_fail_loudly_and_resume(make_recipe, tmp_path):
    with LoopbackJudgeServer(faults=[("500",)] * 3) as srv:
        recipe = make_recipe(models=["model-a"], turns=[1], limit=2, backend=_backend(srv, max_retries=1, concurrency=1))
        with pytest.raises(UserError, match="failed after every retry"):
            run_judging(recipe, tmp_path / "j", progress=False)
        summ = json.loads((tmp_path / "j" / "summary.json").read_text())
        assert summ["failed"] == 1 and summ["n_judgments"] == 1
        run_judging(recipe, tmp_path / "j", progress=False)  # the re-run finishes the failed item only
        assert len(srv.log) == 3 + 1 + 1
    assert len(read_jsonl(tmp_path / "j" / "judgments.jsonl")) == 2


def test_concurrency_limit_and_rate_limit(make_recipe, tmp_path):
    with LoopbackJudgeServer(delay=0.2) as srv:
        recipe = make_recipe(backend=_backend(srv, concurrency=3))
        run_judging(recipe, tmp_path / "a", progress=False)
        assert 1 < srv.max_in_flight <= 3
    with LoopbackJudgeServer() as srv:
        recipe = make_recipe(models=["model-a"], turns=[1], backend=_backend(srv, requests_per_minute=600))
        run_judging(recipe, tmp_path / "b", progress=False)
        starts = [e["t"] for e in srv.log]
    assert len(starts) == 4
    # 600/min = one start per 0.1 s. Arrival times at the server can bunch when the CPU is busy
    # (a request sent on time, read late), so the whole span is checked, with room for one delay.
    assert starts[-1] - starts[0] >= 0.25


def test_pairwise_over_http_with_cost(make_recipe, tmp_path):
    with LoopbackJudgeServer() as srv:
        recipe = make_recipe(mode="pairwise", models=["model-a", "model-b"], bootstrap=0,
                             backend=_backend(srv, price_prompt_per_1k=0.01, price_completion_per_1k=0.03))
        out = run_judging(recipe, tmp_path / "j", progress=False)
    summ = json.loads((out / "summary.json").read_text())
    u = summ["run"]["usage"]
    assert summ["run"]["cost"] == pytest.approx((u["prompt_tokens"] * 0.01 + u["completion_tokens"] * 0.03) / 1000)
    assert summ["pairwise"]["games"] == 12


def test_bad_request_is_a_user_error(make_recipe, tmp_path):
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b'{"error": {"message": "model not found"}}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        recipe = make_recipe(limit=1, backend={"backend": "openai", "model": "nope", "base_url": url})
        with pytest.raises(UserError, match="refused"):
            run_judging(recipe, tmp_path / "j", progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
