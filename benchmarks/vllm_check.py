"""Does vLLM answer like the hf backend? Greedy fp32 answers compared token for token.

    python benchmarks/vllm_check.py [--vllm-python .venv-vllm/bin/python] [--tuned DIR] [--json PATH]

`make test-vllm` (mk/vllm.mk) builds the vLLM virtualenv and runs this with the project's own
interpreter. For each model, SmolLM2-135M-Instruct (``embedded:smollm2-135m-instruct``) and an
exported tuned model (``--tuned``; else ``runs/demo/train/final`` when it exists; else one made
here in about a minute, 3 LoRA steps of recipes/demo.yaml, kept in ``<cache>/vllm-check``), and
for each repetition penalty (1.0, and the demo's 1.1), the first ``--questions`` embedded questions
are answered greedily in float32, at most ``--max-new-tokens`` tokens, by

* ``hf``: ja-instruct's hf backend, one prompt at a time (no padding), in this interpreter;
* ``vllm``: ja-instruct's vllm backend, in a worker run by the vLLM interpreter;
* ``openai``: ja-instruct's openai backend (this interpreter) against the vLLM OpenAI server,
  started as ``ja-instruct serve`` starts it (``python -m vllm.entrypoints.openai.api_server``).

Each vllm/openai answer gets a verdict against hf's:

* ``same``: identical text;
* ``near-tie`` (known cause): they part at a token where hf's two best logits (after the
  repetition penalty) are within ``--near-tie`` of each other and the other backend took the
  runner-up. vLLM's kernels sum in another order than torch's, which flips exact ties;
* ``cut`` (known cause): both stopped at max_new_tokens, and they differ only in the last,
  incomplete character;
* ``DIFFERENT``: anything else. The script then exits 1 (2 when a backend cannot run at all).

vLLM runs with ``enforce_eager`` (``--compile`` to keep torch.compile, minutes per start on a
CPU). On CPU it needs ``VLLM_CPU_KVCACHE_SPACE`` (GiB; 1 is set here unless given); vLLM's own
scripts need the ``if __name__ == "__main__":`` guard below, since its engine starts processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "embedded:smollm2-135m-instruct"
PENALTIES = (1.0, 1.1)
NEAR_TIE = 1e-3  # fp32 logits of a 135M model differ by ~1e-5 between kernels; a real bug moves them by far more
ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1"}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)


def params_for(penalty: float, max_new: int):
    from ja_instruct.generate.backends import SamplingParams

    return SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=max_new, repetition_penalty=penalty)


def spec_for(model_id: str, backend: str, path: str, **kw):
    from ja_instruct.generate.config import ModelSpec

    return ModelSpec(id=model_id, backend=backend, path=path, dtype="float32", template="tokenizer", **kw)


def as_rows(gens) -> list[dict]:
    return [{"text": g.text, "n_tokens": g.n_tokens, "truncated": g.truncated} for g in gens]


# --------------------------------------------------------------------------- the three backends

def vllm_worker(job_path: str, out_path: str) -> None:
    """Runs in the vLLM interpreter: the vllm backend on every model and penalty of the job."""
    from ja_instruct.generate.backends import VLLMBackend

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    result: dict = {}
    for m in job["models"]:
        backend = VLLMBackend(spec_for(m["id"], "vllm", m["dir"], vllm_args=job["vllm_args"]), m["dir"])
        try:
            result[m["id"]] = {str(p): as_rows(backend.generate(job["conversations"], params_for(p, job["max_new"])))
                               for p in PENALTIES}
        finally:
            backend.close()
    Path(out_path).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


def run_vllm(python: str, models: list[dict], convs: list, max_new: int, vllm_args: dict, tmp: Path) -> dict:
    job, out = tmp / "job.json", tmp / "vllm.json"
    job.write_text(json.dumps({"models": models, "conversations": convs, "max_new": max_new,
                               "vllm_args": vllm_args}, ensure_ascii=False), encoding="utf-8")
    with open(tmp / "vllm-worker.log", "w") as log:
        rc = subprocess.call([python, __file__, "--worker", str(job), str(out)], stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"vllm worker failed (exit {rc}); last lines:\n{tail(tmp / 'vllm-worker.log')}")
    return json.loads(out.read_text(encoding="utf-8"))


def run_openai(python: str, model: dict, convs: list, max_new: int, extra: list[str], tmp: Path,
               timeout: float) -> dict:
    """Start the vLLM server as `ja-instruct serve` would, answer through the openai backend, stop it."""
    import httpx

    from ja_instruct.generate.backends import OpenAIBackend
    from ja_instruct.serve import base_url, server_command

    port = free_port()
    cmd = server_command(Path(model["dir"]), model["id"], engine="vllm", port=port, dtype="float32",
                         extra_args=extra, python=python)
    log_path = tmp / f"server-{model['id']}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **cmd.env})
    url = base_url("127.0.0.1", port)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                why = f"exit {proc.returncode}" if proc.poll() is not None else "time-out"
                raise RuntimeError(f"vLLM server did not start ({why}); last lines:\n{tail(log_path)}")
            time.sleep(2)
        backend = OpenAIBackend(spec_for(model["id"], "openai", model["id"], base_url=url, server="vllm",
                                         concurrency=4, max_retries=0, timeout=timeout), None)
        return {str(p): as_rows(backend.generate(convs, params_for(p, max_new))) for p in PENALTIES}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class HFReference:
    """The hf backend on one model, and why another backend's answer parts from its own."""

    def __init__(self, model: dict) -> None:
        from ja_instruct.generate.backends import HFBackend

        self.backend = HFBackend(spec_for(model["id"], "hf", model["dir"], batch_size=1, device="cpu"), model["dir"])

    def answers(self, convs: list, max_new: int) -> dict:
        return {str(p): as_rows(self.backend.generate(convs, params_for(p, max_new))) for p in PENALTIES}

    def verdict(self, conv: list, penalty: float, max_new: int, ref: dict, other: dict,
                near_tie: float) -> tuple[str, str]:
        """``(verdict, detail)`` of ``other`` against hf's answer ``ref`` (see the module doc)."""
        a, b = ref["text"], other["text"]
        if a == b:
            return "same", ""
        if ref["truncated"] and other["truncated"]:
            x, y = a.rstrip("\ufffd"), b.rstrip("\ufffd")
            short, long_ = sorted((x, y), key=len)
            if long_.startswith(short) and len(long_) - len(short) <= 1:
                return "cut", "only the last, incomplete character differs"
        import torch

        b_, tok = self.backend, self.backend.tokenizer
        ids = b_.encode(conv)
        with torch.inference_mode():
            out = b_.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    generation_config=b_._generation_config(params_for(penalty, max_new)),
                                    output_scores=True, return_dict_in_generate=True)
        toks = out.sequences[0, len(ids):].tolist()

        def text(t: list[int]) -> str:
            return tok.decode(t, skip_special_tokens=True).rstrip("\ufffd").lstrip()

        # The first hf token whose text the other answer lacks. A token holding part of a character shows
        # only with the token that completes it, so k may land one token late: that can only turn a
        # near-tie into DIFFERENT (the runner-up there cannot continue the other text), never hide a bug.
        k = next((i for i in range(len(toks)) if not b.startswith(text(toks[:i + 1]))), None)
        if k is None:
            return "DIFFERENT", f"hf's answer is a prefix of the other ({len(a)} vs {len(b)} characters)"
        top = out.scores[k][0].float().topk(2)
        gap, runner = float(top.values[0] - top.values[1]), int(top.indices[1])
        took_runner = b.startswith(text(toks[:k] + [runner]))
        where = f"token {k}: hf {tok.decode([toks[k]])!r}, runner-up {tok.decode([runner])!r}, gap {gap:.2e}"
        if gap <= near_tie and took_runner:
            return "near-tie", where
        return "DIFFERENT", where + ("" if took_runner else ", the other took neither")

    def close(self) -> None:
        self.backend.close()


