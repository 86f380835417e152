"""Host memory while loading the model under torchrun: every rank reads it (old) vs rank 0 only (new).

    python benchmarks/load_memory.py [--json PATH] [--ranks 2] [--hidden 768 --layers 12 --vocab 32000]
                                     [--checkpoint-dtype bf16|fp32] [--paths old new dsd-bcast]

Builds a Llama-shaped model of a few hundred MB here (random init, saved as bf16 safetensors in
a temporary folder, as hub checkpoints mostly are; nothing is downloaded), then launches
``torchrun --nproc_per_node 2`` (gloo, CPU) once per loading path, one after the other:

  old        what `ja_instruct.train.model.build_model` did before issue 9: every rank
             ``from_pretrained`` in fp32, then ``fully_shard``;
  new        `build_model` now: rank 0 reads, every rank builds a skeleton (parameters on the
             meta device), shards it and receives its rows of each tensor from rank 0;
  dsd-bcast  the same, but loading through ``set_model_state_dict(..., full_state_dict=True,
             broadcast_from_rank0=True)``, which broadcasts every full tensor to every rank
             (for comparison: why `load_from_rank0` sends rows instead).

Each rank measures its peak resident memory during the load only: the kernel's high-water mark
(VmHWM) is reset just before (``/proc/self/clear_refs``) and read just after. The process group
and the imports loading needs (a fixed cost of ~160 MiB whatever the model, printed) come
before the window on every path. A 2 ms sampling thread cross-checks the peak and tracks
anonymous memory too (RssAnon: without file pages; with ``--checkpoint-dtype fp32``
from_pretrained maps the checkpoint file instead of copying it, and those page-cache pages,
shared by the ranks of a node, count in every rank's RSS). The figure is the peak minus the RSS
before loading, against the model's fp32 bytes; every path must load the same weights
(checksum). Linux only. The issue's target: rank 1's peak <= 0.6 x the fp32 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PATHS = ("old", "new", "dsd-bcast")
MB = 2**20


# ----------------------------------------------------------------------------- measuring

def _status(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in keys:
            out[k] = int(v.split()[0]) * 1024
    return out


class Peak:
    """Peak RSS over a window: the kernel's VmHWM (reset on entry) and a 2 ms sampler."""

    def __enter__(self):
        self.base = _status("VmRSS", "RssAnon")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.hwm_ok = True
        except OSError:
            self.hwm_ok = False
        self.sampled = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            for k, v in _status("VmRSS", "RssAnon").items():
                self.sampled[k] = max(self.sampled[k], v)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        now = _status("VmRSS", "VmHWM", "RssAnon")
        self.after = now["VmRSS"] - self.base["VmRSS"]
        self.peak = (now["VmHWM"] if self.hwm_ok else self.sampled["VmRSS"]) - self.base["VmRSS"]
        self.peak_sampled = self.sampled["VmRSS"] - self.base["VmRSS"]
        self.peak_anon = self.sampled["RssAnon"] - self.base["RssAnon"]


# ----------------------------------------------------------------------------- worker (one rank)

def _old_path(cfg, model_path, d, dtype):
    """build_model before issue 9: every rank loads the whole model in fp32, then shards."""
    from transformers import AutoModelForCausalLM

    from ja_instruct.train.model import _finish, shard_model

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = _finish(model, cfg)
    shard_model(model, cfg, d, dtype)
    return model


