"""GPU training throughput: FSDP2 full fine-tune of a ~1.1B Llama with packing, bf16.

    python benchmarks/gpu_sft.py [--json out.json] [--ac off on] [--compile off on] [--seq-len 4096]
    torchrun --nproc_per_node N benchmarks/gpu_sft.py [...]     # the same on N GPUs of one node
    python benchmarks/gpu_sft.py --device cpu --tiny              # CPU smoke run (2 tiny layers, gloo)

The model has TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632,
vocab 32000, untied head: 1.10 B parameters), built from a ``LlamaConfig`` with random weights:
nothing is downloaded. The path is the project's own, piece by piece
(``ja_instruct.train``): `model.build_skeleton` (parameters on the meta device), `model._finish`
(checkpointing), `model.shard_model` (FSDP2 on every decoder layer and the root,
``MixedPrecisionPolicy(bf16, reduce fp32)``), then each rank allocates its shards and fills them
with random values (no checkpoint to read); `isolation.attention_layout` and `check_isolation`
(packed rows keep their examples apart, checked on this model); `optim.build_optimizer` (AdamW,
fused on CUDA); `loop.train_step`, the very step `loop.fit` takes (loss per supervised token of the global batch, gradient
sync on the last micro-batch, clipping). A process group always exists (nccl; gloo on CPU):
``python benchmarks/gpu_sft.py`` is a group of one, torchrun gives N.

Data: synthetic SFT examples (log-normal lengths, `plan.assumed_lengths`; the first third of each
is an unsupervised prompt) packed by `packing.pack_best_fit`, each row topped up with one last
short example so that every row holds exactly ``--seq-len`` tokens (static shapes for
torch.compile, no padding); each step's rows are shared out by `packing.rank_micro_batches`.

For each run of the matrix (activation checkpointing x torch.compile): a fresh model, warm-up
steps (torch.compile compiles each decoder layer in the first), then timed steps between
``torch.cuda.synchronize()`` calls. Reported: tokens/s/GPU (every token of the timed steps, over
the ranks, per GPU); MFU = `budget.flops_per_token` without recomputation (6 x parameters x
tokens, the project's plan formula) / the GPU's dense bf16 peak (`PEAK_TFLOPS`, or
``--peak-tflops``); HFU, the same with the recomputation that checkpointing adds (8 x); MFU in
torchtitan's convention (`torchtitan_flops_per_token`), only to compare with its figures; peak
memory (``torch.cuda.max_memory_allocated``, reset per run, max over ranks); the loss of the last
step. A run that runs out of memory is recorded as OOM and the matrix goes on (with several
ranks, only if every rank runs out alike). Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if (REPO / "src" / "ja_instruct").is_dir():  # measure this checkout, installed or not
    sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Dense (not 2:4 sparse) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; the first
#: entry whose words all occur in ``torch.cuda.get_device_name()`` wins (specific names first).
#: A GPU not listed (A10G, H800...) gets no MFU unless ``--peak-tflops`` is given: no guessing.
PEAK_TFLOPS = (
    (("gb200",), 2500.0), (("b200",), 2250.0),
    (("h200", "nvl"), 836.0), (("h200",), 989.4),  # GH200 matches here: the same peak
    (("h100", "nvl"), 835.0), (("h100", "pcie"), 756.0), (("h100",), 989.4),
    (("a100",), 312.0), (("a800",), 312.0), (("a40",), 149.7), (("a30",), 165.0),
    (("l40s",), 362.1), (("l40",), 181.0), (("l4",), 121.0), (("4090",), 165.2), (("3090",), 71.0),
)

#: TinyLlama-1.1B's shape; ``--tiny``: 2 small layers for a CPU smoke run.
SHAPES = {
    "1.1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512),
}
#: Defaults that differ between the GPU benchmark and the CPU smoke run.
DEFAULTS = {"1.1b": dict(seq_len=4096, micro_batch=2, warmup=3, steps=20, mean_tokens=512.0),
            "tiny": dict(seq_len=256, micro_batch=2, warmup=1, steps=2, mean_tokens=40.0)}

#: The published figure the issue quotes, as torchtitan states it (a different model size:
#: compare MFU, not tokens/s). Source checked for this script.
REFERENCE = {
    "source": "pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md (also docs/performance.md), "
              "Table 1, end of 2024",
    "setup": "Llama 3.1 8B, 8x H100 (96 GB HBM2e, 500 W), FSDP2 (1D), local batch 2 x seq 8192 (the seq_len "
             "of torchtitan's llama3_8b.toml; the table does not state it), selective activation checkpointing, "
             "bf16",
    "tokens_per_s_per_gpu": {"FSDP": 5762, "FSDP + torch.compile": 6667},
    "memory_gib": {"FSDP": 82.4, "FSDP + torch.compile": 77.0},
    "stated_mfu": "33% to 39% (8B, FSDP, no Float8), against the H100 SXM peak; the page says the true MFU is "
                  "higher since its 500 W HBM2e H100s peak below SXM",
    "model": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  intermediate_size=14336, vocab_size=128256),
    "seq_len": 8192, "peak_tflops": 989.4,
    "torchtune": "no torchtune throughput figure for this setup could be confirmed; none is quoted",
}


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    """The dense bf16 peak of a GPU by name, and the table entry that matched."""
    name = device_name.lower()
    for words, tflops in PEAK_TFLOPS:
        if all(w in name for w in words):
            return tflops, " ".join(words)
    return None, ""


def torchtitan_flops_per_token(params, shape, seq_len: int) -> float:
    """torchtitan's MFU convention, only to compare with its figures: 6 x parameters without the
    input embedding + 12 x layers x heads x head dim x sequence length (attention scores, causal
    sparsity not discounted). The project's own (`budget.flops_per_token`) counts 6 x all
    parameters and leaves attention out."""
    return 6 * (params.total - params.embedding) + 12 * shape.layers * shape.q_width * seq_len


# ----------------------------------------------------------------------------- set-up

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:5]))
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu only with --tiny")
    ap.add_argument("--tiny", action="store_true", help="2-layer tiny model: a smoke run of the same code path")
    ap.add_argument("--ac", nargs="+", choices=["off", "on"], default=["off", "on"],
                    help="activation checkpointing settings to run (default: off on)")
    ap.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off", "on"],
                    help="torch.compile settings to run, per decoder layer (default: off on)")
    ap.add_argument("--seq-len", type=int, help="tokens per packed row (default 4096; tiny 256)")
    ap.add_argument("--micro-batch", type=int, help="rows per forward/backward (default 2)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (default 1)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 3; tiny 1)")
    ap.add_argument("--steps", type=int, help="timed steps (default 20; tiny 2)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "flex_attention", "flash_attention_2", "eager"],
                    help="attention implementation (sdpa: a 4-D block-causal mask; flash: cu_seqlens)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="compute dtype (default bf16)")
    ap.add_argument("--mean-tokens", type=float, help="mean example length (default 512; tiny 40)")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of one GPU (default: by GPU name)")
    ap.add_argument("--layers", type=int, help="decoder layers instead of the preset's (e.g. to fit a small GPU)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the random weights")
    args = ap.parse_args(argv)
    preset = "tiny" if args.tiny else "1.1b"
    for key, value in DEFAULTS[preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.shape = dict(SHAPES[preset], **({"num_hidden_layers": args.layers} if args.layers else {}))
    return args


def device_problem(args) -> str | None:
    """Why this machine cannot run what was asked (one line), or None."""
    import torch
    import torch.distributed as dist

    if args.device == "cpu":
        return None if args.tiny else ("--device cpu needs --tiny: the 1.1B model would take hours per step on "
                                       "a CPU")
    if not torch.cuda.is_available():
        return (f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False). This benchmark "
                "needs an NVIDIA GPU; `--device cpu --tiny` runs the same code path on the CPU as a smoke test.")
    if not dist.is_nccl_available():
        return f"this torch build ({torch.__version__}) has no NCCL backend for torch.distributed"
    return None


def init_dist(device_type: str):
    """A process group on every path (FSDP2 needs one): torchrun's, or one of a single process."""
    import torch
    import torch.distributed as dist

    from ja_instruct.train.distributed import Dist, setup_distributed

    cuda = device_type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        if cuda:
            torch.cuda.set_device(0)
        # A store in this process: no port to pick, nothing to clash with.
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                                device_id=torch.device("cuda", 0) if cuda else None)
    if cuda:
        return setup_distributed()  # joins torchrun's group (nccl) or adopts the one above
    if not dist.is_initialized():  # CPU under torchrun, even where a GPU exists
        dist.init_process_group("gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)), device=torch.device("cpu"), enabled=True)


def make_data(args, rows_needed: int, vocab: int):
    """Synthetic SFT examples and ``rows_needed`` rows of exactly ``seq_len`` tokens each."""
    import torch

    from ja_instruct.train.packing import IGNORE_INDEX, Example, pack_best_fit
    from ja_instruct.train.plan import assumed_lengths

    n = math.ceil(1.2 * rows_needed * args.seq_len / args.mean_tokens) + 8
    lengths, _, _ = assumed_lengths(n, args.mean_tokens, args.seq_len, "truncate")
    g = torch.Generator().manual_seed(args.seed)
    lengths = [lengths[i] for i in torch.randperm(n, generator=g).tolist()]
    rows = sorted(pack_best_fit(lengths, args.seq_len), key=lambda r: -sum(lengths[i] for i in r))[:rows_needed]
    if len(rows) < rows_needed:
        raise RuntimeError(f"packed only {len(rows)} rows of {rows_needed}")
    for row in rows:  # one last short example fills the row: every row is seq_len tokens
        free = args.seq_len - sum(lengths[i] for i in row)
        if free:
            row.append(len(lengths))
            lengths.append(free)
    examples = []
    for n_tok in lengths:
        ids = torch.randint(3, vocab, (n_tok,), generator=g).tolist()
        prompt = n_tok // 3  # the prompt is not supervised, as in SFT
        examples.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples, rows


# ----------------------------------------------------------------------------- one run

def materialise(model, d, std: float, seed: int) -> None:
    """Allocate this rank's shards (``to_empty``) and fill them with random values: there is no
    checkpoint to load. Buffers (RoPE's ``inv_freq``) keep the values the skeleton computed, as
    `model.load_from_rank0` keeps them. Norm weights are 1, matrices N(0, std): a real model's
    scale, so the loss is finite and the kernels see ordinary numbers."""
    import torch

    buffers = {n: b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)}
    model.to_empty(device=d.device)
    torch.manual_seed(seed + d.rank)
    with torch.no_grad():
        for n, b in model.named_buffers(remove_duplicate=False):
            b.copy_(buffers[n])
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.fill_(1.0) if p.ndim == 1 else local.normal_(0.0, std)


