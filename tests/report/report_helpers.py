"""Helpers of the report tests: a fake judgment generator over real or synthetic answers, Chromium.

The report reads only files, so these helpers write judge folders in the shared format
(judgments.jsonl + summary.json + config.yaml) with deterministic pseudo-scores: no
judge model, no network, milliseconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path

import yaml

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and Path("/usr/bin/chromium").exists():
    CHROMIUM = "/usr/bin/chromium"


def _h(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def fake_score(model: str, qid: str, turn: int, text: str, bias: float = 0.0) -> float:
    """Deterministic 1-10 pseudo-score: longer answers and a per-model bias score higher."""
    base = 2 + min(len(text), 600) / 120 + (_h(model, qid, turn) % 4) + bias
    return float(max(1, min(10, round(base))))


def write_judge_dir(judge_dir: Path, answers_dir: Path, questions: Path, models: list[str],
                    pairwise: bool = False, parse_error_every: int = 0, judge: str = "fake-judge",
                    backend: str = "fake", bias: dict[str, float] | None = None, error_every: int = 0) -> Path:
    """Write judgments.jsonl/summary.json/config.yaml judging ``models``' answers like the judge stage.

    Every ``parse_error_every``-th single judgment is a parse error, every ``error_every``-th one
    a refused judge call (``status: error`` with a message)."""
    bias = bias or {}
    qs = {}
    for line in questions.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            qs[q["question_id"]] = q
    answers = {}
    for m in models:
        answers[m] = {}
        for line in (answers_dir / f"{m}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                a = json.loads(line)
                answers[m][a["question_id"]] = a["choices"][0]["turns"]
    recs = []
    n = 0
    for qid, q in qs.items():
        for m in models:
            for t, text in enumerate(answers[m].get(qid, []), 1):
                n += 1
                err = parse_error_every and n % parse_error_every == 0
                refused = not err and error_every and n % error_every == 0
                score = None if err or refused else fake_score(m, qid, t, text, bias.get(m, 0.0))
                rec = {"mode": "single", "question_id": qid, "category": q.get("category"), "turn": t,
                       "model": m, "model_a": None, "model_b": None, "judge": judge,
                       "prompt": "single-ja@1", "score": score, "verdict": None,
                       "status": "parse_error" if err else "error" if refused else "ok",
                       "text": "unparseable" if err else "" if refused else
                       f"回答の評価です。長さ {len(text)} 文字。評価：[[{score:g}]]",
                       "repeat": 0, "key": f"s-{m}-{qid}-{t}", "usage": {"prompt_tokens": 0, "completion_tokens": 0}}
                if refused:
                    rec["error"] = f"HTTP 400: maximum context length exceeded ({m} {qid} turn {t})"
                recs.append(rec)
        if pairwise:
            for ma, mb in itertools.combinations(models, 2):
                ta, tb = answers[ma].get(qid, [""])[0], answers[mb].get(qid, [""])[0]
                sa, sb = fake_score(ma, qid, 1, ta, bias.get(ma, 0)), fake_score(mb, qid, 1, tb, bias.get(mb, 0))
                for order in ("AB", "BA"):
                    v = "A" if sa > sb else "B" if sb > sa else "tie"
                    if order == "BA" and _h(qid, ma, mb) % 5 == 0:  # an inconsistent judge, sometimes
                        v = "A"
                    recs.append({"mode": "pairwise", "question_id": qid, "category": q.get("category"), "turn": 1,
                                 "model": None, "model_a": ma, "model_b": mb, "order": order, "judge": judge,
                                 "prompt": "pair-ja@1", "score": None, "verdict": v, "status": "ok",
                                 "text": f"比較しました。[[{v}]]", "repeat": 0, "key": f"p-{ma}-{mb}-{qid}-{order}",
                                 "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
    judge_dir.mkdir(parents=True, exist_ok=True)
    with open(judge_dir / "judgments.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (judge_dir / "summary.json").write_text(json.dumps({
        "mode": "pairwise" if pairwise else "single", "judge": judge, "prompt": "single-ja@1",
        "question_set": str(questions), "answers_dir": str(answers_dir), "models": {}, "pairwise": None},
        ensure_ascii=False), encoding="utf-8")
    (judge_dir / "config.yaml").write_text(yaml.safe_dump({
        "mode": "single", "answers_dir": str(answers_dir), "questions": str(questions),
        "backend": {"backend": backend, "model": judge}}, allow_unicode=True), encoding="utf-8")
    return judge_dir


def write_synthetic_run(root: Path) -> dict:
    """A tiny two-turn run: 2 models x 3 questions, with health records and hostile text."""
    answers_dir = root / "answers"
    answers_dir.mkdir(parents=True)
    questions = root / "questions.jsonl"
    qs = [{"question_id": f"q{i}", "category": cat, "turns": [f"質問{i}: {cat}について説明してください。", "もっと詳しく。"]}
          for i, cat in enumerate(["地理", "歴史", "<b>bold</b>"])]
    questions.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
    texts = {
        "base": ["<script>document.documentElement.setAttribute('data-pwned','1')</script>", "Hello hello hello"],
        "tuned": ["日本の首都は東京です。東京は関東地方にあります。" * 3, "<img src=x onerror=\"alert(1)\">さらに詳しく説明します。"],
    }
    for m, turns in texts.items():
        with open(answers_dir / f"{m}.jsonl", "w", encoding="utf-8") as f:
            for q in qs:
                health = [{"ja_ratio": 0.0 if m == "base" else 0.95, "repeat_ratio": 0.8 if m == "base" else 0.1,
                           "loop": m == "base", "truncated": m == "base", "empty": False, "n_tokens": 10}
                          for _ in turns]
                f.write(json.dumps({"question_id": q["question_id"], "answer_id": f"{m}-{q['question_id']}",
                                    "model_id": m, "choices": [{"index": 0, "turns": turns}], "tstamp": 0.0,
                                    "generation": {"temperature": 0.0, "max_new_tokens": 64}, "health": health},
                                   ensure_ascii=False) + "\n")
    judge_dir = write_judge_dir(root / "judge", answers_dir, questions, ["base", "tuned"], pairwise=True,
                                parse_error_every=5, bias={"tuned": 2.0})
    return {"answers": answers_dir, "questions": questions, "judge": judge_dir}


RAKUDA_MODELS = ["gpt-4-20230713", "claude-2", "elyza-7b-instruct", "rinna-3.6b-sft", "line-3.6b-sft"]


def run_chromium(args: list[str], tmp: Path, timeout: float = 90) -> str:
    """Run headless Chromium isolated from the network and any user profile; return stdout."""
    import subprocess

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"chromium failed ({res.returncode}): {res.stderr[-2000:]}")
    return res.stdout
