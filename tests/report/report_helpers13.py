"""A base -> SFT -> DPO run written by hand for the report tests (issue 13): no model, no judge.

The layout is what the stages write: an SFT run folder (``sft/train/{config.yaml, manifest.json,
final/}``), the DPO recipe's own train folder (``run/train/`` with ``details["method"] == "dpo"``,
``details["dpo"]`` and a metrics.jsonl), its answers for three models (base, the SFT folder,
``trained``), a reference_nll.json and a judge folder of fake scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from ja_instruct.manifest import make_manifest, write_manifest
from report_helpers import write_judge_dir

BASE_PATH = "embedded:tiny-base"
QUESTIONS = 12
TOKENS = [30, 50, 40, 60, 20, 45]
# per reference: base > SFT > DPO (DPO lower than SFT on every reference, by a margin)
NLL = {"base": [2.0, 2.2, 1.9, 2.4, 2.1, 2.0], "sft": [1.6, 1.7, 1.5, 2.0, 1.7, 1.6],
       "dpo": [1.4, 1.5, 1.3, 1.8, 1.5, 1.4]}
# answers that end (EOS) out of 24 turns: base 6, SFT 20, DPO 22 (SFT -> DPO too small to tell)
ENDED = {"base": 6, "sft": 20, "dpo": 22}
DPO_DETAILS = {
    "beta": 0.5, "loss": "sigmoid", "label_smoothing": 0.0, "sft_weight": 0.0,
    "pairs": {"train": 44, "heldout": 6, "path": None, "fingerprint": "abc",
              "meta": {"license": "Apache-2.0", "judge": "gpt-4o-2024-08-06", "judge_terms": "OpenAI terms of use"}},
    "reference": {"cache": "pairs/reference/abc.pt", "reused": False},
    "eval": [{"step": 0, "accuracy": 0.0, "margin": 0.0, "loss": 0.6931, "pairs": 6},
             {"step": 10, "accuracy": 0.5, "margin": 0.21, "loss": 0.61, "pairs": 6},
             {"step": 20, "accuracy": 0.8333, "margin": 0.734, "loss": 0.452, "pairs": 6}],
    "train_last": {"rewards/chosen": 0.412, "rewards/rejected": -0.598, "rewards/margins": 1.01,
                   "rewards/accuracies": 0.9, "loss": 0.388},
}


def _conv(nlls: list[float]) -> dict:
    per = [{"id": f"ref{i}", "nll": n * t, "tokens": t} for i, (n, t) in enumerate(zip(nlls, TOKENS))]
    total, tok = sum(p["nll"] for p in per), sum(TOKENS)
    return {"fingerprint": "f", "mean_nll": total / tok, "perplexity": math.exp(total / tok), "tokens": tok,
            "conversations": len(per), "skipped": 0, "per_conversation": per}


def _train_folder(train: Path, model: str, method: str | None, details: dict | None = None,
                  metrics: list[dict] | None = None) -> Path:
    """A train stage folder: config.yaml, final/ (a model card), metrics.jsonl, manifest.json last."""
    (train / "final").mkdir(parents=True)
    (train / "final" / "README.md").write_text(f"# model card\n\ntrained from {model} ({method or 'sft'})\n",
                                               encoding="utf-8")
    cfg = {"model": model, **({"method": method} if method == "dpo" else {})}
    (train / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    if metrics is not None:
        (train / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics), encoding="utf-8")
    info = {"steps": 20, **({"method": method} if method else {}), **(details or {})}
    write_manifest(train, make_manifest("train", cfg, {"base_model": "x"}, {"final": "final"}, details=info))
    return train / "final"


def dpo_metrics() -> list[dict]:
    """metrics.jsonl of the DPO run: 20 steps whose margin grows, held-out lines at 0, 10, 20;
    steps 11-12 logged twice (a resumed run): the second line is the one that counts."""
    lines = [{"step": s, "loss": 0.69 - 0.015 * s, "lr": 1e-6, "rewards/chosen": 0.02 * s,
              "rewards/rejected": -0.03 * s, "rewards/margins": 0.05 * s, "rewards/accuracies": min(1.0, 0.05 * s),
              "pairs": 4, "run": "a"} for s in range(1, 13)]
    lines += [{"step": s, "loss": 0.69 - 0.015 * s, "lr": 1e-6, "rewards/chosen": 0.02 * s,
               "rewards/rejected": -0.03 * s, "rewards/margins": 0.05 * s + 0.5, "rewards/accuracies": 0.9,
               "pairs": 4, "run": "b"} for s in range(11, 21)]
    for e in DPO_DETAILS["eval"]:
        lines.append({"step": e["step"], "eval": True, "eval/accuracy": e["accuracy"], "eval/margin": e["margin"],
                      "eval/loss": e["loss"], "run": "a" if e["step"] < 11 else "b"})
    return lines


def write_dpo_run(root: Path, backend: str = "fake", sft_method: str | None = "sft") -> dict:
    """The three-model run; returns its folders. ``sft_method`` None: an SFT run from before
    ``details["method"]`` existed."""
    sft_final = _train_folder(root / "sft" / "train", BASE_PATH, sft_method)
    run = root / "run"
    details = {"dpo": {**DPO_DETAILS, "pairs": {**DPO_DETAILS["pairs"], "path": str(run / "pairs")}}}
    _train_folder(run / "train", str(sft_final), "dpo", details, dpo_metrics())
    (run / "pairs").mkdir()
    (run / "pairs" / "config.yaml").write_text("samples: 4\nmargin: 1.0\n", encoding="utf-8")
    answers = run / "answers"
    answers.mkdir()
    questions = run / "questions.jsonl"
    qs = [{"question_id": f"q{i}", "category": "地理", "turns": [f"質問{i}", "続けて"]} for i in range(QUESTIONS)]
    questions.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in qs), encoding="utf-8")
    paths = {"base": BASE_PATH, "sft": str(sft_final), "dpo": "trained"}
    (answers / "config.yaml").write_text(yaml.safe_dump({
        "questions": str(questions), "models": [{"id": m, "path": p} for m, p in paths.items()]}), encoding="utf-8")
    for m in paths:
        with open(answers / f"{m}.jsonl", "w", encoding="utf-8") as f:
            for i, q in enumerate(qs):
                health = [{"ja_ratio": 0.9, "repeat_ratio": 0.05, "loop": False, "truncated": 2 * i + t >= ENDED[m],
                           "empty": False, "n_tokens": 12} for t in range(2)]
                f.write(json.dumps({"question_id": q["question_id"], "model_id": m,
                                    "choices": [{"index": 0, "turns": ["東京です。" * 5, "関東にあります。" * 5]}],
                                    "generation": {"temperature": 0.0}, "health": health}, ensure_ascii=False) + "\n")
    refs = {"source": "held-out split of runs/x/data", "fingerprint": "r", "conversations": 6, "heldout": True}
    (answers / "reference_nll.json").write_text(json.dumps({
        "version": 1, "references": refs, "definition": "mean NLL per assistant token",
        "models": {m: _conv(v) for m, v in NLL.items()}}), encoding="utf-8")
    judge = write_judge_dir(run / "judge", answers, questions, list(paths), backend=backend,
                            judge="gpt-4o" if backend == "openai" else "fake-judge", bias={"sft": 1.0, "dpo": 2.0})
    return {"run": run, "answers": answers, "judge": judge, "sft_final": sft_final, "questions": questions}