def run_one(args, ac: bool, comp: bool, conf_dir: str, data, d) -> dict:
    """Build a fresh model with these settings, warm up, time; the figures of the run."""
    import torch

    from ja_instruct.train.config import TrainConfig
    from ja_instruct.train.isolation import attention_layout, check_isolation
    from ja_instruct.train.loop import train_step
    from ja_instruct.train.model import (_aliases, _finish, build_skeleton, check_loaded, compute_dtype,
                                         decoder_layer_classes, shard_model)
    from ja_instruct.train.optim import build_optimizer
    from ja_instruct.train.packing import rank_micro_batches

    examples, rows, per_step = data
    cfg = TrainConfig(model=conf_dir, dtype=args.dtype, activation_checkpointing=ac, attn_implementation=args.attn,
                      max_length=args.seq_len, micro_batch_size=args.micro_batch, grad_accum=args.grad_accum,
                      global_batch_size=per_step, packing=True, seed=args.seed)
    dtype = compute_dtype(cfg, d.device)
    cuda = d.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_build = time.perf_counter()
    model = _finish(build_skeleton(cfg, conf_dir), cfg)
    aliases, layer_classes = _aliases(model), decoder_layer_classes(model)  # FSDP renames the classes
    shard_model(model, cfg, d, dtype)
    materialise(model, d, std=model.config.initializer_range, seed=args.seed)
    check_loaded(model, aliases, "gpu_sft model")
    model.train()
    layout = attention_layout(model, True, dtype, "gpu_sft model")
    iso = check_isolation(model, layout, examples, name="gpu_sft model", pad_id=0,
                          autocast=contextlib.nullcontext(), device=d.device, distributed=True)
    if comp:  # per decoder layer, as torchtitan does: one graph serves every layer
        for m in model.modules():
            if isinstance(m, layer_classes):
                m.compile()
    optimizer = build_optimizer(model, cfg, d.device)
    sync()
    build_s = time.perf_counter() - t_build

    lengths = [len(e.input_ids) for e in examples]

    def step(i: int):
        step_rows = [rows[j % len(rows)] for j in range(i * per_step, (i + 1) * per_step)]
        mbs = rank_micro_batches(step_rows, lengths, d.world_size, d.rank, args.micro_batch)
        micro = [layout.collate(examples, mb, 0) for mb in mbs]
        tokens = sum(lengths[i] for mb in mbs for row in mb for i in row)
        # the training loop's own step (bf16 via FSDP2's mixed precision: no autocast)
        loss, _, _, n_tok = train_step(model, optimizer, micro, tokens, layout, d, grad_clip=cfg.grad_clip)
        return loss, int(n_tok)

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    d.barrier()
    times, tokens, loss = [], 0, float("nan")
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        t = time.perf_counter()
        loss, n_tok = step(i)
        sync()
        times.append(time.perf_counter() - t)
        tokens += n_tok
    elapsed = time.perf_counter() - t0
    out = {"status": "ok", "tokens_per_s_per_gpu": tokens / elapsed / d.world_size, "loss": loss,
           "step_s_median": sorted(times)[len(times) // 2], "warmup_s": round(warmup_s, 2),
           "build_s": round(build_s, 2), "isolation_max_abs_diff": iso, "timed_tokens": tokens}
    del model, optimizer
    return out


def peak_memory(d) -> dict:
    """Peak memory of the run: the CUDA allocator's (reset per run, max over ranks); on CPU the
    process's peak RSS (since it started: it cannot be reset)."""
    import resource

    import torch

    if d.device.type == "cuda":
        t = torch.tensor([torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()],
                         dtype=torch.float64, device=d.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return {"peak_memory_gib": t[0].item() / 2**30, "peak_reserved_gib": t[1].item() / 2**30,
                "memory_source": "torch.cuda.max_memory_allocated, max over ranks"}
    return {"peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
            "memory_source": "peak RSS of rank 0's process since start (CPU)"}


def run_safely(args, ac: bool, comp: bool, conf_dir: str, data, d) -> dict:
    """`run_one`, with an out-of-memory (or any other failure) recorded instead of raised."""
    import torch

    from ja_instruct.errors import UserError

    rec = {"activation_checkpointing": ac, "compile": comp}
    if d.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        rec.update(run_one(args, ac, comp, conf_dir, data, d))
    except torch.OutOfMemoryError as e:
        rec.update(status="OOM", error=str(e).splitlines()[0][:300])
    except UserError as e:
        rec.update(status="error", error=str(e)[:500])
    except Exception as e:  # noqa: BLE001  (a failing setting must not cost the rest of the matrix)
        oom = "out of memory" in str(e).lower()
        rec.update(status="OOM" if oom else "error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        if not oom and d.is_main:
            traceback.print_exc()
    torch._dynamo.reset()  # frees the run's graphs; the next run compiles afresh, in its own warm-up
    gc.collect()
    if d.device.type == "cuda":
        torch.cuda.empty_cache()
    rec.update(peak_memory(d))
    return rec


# ----------------------------------------------------------------------------- report

def add_rates(rec: dict, flops: dict, peak: float | None) -> None:
    """MFU, HFU and torchtitan-convention MFU of a finished run (None without a peak)."""
    tps = rec.get("tokens_per_s_per_gpu")
    if tps is None or not peak:
        rec.update(mfu=None, hfu=None, mfu_torchtitan_formula=None)
        return
    hw = flops["hfu_ac" if rec["activation_checkpointing"] else "model"]
    rec.update(mfu=tps * flops["model"] / (peak * 1e12), hfu=tps * hw / (peak * 1e12),
               mfu_torchtitan_formula=tps * flops["torchtitan"] / (peak * 1e12))


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_report(res: dict) -> str:
    """The table of the runs and the comparison with the reference."""
    lines = [f"{'run':<22} {'status':<6} {'tokens/s/GPU':>12} {'MFU':>6} {'HFU':>6} {'MFU(tt)':>7} "
             f"{'peak mem':>10} {'loss':>7} {'step s':>7}"]
    for r in res["runs"]:
        name = f"AC {'on' if r['activation_checkpointing'] else 'off'}, compile {'on' if r['compile'] else 'off'}"
        if r["status"] != "ok":
            lines.append(f"{name:<22} {r['status']:<6} {'':>12} {'':>6} {'':>6} {'':>7} "
                         f"{r['peak_memory_gib']:>6.1f} GiB  {r.get('error', '')[:60]}")
            continue
        lines.append(f"{name:<22} {'ok':<6} {r['tokens_per_s_per_gpu']:>12,.0f} {_pct(r['mfu']):>6} "
                     f"{_pct(r['hfu']):>6} {_pct(r['mfu_torchtitan_formula']):>7} {r['peak_memory_gib']:>6.1f} GiB "
                     f"{r['loss']:>7.3f} {r['step_s_median']:>7.3f}")
    ref, m = res["reference"], res["model"]
    lines += ["", "MFU: the project's 6 x params x tokens (budget.flops_per_token) / peak; HFU adds checkpointing's "
              "recomputed forward (8 x); MFU(tt): torchtitan's formula (6 x non-embedding params + 12 x layers x "
              "heads x head dim x seq), to compare with its figures.",
              "", f"Reference ({ref['source']}): {ref['setup']}.",
              f"  A different model ({_count(ref['params'])} parameters vs {_count(m['params'])} here): compare MFU, "
              f"not tokens/s. Also different: 8 GPUs there, {res['device']['world_size']} here (one GPU has no FSDP "
              "communication to wait for); selective (per-op) checkpointing there, whole-layer here."]
    for k, tps in ref["tokens_per_s_per_gpu"].items():
        lines.append(f"  {k}: {tps:,} tokens/s/GPU, {ref['memory_gib'][k]} GiB -> MFU {_pct(ref['mfu'][k])} "
                     f"by the project's formula, {_pct(ref['mfu_torchtitan_formula'][k])} by torchtitan's "
                     f"(derived here from its tokens/s at {ref['peak_tflops']:g} TFLOP/s)")
    lines.append(f"  torchtitan states: MFU {ref['stated_mfu']}.")
    lines.append(f"  torchtune: {ref['torchtune']}.")
    ok = [r for r in res["runs"] if r["status"] == "ok" and r["mfu"] is not None]
    if ok:
        best = max(ok, key=lambda r: r["mfu"])
        refs = ref["mfu_torchtitan_formula"]
        lines.append(f"  Here, best run (AC {'on' if best['activation_checkpointing'] else 'off'}, compile "
                     f"{'on' if best['compile'] else 'off'}): MFU {_pct(best['mfu'])}, by torchtitan's formula "
                     f"{_pct(best['mfu_torchtitan_formula'])} vs its {_pct(refs['FSDP'])} (FSDP) / "
                     f"{_pct(refs['FSDP + torch.compile'])} (+ compile).")
    elif not res["device"]["peak_tflops"]:
        lines.append("  No MFU: the GPU's peak is unknown here; give --peak-tflops.")
    return "\n".join(lines)


def reference_figures(cfg) -> dict:
    """`REFERENCE` with its MFU in both conventions, from its tokens/s and Llama 3.1 8B's
    parameters counted on the meta device (`plan.count_parameters`)."""
    from transformers import LlamaConfig

    from ja_instruct.train.budget import flops_per_token
    from ja_instruct.train.plan import count_parameters, model_shape

    conf = LlamaConfig(**REFERENCE["model"], tie_word_embeddings=False)
    p, shape = count_parameters(conf, cfg), model_shape(conf)
    model_f, tt_f = flops_per_token(p, False)[0], torchtitan_flops_per_token(p, shape, REFERENCE["seq_len"])
    peak = REFERENCE["peak_tflops"] * 1e12
    tps = REFERENCE["tokens_per_s_per_gpu"]
    return dict(REFERENCE, params=p.total, mfu={k: v * model_f / peak for k, v in tps.items()},
                mfu_torchtitan_formula={k: v * tt_f / peak for k, v in tps.items()})


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    problem = device_problem(args)
    if problem:
        print(f"gpu_sft: {problem}", file=sys.stderr)
        return 2
    import logging

    import torch
    import transformers
    from transformers import LlamaConfig

    from ja_instruct.io import write_json
    from ja_instruct.train.budget import flops_per_token
    from ja_instruct.train.config import TrainConfig
    from ja_instruct.train.distributed import teardown_distributed
    from ja_instruct.train.plan import count_parameters, model_shape

    logging.basicConfig(level=logging.WARNING)
    d = init_dist(args.device)
    say = print if d.is_main else (lambda *a, **k: None)
    try:
        conf = LlamaConfig(**args.shape, tie_word_embeddings=False, max_position_embeddings=max(args.seq_len, 2048),
                           pad_token_id=0, bos_token_id=1, eos_token_id=2)
        with tempfile.TemporaryDirectory(prefix="gpu_sft_") as tmp:
            conf.save_pretrained(tmp)  # build_skeleton reads a model folder's config.json
            cfg = TrainConfig(model=tmp)
            params, shape = count_parameters(conf, cfg), model_shape(conf)
            flops = {"model": flops_per_token(params, False)[0], "hfu_ac": flops_per_token(params, True)[0],
                     "torchtitan": torchtitan_flops_per_token(params, shape, args.seq_len)}
            per_step = d.world_size * args.micro_batch * args.grad_accum  # rows per optimiser step
            data = (*make_data(args, per_step * (args.warmup + args.steps), shape.vocab), per_step)
            name = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu"
            peak, matched = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(name)
            where = f"peak {peak:g} TFLOP/s bf16 dense, {matched}" if peak else "peak unknown: give --peak-tflops"
            say(f"gpu_sft: {name} x {d.world_size} ({where}); "
                f"Llama {_count(params.total)} params ({shape.layers} layers, hidden {shape.hidden}); "
                f"{args.micro_batch} x {args.seq_len} tokens x {args.grad_accum} micro-batches per GPU per step; "
                f"{args.attn}, {args.dtype}; torch {torch.__version__}, transformers {transformers.__version__}",
                flush=True)
            runs = []
            for ac in [a == "on" for a in args.ac]:
                for comp in [c == "on" for c in args.compile]:
                    say(f"  run: activation checkpointing {'on' if ac else 'off'}, torch.compile "
                        f"{'on' if comp else 'off'} ...", flush=True)
                    rec = run_safely(args, ac, comp, tmp, data, d)
                    add_rates(rec, flops, peak)
                    say(f"    {rec['status']}" + (f": {rec['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, MFU "
                                                  f"{_pct(rec['mfu'])}, peak {rec['peak_memory_gib']:.1f} GiB, "
                                                  f"loss {rec['loss']:.3f}" if rec["status"] == "ok" else
                                                  f": {rec.get('error', '')}"), flush=True)
                    runs.append(rec)
            examples, rows, _ = data
            res = {"benchmark": "gpu_sft",
                   "device": {"name": name, "type": d.device.type, "world_size": d.world_size,
                              "peak_tflops": peak, "peak_source": matched or None},
                   "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                   "model": {"shape": args.shape, "params": params.total, "embedding": params.embedding,
                             "flops_per_token": flops["model"], "flops_per_token_with_recompute": flops["hfu_ac"],
                             "flops_per_token_torchtitan": flops["torchtitan"]},
                   "data": {"seq_len": args.seq_len, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
                            "rows_per_step": per_step, "examples_per_row": sum(map(len, rows)) / len(rows),
                            "mean_tokens": args.mean_tokens},
                   "settings": {"warmup_steps": args.warmup, "timed_steps": args.steps, "attn": args.attn,
                                "dtype": args.dtype},
                   "runs": runs, "reference": reference_figures(cfg)}
        say("\n" + format_report(res), flush=True)
        if args.json and d.is_main:
            write_json(args.json, res)
            say(f"\nwrote {args.json}")
        return 0 if any(r["status"] == "ok" for r in runs) else 1
    finally:
        teardown_distributed(d)


if __name__ == "__main__":
    sys.exit(main())
