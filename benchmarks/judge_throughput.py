"""Judge throughput: 4 models x 40 questions against a loopback OpenAI-compatible endpoint
that answers after 300 ms.

Compares our judge at concurrency 16 with sequential judging (concurrency 1: FastChat's
``--parallel 1`` behaviour, one request at a time), then re-runs the concurrent job on its
cache, which must make 0 calls. Target: >= 10x. Uses the real Rakuda questions/answers in
../shared/data when present (else synthetic ones).

    python benchmarks/judge_throughput.py [--json PATH] [--delay 0.3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JA_INSTRUCT_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_inputs(tmp: Path, n_models: int, n_questions: int) -> tuple[str, str]:
    """(questions path, answers dir): real Rakuda data if available, else synthetic."""
    answers = tmp / "answers"
    answers.mkdir()
    rakuda = SHARED / "rakuda"
    if (rakuda / "questions.jsonl").is_file():
        files = sorted((rakuda / "answers").glob("*.jsonl"))[:n_models]
        for f in files:
            (answers / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
        return str(rakuda / "questions.jsonl"), str(answers)
    q = tmp / "questions.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "category": "general", "turns": [f"質問{i}について説明してください。"]},
                                    ensure_ascii=False) + "\n" for i in range(n_questions)), encoding="utf-8")
    for m in range(n_models):
        (answers / f"model-{m}.jsonl").write_text("".join(json.dumps(
            {"question_id": i, "answer_id": f"{m}-{i}", "model_id": f"model-{m}",
             "choices": [{"index": 0, "turns": [f"モデル{m}の回答{i}。" * (1 + (i + m) % 5)]}]}, ensure_ascii=False) + "\n"
            for i in range(n_questions)), encoding="utf-8")
    return str(q), str(answers)


def run_once(questions: str, answers: str, url: str, out: Path, concurrency: int, n_questions: int) -> dict:
    from ja_instruct.judge.config import JudgeConfig
    from ja_instruct.judge.run import judge_config

    cfg = JudgeConfig.model_validate({
        "questions": questions, "answers_dir": answers, "limit": n_questions, "bootstrap": 0,
        "backend": {"backend": "openai", "model": "loopback", "base_url": url, "api_key_env": "JT_NO_KEY",
                    "concurrency": concurrency}})
    t0 = time.perf_counter()
    judge_config(cfg, out, progress=False)
    wall = time.perf_counter() - t0
    summ = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return {"seconds": wall, "judged": summ["run"]["judged"], "cached": summ["run"]["cached"],
            "calls": summ["run"]["http_calls"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--delay", type=float, default=0.3, help="server latency per request (s)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--questions", type=int, default=40)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(REPO / "src"))
    from ja_instruct.testing.loopback import LoopbackJudgeServer

    with tempfile.TemporaryDirectory() as d, LoopbackJudgeServer(delay=args.delay) as srv:
        tmp = Path(d)
        questions, answers = make_inputs(tmp, args.models, args.questions)
        # warm-up (imports of openai/scipy/jinja2, first connection): not timed, not counted
        run_once(questions, answers, srv.base_url, tmp / "warmup", 1, 1)
        n0 = len(srv.log)
        conc = run_once(questions, answers, srv.base_url, tmp / "concurrent", args.concurrency, args.questions)
        conc["server_calls"] = len(srv.log) - n0
        n0 = len(srv.log)
        cached = run_once(questions, answers, srv.base_url, tmp / "concurrent", args.concurrency, args.questions)
        cached["server_calls"] = len(srv.log) - n0
        n0 = len(srv.log)
        seq = run_once(questions, answers, srv.base_url, tmp / "sequential", 1, args.questions)
        seq["server_calls"] = len(srv.log) - n0
    items = conc["judged"]
    speedup = seq["seconds"] / conc["seconds"]
    res = {"models": args.models, "questions": args.questions, "items": items, "delay_s": args.delay,
           "concurrency": args.concurrency, "sequential": seq, "concurrent": conc, "cached_rerun": cached,
           "speedup": speedup, "target_speedup": 10.0, "speedup_ok": speedup >= 10.0,
           "cached_calls_ok": cached["server_calls"] == 0}
    print(f"judge throughput: {args.models} models x {args.questions} questions = {items} judgments, "
          f"endpoint latency {args.delay * 1000:.0f} ms")
    print(f"  sequential (concurrency 1):   {seq['seconds']:7.2f} s  {items / seq['seconds']:6.2f} judgments/s  "
          f"({seq['server_calls']} calls)")
    print(f"  ours (concurrency {args.concurrency}):      {conc['seconds']:7.2f} s  {items / conc['seconds']:6.2f} judgments/s  "
          f"({conc['server_calls']} calls)")
    print(f"  speed-up: {speedup:.1f}x (target >= 10x: {'OK' if speedup >= 10 else 'MISSED'})")
    print(f"  cached re-run: {cached['seconds']:.2f} s, {cached['server_calls']} calls "
          f"({'OK' if cached['server_calls'] == 0 else 'UNEXPECTED CALLS'})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