# --------------------------------------------------------------------------- models and helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
    return "\n".join(lines[-n:])


def tuned_model(given: str | None) -> Path:
    """The tuned model to check: ``given``, the demo's export, or one made here (3 LoRA steps, ~1 min)."""
    if given:
        return Path(given)
    demo = REPO / "runs" / "demo" / "train" / "final"
    if (demo / "config.json").is_file():
        return demo
    from ja_instruct.models import cache_dir

    root = (cache_dir() / "vllm-check" / "run").resolve()
    final = root / "train" / "final"
    sets = ["--set", f"out_dir={root}"]
    print(f"no exported model at {demo}: using one of 3 LoRA steps of recipes/demo.yaml in {root} "
          "(trained now unless up to date)", flush=True)
    for argv in (["data", "build", "recipes/demo.yaml", *sets],
                 ["train", "recipes/demo.yaml", *sets, "--set", "train.max_steps=3", "--set", "train.save_every=100"]):
        # up to date -> no work (issue 8): a second run of the check does not retrain
        r = subprocess.run([sys.executable, "-m", "ja_instruct.cli", *argv], cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ja-instruct {argv[0]} failed: {r.stderr[-1500:]}")
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--tuned", default=None, help="exported tuned model folder (default: see above)")
    ap.add_argument("--no-tuned", action="store_true", help="check the base model only")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--near-tie", type=float, default=NEAR_TIE)
    ap.add_argument("--compile", action="store_true", help="let vLLM torch.compile (default: enforce_eager)")
    ap.add_argument("--server-timeout", type=float, default=600.0)
    ap.add_argument("--json", default=None, help="write every answer and verdict here")
    args = ap.parse_args(argv)

    from ja_instruct.generate.questions import load_questions
    from ja_instruct.models import resolve_model

    if not Path(args.vllm_python).is_file():
        print(f"no vLLM interpreter at {args.vllm_python} (make test-vllm builds it)", file=sys.stderr)
        return 2
    questions = load_questions("embedded:questions_ja.jsonl", limit=args.questions)
    convs = [[{"role": "user", "content": q.turns[0]}] for q in questions]
    models = [{"id": "smollm2-135m-instruct", "dir": resolve_model(BASE)}]
    if not args.no_tuned:
        models.append({"id": "tuned", "dir": str(tuned_model(args.tuned).resolve())})
    vllm_args = {} if args.compile else {"enforce_eager": True}
    extra = [] if args.compile else ["--enforce-eager"]
    tmp = Path(tempfile.mkdtemp(prefix="vllm-check-"))
    t0 = time.time()
    try:
        answers = {m["id"]: {"hf": None, "openai": None} for m in models}
        print(f"vllm backend (in-process, {args.vllm_python}) on {len(models)} model(s)...", flush=True)
        vllm = run_vllm(args.vllm_python, models, convs, args.max_new_tokens, vllm_args, tmp)
        for m in models:
            print(f"openai backend against the vLLM server: {m['id']}...", flush=True)
            answers[m["id"]]["openai"] = run_openai(args.vllm_python, m, convs, args.max_new_tokens, extra, tmp,
                                                    args.server_timeout)
            answers[m["id"]]["vllm"] = vllm[m["id"]]
    except RuntimeError as e:
        print(f"vllm_check: {e}\n(logs in {tmp})", file=sys.stderr)
        return 2

    rows, bad = [], 0
    for m in models:
        print(f"hf backend: {m['id']}...", flush=True)
        ref = HFReference(m)
        hf = ref.answers(convs, args.max_new_tokens)
        for p in PENALTIES:
            for i, conv in enumerate(convs):
                row = {"model": m["id"], "penalty": p, "question": questions[i].question_id, "hf": hf[str(p)][i]}
                for name in ("vllm", "openai"):
                    other = answers[m["id"]][name][str(p)][i]
                    verdict, detail = ref.verdict(conv, p, args.max_new_tokens, row["hf"], other, args.near_tie)
                    row[name] = {**other, "verdict": verdict, "detail": detail}
                    bad += verdict == "DIFFERENT"
                rows.append(row)
        ref.close()

    print(f"\n{'model':<22} {'penalty':>7} {'q':>3} {'hf tokens':>9}  {'vllm':<9} {'openai':<9} hf answer")
    for r in rows:
        h = r["hf"]
        n = f"{h['n_tokens']}{' cut' if h['truncated'] else ''}"
        print(f"{r['model']:<22} {r['penalty']:>7} {str(r['question']):>3} {n:>9}  {r['vllm']['verdict']:<9} "
              f"{r['openai']['verdict']:<9} {h['text'][:40]!r}")
        for name in ("vllm", "openai"):
            if r[name]["verdict"] != "same":
                print(f"{'':<44}{name}: {r[name]['detail']}; {r[name]['text'][:60]!r}")
    counts = {v: sum(r[n]["verdict"] == v for r in rows for n in ("vllm", "openai"))
              for v in ("same", "near-tie", "cut", "DIFFERENT")}
    print(f"\n{len(rows) * 2} answers compared with hf: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f" ({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "counts": counts}, ensure_ascii=False, indent=1),
                                   encoding="utf-8")
    shutil.rmtree(tmp, ignore_errors=True)  # the worker's and servers' logs, kept only when a backend failed
    return 1 if bad else 0


if __name__ == "__main__":  # vLLM's engine starts processes: the guard keeps them from re-running main()
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        vllm_worker(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
