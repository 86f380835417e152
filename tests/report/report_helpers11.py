"""Judge folders in the issue-11 record format (scale, sample, language guard, answer lengths,
panels, pairwise answer lengths), written by hand for the report tests: no judge, milliseconds.

Records follow docs/judge.md: single-mode records carry ``sample``, ``scale``, ``language``,
``score_unguarded``, ``guarded``, ``reasoning``, ``answer_chars``, ``answer_tokens``; pairwise
records carry ``sample`` 0 and per-model ``answer_chars`` / ``answer_tokens`` / ``reasoning`` dicts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml


def _h(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def write_answers(answers_dir: Path, questions: list[dict], models: list[str], samples: int = 1) -> dict:
    """Answer files (``samples`` choices each, per-choice health with n_tokens; the record's own
    ``health`` is sample 0's, as the generate stage writes it); returns
    ``{(model, qid, turn, sample): text}``."""
    answers_dir.mkdir(parents=True, exist_ok=True)
    texts = {}
    for m in models:
        with open(answers_dir / f"{m}.jsonl", "w", encoding="utf-8") as f:
            for q in questions:
                choices = []
                for k in range(samples):
                    turns = []
                    for t in range(1, len(q["turns"]) + 1):
                        text = "回答です。" * (1 + _h(m, q["question_id"], t, k) % 6)
                        if m == "english-model":
                            text = "This is an answer in English. " * (1 + _h(m, q["question_id"], t, k) % 3)
                        texts[(m, q["question_id"], t, k)] = text
                        turns.append(text)
                    choices.append({"index": k, "turns": turns,
                                    "health": [{"ja_ratio": 0.9, "repeat_ratio": 0.1, "loop": False,
                                                "truncated": False, "empty": False, "n_tokens": len(x) // 2}
                                               for x in turns]})
                f.write(json.dumps({"question_id": q["question_id"], "answer_id": f"{m}-{q['question_id']}",
                                    "model_id": m, "choices": choices, "health": choices[0]["health"], "tstamp": 0.0,
                                    "generation": {"temperature": 0.7}}, ensure_ascii=False) + "\n")
    return texts


def write_questions(path: Path, n: int, categories=("writing", "math"), turns: int = 2) -> list[dict]:
    qs = [{"question_id": i + 1, "category": categories[i % len(categories)],
           "turns": [f"質問{i + 1}の{t + 1}" for t in range(turns)]} for i in range(n)]
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
    return qs


def single_record(m, q, t, k, text, score, *, judge="judge-1", scale=(1, 10), guard="floor") -> dict:
    """A single-mode judgment: an English answer is not-japanese and, with the floor guard, capped."""
    lang = "not-japanese" if text.startswith("This is") else "ok"
    capped = guard == "floor" and lang == "not-japanese" and score > scale[0]
    return {"mode": "single", "question_id": q["question_id"], "category": q["category"], "turn": t, "sample": k,
            "model": m, "model_a": None, "model_b": None, "judge": judge, "prompt": "single-ja@2",
            "score": float(scale[0]) if capped else float(score), "score_unguarded": float(score),
            "guarded": capped, "language": lang, "scale": list(scale), "reasoning": "none",
            "answer_chars": len(text), "answer_tokens": len(text) // 2, "verdict": None, "status": "ok",
            "text": f"評価：[[{score}]]", "repeat": 0, "key": f"{judge}-{m}-{q['question_id']}-{t}-{k}",
            "usage": {"prompt_tokens": 0, "completion_tokens": 0}}


def write_single_dir(judge_dir: Path, answers_dir: Path, questions_path: Path, questions: list[dict],
                     models: list[str], texts: dict, samples: int, *, judges=("judge-1",), scale=(1, 10),
                     backend: str = "openai") -> list[dict]:
    """A single-mode judge folder (judgments.jsonl, config.yaml, a minimal summary.json); returns
    the records. Scores are a hash of (judge, model, question, turn, sample) on ``scale``."""
    lo, hi = scale
    recs = []
    for j in judges:
        for m in models:
            for q in questions:
                for t in range(1, len(q["turns"]) + 1):
                    for k in range(samples):
                        # judge-2 agrees with judge-1 up to +-1 grade
                        base = lo + _h("judge-1", m, q["question_id"], t, k) % (hi - lo + 1)
                        step = _h(j, m, q["question_id"], t, k) % 3 - 1
                        score = base if j == judges[0] else min(hi, max(lo, base + step))
                        recs.append(single_record(m, q, t, k, texts[(m, q["question_id"], t, k)], score, judge=j,
                                                  scale=scale))
    _write_dir(judge_dir, recs, answers_dir, questions_path, "single", judges[0], backend)
    return recs


def write_pairwise_dir(judge_dir: Path, answers_dir: Path, questions_path: Path, questions: list[dict],
                       models: list[str], texts: dict, baseline: str) -> list[dict]:
    """A pairwise-baseline judge folder whose judge prefers the longer answer and, on a hash, the
    answer shown first; records carry the per-model answer lengths."""
    recs = []
    for m in models:
        if m == baseline:
            continue
        for q in questions:
            for t in range(1, len(q["turns"]) + 1):
                ta, tb = texts[(m, q["question_id"], t, 0)], texts[(baseline, q["question_id"], t, 0)]
                for order in ("AB", "BA"):
                    if _h("pos", m, q["question_id"], t, order) % 4 == 0:
                        v = "A" if order == "AB" else "B"  # the first-shown answer
                    else:
                        v = "A" if len(ta) > len(tb) else "B" if len(tb) > len(ta) else "tie"
                    recs.append({"mode": "pairwise", "question_id": q["question_id"], "category": q["category"],
                                 "turn": t, "sample": 0, "model": None, "model_a": m, "model_b": baseline,
                                 "order": order, "judge": "judge-1", "prompt": "pair-ja@2", "score": None,
                                 "verdict": v, "status": "ok", "text": f"[[{v}]]", "repeat": 0,
                                 "reasoning": {m: "none", baseline: "none"},
                                 "answer_chars": {m: len(ta), baseline: len(tb)},
                                 "answer_tokens": {m: len(ta) // 2, baseline: len(tb) // 2},
                                 "key": f"p-{m}-{q['question_id']}-{t}-{order}",
                                 "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
    _write_dir(judge_dir, recs, answers_dir, questions_path, "pairwise-baseline", "judge-1", "openai",
               baseline=baseline)
    return recs


def _write_dir(judge_dir: Path, recs: list[dict], answers_dir: Path, questions_path: Path, mode: str, judge: str,
               backend: str, baseline: str | None = None) -> None:
    judge_dir.mkdir(parents=True, exist_ok=True)
    (judge_dir / "judgments.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                                               encoding="utf-8")
    (judge_dir / "summary.json").write_text(json.dumps({
        "mode": mode, "judge": judge, "prompt": recs[0]["prompt"], "question_set": str(questions_path),
        "answers_dir": str(answers_dir), "models": {}, "pairwise": None}, ensure_ascii=False), encoding="utf-8")
    cfg = {"mode": mode, "answers_dir": str(answers_dir), "questions": str(questions_path),
           "backend": {"backend": backend, "model": judge}}
    if baseline:
        cfg["baseline"] = baseline
    (judge_dir / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