def _dsd_broadcast(model, full, d):
    """`load_from_rank0`, but with the library's broadcast of full tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    buffers = {n: b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)}
    model.to_empty(device=d.device)
    with torch.no_grad():
        for n, b in model.named_buffers(remove_duplicate=False):
            b.copy_(buffers[n])
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                              strict=True))


def _import_everything() -> None:
    """Import what loading imports (transformers' Llama code, peft, FSDP2, DTensor, DCP)."""
    import peft  # noqa: F401
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.distributed.tensor  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401


def worker(model_path: str, path: str) -> None:
    from ja_instruct.train import model as M
    from ja_instruct.train.config import TrainConfig
    from ja_instruct.train.distributed import setup_distributed, teardown_distributed

    d = setup_distributed()
    cfg = TrainConfig(model=model_path)
    if path == "dsd-bcast":
        M.load_from_rank0 = _dsd_broadcast
    imports = _status("VmRSS")["VmRSS"]
    _import_everything()  # a fixed cost, whatever the model's size: outside the window
    imports = _status("VmRSS")["VmRSS"] - imports
    d.barrier()
    torch.manual_seed(0)
    with Peak() as p:
        model = _old_path(cfg, model_path, d, torch.float32) if path == "old" else \
            M.build_model(cfg, model_path, d, torch.float32)
        d.barrier()  # rank 0 finishes sending before anyone stops measuring
    local = sum(q.to_local().numel() * q.element_size() for q in model.parameters())
    # a checksum of the loaded weights: every path must load the same model
    check = float(sum(q.detach().to_local().double().sum() for q in model.parameters()))
    check = d.all_reduce_sum(torch.tensor(check, dtype=torch.float64)).item()
    rows = [None] * d.world_size
    torch.distributed.all_gather_object(rows, {
        "rank": d.rank, "peak": p.peak, "peak_sampled": p.peak_sampled, "peak_anon": p.peak_anon,
        "after": p.after, "local_param_bytes": local, "seconds": round(p.seconds, 2), "hwm": p.hwm_ok,
        "imports": imports})
    if d.is_main:
        print("RESULT " + json.dumps({"path": path, "checksum": check, "ranks": rows}), flush=True)
    del model
    d.barrier()
    teardown_distributed(d)


# ----------------------------------------------------------------------------- driver

def build(out: Path, hidden: int, layers: int, vocab: int, dtype: str = "bf16") -> int:
    """A random Llama of that shape saved in ``out`` (safetensors, in ``dtype``); returns its fp32 bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    fp32 = sum(p.numel() for p in model.parameters()) * 4
    model.to({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]).save_pretrained(out)
    return fp32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--checkpoint-dtype", choices=["bf16", "fp32"], default="bf16",
                    help="dtype of the saved checkpoint (hub checkpoints are mostly bf16; training loads fp32)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    ap.add_argument("--worker", nargs=2, metavar=("MODEL_DIR", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)

    with tempfile.TemporaryDirectory(prefix="load_memory_") as tmp:
        model_dir = Path(tmp) / "model"
        fp32 = build(model_dir, args.hidden, args.layers, args.vocab, args.checkpoint_dtype)
        print(f"model: Llama, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: "
              f"{fp32 / 4 / 1e6:.1f} M parameters, {fp32 / MB:.0f} MiB in fp32, saved in {args.checkpoint_dtype}; "
              f"torchrun --nproc_per_node {args.ranks} (gloo, CPU)", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        results = []
        for path in args.paths:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(args.ranks), __file__, "--worker", str(model_dir), path]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode != 0 or not lines:
                sys.exit(f"{path}: torchrun failed ({r.returncode}):\n{r.stderr[-3000:]}")
            results.append(json.loads(lines[0][len("RESULT "):]))

    print(f"\n{'path':<10} {'rank':>4} {'peak MiB':>9} {'x fp32':>7} {'sampled':>8} {'anon':>7} "
          f"{'after':>7} {'own params':>10} {'load s':>7}")
    for res in results:
        for row in res["ranks"]:
            print(f"{res['path']:<10} {row['rank']:>4} {row['peak'] / MB:>9.0f} {row['peak'] / fp32:>7.2f} "
                  f"{row['peak_sampled'] / MB:>8.0f} {row['peak_anon'] / MB:>7.0f} {row['after'] / MB:>7.0f} "
                  f"{row['local_param_bytes'] / MB:>10.0f} {row['seconds']:>7.1f}")
    checks = {res["path"]: res["checksum"] for res in results}
    same = len(set(checks.values())) == 1
    imports = max(r["imports"] for res in results for r in res["ranks"])
    print(f"\npeak = resident memory high-water mark during the load minus the RSS before it; x fp32 = over "
          f"the model's fp32 bytes ({fp32 / MB:.0f} MiB); sampled/anon: 2 ms sampler (anon: without file pages); "
          f"after: RSS kept once loaded (freed memory glibc keeps counts too). Imports (transformers, peft, "
          f"FSDP2), before the window on every path: {imports / MB:.0f} MiB per rank.\n"
          f"same weights loaded by every path: {same} ({checks})")
    by = {res["path"]: res for res in results}
    if "new" in by and args.ranks > 1:
        r1 = by["new"]["ranks"][1]["peak"] / fp32
        print(f"rank 1, new path: peak {r1:.2f} x the model's fp32 bytes (target <= 0.6): "
              f"{'MET' if r1 <= 0.6 else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({"fp32_bytes": fp32, "checkpoint_dtype": args.checkpoint_dtype,
                                         "ranks": args.ranks, "hidden": args.hidden,
                                         "layers": args.layers, "vocab": args.vocab, "results": results,
                                         "same_weights": same}, indent=1))


import torch  # noqa: E402  (after the env defaults above)

if __name__ == "__main__":
    main()
