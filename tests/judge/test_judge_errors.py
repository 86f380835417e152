"""Per-item refusals (HTTP 400/413/422) are stored and counted, the run goes on; setup errors
(401/403/404) stop it with the right hint; a key pasted into api_key_env never shows up anywhere."""

from __future__ import annotations

import json

import pytest

from ja_instruct.errors import UserError
from ja_instruct.io import read_jsonl, read_jsonl_store
from ja_instruct.judge.run import run_judging
from ja_instruct.testing.loopback import LoopbackJudgeServer

# model-b's answer to q1; only that item's request contains it
REFUSED_TEXT = "わかりません"


def _backend(srv, **kw):
    cfg = {"backend": "openai", "model": "loopback-judge", "base_url": srv.base_url, "api_key_env": "JT_NO_KEY",
           "backoff_base": 0.01, "timeout": 5.0, "concurrency": 4}
    cfg.update(kw)
    return cfg


def _refused_hashes(srv):
    return [e["hash"] for e in srv.log if e["fault"] == "400"]


@pytest.mark.parametrize("status", [400, 413, 422])
def test_one_refused_item_is_stored_and_the_run_goes_on(make_recipe, tmp_path, status):
    with LoopbackJudgeServer(refuse={REFUSED_TEXT: status}) as srv:
        recipe = make_recipe(turns=[1], backend=_backend(srv), max_error_rate=0.5)
        out = run_judging(recipe, tmp_path / "j", progress=False)
        calls = len(srv.log)
    recs = read_jsonl(out / "judgments.jsonl")
    bad = [r for r in recs if r["status"] == "error"]
    assert len(recs) == 12 and len(bad) == 1  # 3 models x 4 questions, turn 1
    assert bad[0]["model"] == "model-b" and bad[0]["question_id"] == "q1"
    assert f"HTTP {status}" in bad[0]["error"] and bad[0]["score"] is None
    assert all(r["status"] == "ok" and 1 <= r["score"] <= 10 for r in recs if r is not bad[0])
    assert calls == 12  # a refusal is not retried (neither by back-off nor as a parse error)
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summ["run"]["errors"] == 1 and summ["run"]["judged"] == 12
    assert (out / "manifest.json").is_file()  # 1/12 is within max_error_rate 0.5


def test_error_rate_above_the_limit_fails_after_writing_outputs_and_errors_are_not_retried(
        make_recipe, tmp_path, capsys):
    from ja_instruct.cli import main

    with LoopbackJudgeServer(refuse={REFUSED_TEXT: 400}) as srv:
        make_recipe(turns=[1], backend=_backend(srv))  # default max_error_rate 0: any refusal fails the stage
        recipe = str(tmp_path / "recipe.yaml")
        out = tmp_path / "j"
        args = ["judge", recipe, "--out", str(out), "--no-progress"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "1 of 12 judgment(s)" in err and "refused" in err and "--retry-errors" in err
        assert "maximum context length" in err  # the endpoint's own reason is shown
        assert "credential" not in err.lower() and "JT_NO_KEY" not in err  # a 400 is not a key problem
        # every output is there, the stage is not marked complete
        assert len(read_jsonl(out / "judgments.jsonl")) == 12 and (out / "summary.json").is_file()
        assert not (out / "manifest.json").exists()
        assert len(_refused_hashes(srv)) == 1 and len(srv.log) == 12

        # a re-run does not call the refused item again (and still fails: nothing changed)
        assert main(args) == 2
        capsys.readouterr()
        assert len(srv.log) == 12

        # --retry-errors asks again (the endpoint refuses again: one more call, same outcome)
        assert main(args + ["--retry-errors"]) == 2
        capsys.readouterr()
        assert len(srv.log) == 13 and len(_refused_hashes(srv)) == 2
        assert len(read_jsonl_store(out / "cache.jsonl")) == 13  # the retry appended its new record

        # accepting the refusal completes the stage without any call
        assert main(args + ["--set", "judge.max_error_rate=0.1"]) == 0
        assert len(srv.log) == 13 and (out / "manifest.json").is_file()


def _error_server(status: int):
    import http.server
    import threading

    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.headers.get("Authorization"))
            # a careless server that echoes the credentials it got
            body = json.dumps({"error": {"message": f"denied for {self.headers.get('Authorization')}"}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen


@pytest.mark.parametrize("status,hint", [(401, "API key in $JT_KEY"), (403, "API key in $JT_KEY"),
                                         (404, "judge.backend.model ('nope')")])
def test_setup_errors_stop_the_run_with_a_hint_for_their_cause(make_recipe, tmp_path, monkeypatch, status, hint):
    secret = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("JT_KEY", secret)
    httpd, url, seen = _error_server(status)
    try:
        recipe = make_recipe(limit=2, backend={"backend": "openai", "model": "nope", "base_url": url,
                                               "api_key_env": "JT_KEY", "concurrency": 1})
        with pytest.raises(UserError) as exc:
            run_judging(recipe, tmp_path / "j", progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(seen) == 1 and secret in seen[0]  # the key was sent, once: the run stopped at the first refusal
    text = str(exc.value)
    assert f"HTTP {status}" in text and hint in text
    assert secret not in text  # cut out even though the server echoed it
    assert ("model" in exc.value.hint) == (status == 404)
    assert not read_jsonl_store(tmp_path / "j" / "cache.jsonl")  # nothing stored for a setup error


KEY = "sk-proj-abc123DEF456ghi789JKLmno012PQR"


@pytest.mark.parametrize("how", ["recipe", "--set"])
def test_a_key_in_api_key_env_is_refused_and_shown_nowhere(judge_inputs, tmp_path, capsys, how):
    from judge_helpers import write_recipe

    from ja_instruct.cli import main

    out = tmp_path / "j"
    backend = {"backend": "openai", "model": "m"}
    extra = ["--set", f"judge.backend.api_key_env={KEY}"] if how == "--set" else []
    if how == "recipe":
        backend["api_key_env"] = KEY
    write_recipe(tmp_path / "recipe.yaml", {"questions": judge_inputs["questions"],
                                            "answers_dir": judge_inputs["answers_dir"], "backend": backend})
    assert main(["judge", str(tmp_path / "recipe.yaml"), "--out", str(out), "--no-progress"] + extra) == 2
    cap = capsys.readouterr()
    assert "api_key_env" in cap.err and "looks like an API key" in cap.err
    for text in (cap.out, cap.err):
        assert KEY not in text and KEY[:12] not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "recipe.yaml"]
    assert all(KEY not in p.read_text(encoding="utf-8", errors="replace") for p in written)
    assert not out.exists()


def test_backend_must_be_named(tmp_path, judge_inputs):
    from judge_helpers import write_recipe

    from ja_instruct.recipe import load_recipe

    base = {"questions": judge_inputs["questions"], "answers_dir": judge_inputs["answers_dir"]}
    for judge in (base, dict(base, backend={"model": "gpt-4o"})):
        with pytest.raises(UserError, match=r"judge\.backend\.backend is required.*openai, hf, fake"):
            load_recipe(write_recipe(tmp_path / "recipe.yaml", judge))
