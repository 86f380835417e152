"""Fixtures of the train tests: a tiny dataset directory and recipes that train the tiny Llama."""

from __future__ import annotations

import random
from pathlib import Path


import yaml

_Q = ["日本の首都はどこですか？", "富士山について説明してください。", "機械学習とは何ですか？",
      "今日の天気はどうですか？", "江戸時代について教えてください。", "政治と経済の関係は？"]
_A = ["日本の首都は東京です。", "富士山は日本で一番高い山です。", "機械学習とは、データから規則を学ぶ方法です。",
      "こんにちは。今日はいい天気ですね。", "日本の歴史には江戸時代などがあります。", "政治、経済、社会について答えます。"]


def make_conversations(n: int, seed: int = 0) -> list[dict]:
    """``n`` short Japanese conversations of varied length (some with an input, some two-turn)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": rng.choice(_Q)}]
        if i % 3 == 0:
            msgs.append({"role": "input", "content": rng.choice(_A)})
        msgs.append({"role": "assistant", "content": "".join(rng.choice(_A) for _ in range(rng.randint(1, 4)))})
        if i % 5 == 0:
            msgs += [{"role": "user", "content": rng.choice(_Q)}, {"role": "assistant", "content": rng.choice(_A)}]
        rows.append({"id": f"ex{i}", "source": "toy" if i % 2 else "toy-nc",
                     "license": "CC-BY-4.0" if i % 2 else "CC-BY-NC-4.0", "commercial": bool(i % 2),
                     "messages": msgs})
    return rows


def write_dataset_dir(path: Path, rows: list[dict]) -> Path:
    """A dataset directory in the data stage's format (dataset/ + stats.json)."""
    import datasets

    from ja_instruct.io import write_json

    ds = datasets.Dataset.from_list(rows or make_conversations(1))
    ds.select(range(len(rows))).flatten_indices().save_to_disk(str(path / "dataset"), num_shards=1)
    write_json(path / "stats.json", {"sources": {"toy": {"kept": sum(r["source"] == "toy" for r in rows),
                                                         "license": "CC-BY-4.0"},
                                                 "toy-nc": {"kept": sum(r["source"] == "toy-nc" for r in rows),
                                                            "license": "CC-BY-NC-4.0"}}})
    return path




def write_recipe(path: Path, model_dir: Path, dataset_dir: Path, out_dir: Path, **train) -> Path:
    """A recipe YAML whose train section trains the tiny model for a few steps on CPU."""
    section = {"model": str(model_dir), "dataset_dir": str(dataset_dir), "template": "plamo",
               "max_length": 128, "micro_batch_size": 2, "global_batch_size": 4, "epochs": 1,
               "lr": 1e-3, "warmup_ratio": 0.1, "save_every": 0, "tensorboard": False}
    section.update(train)
    path.write_text(yaml.safe_dump({"name": "tiny", "out_dir": str(out_dir), "seed": 1, "train": section},
                                   allow_unicode=True), encoding="utf-8")
    return path


def read_metrics(path: Path) -> dict[int, dict]:
    """metrics.jsonl as {step: record}."""
    import json

    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def make_pairs(n: int, seed: int = 0, heldout: int = 0) -> list[dict]:
    """``n`` preference pairs (plain layout) over the toy prompts: chosen answers are the prompt's
    matching answer, rejected ones another answer; the last ``heldout`` are split ``heldout``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(len(_Q))
        other = (k + rng.randint(1, len(_A) - 1)) % len(_A)
        out.append({"id": f"p{i}", "prompt": _Q[k], "chosen": "".join([_A[k]] * rng.randint(1, 2)),
                    "rejected": _A[other], "split": "heldout" if i >= n - heldout else "train"})
    return out


def write_pairs(path: Path, rows: list[dict]) -> Path:
    """A preference JSONL file (one pair per line)."""
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def torchrun_train(recipe: Path, env_extra: dict | None = None, timeout: int = 120):
    """``ja-instruct train RECIPE`` under torchrun with 2 ranks (gloo), through the test-only
    wrapper kill_at_step.py: the plain CLI unless ``JA_INSTRUCT_TRAIN_FAIL_AT_STEP`` is set in
    ``env_extra`` (then every rank dies right after that step)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name in ("JA_INSTRUCT_TRAIN_FAIL_AT_STEP", "JA_INSTRUCT_TEST_KILL_AT_STEP"):
        env.pop(name, None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).with_name("kill_at_step.py")), "train", str(recipe)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
