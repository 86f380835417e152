"""Training throughput: ours (packed, FSDP2-ready loop) vs Alpaca's HF Trainer vs TRL SFTTrainer.

    python benchmarks/train_throughput.py [--json PATH] [--examples 160] [--max-length 1024]

Same tiny Llama (built here, random init, saved once and loaded by every contender), same
data (real Japanese questions + answers of ../shared/data: Rakuda and Japanese MT-Bench
model answers, realistic lengths), same tokenisation (our PLaMo template, prompt masked),
same optimiser settings (AdamW, lr, warm-up ratio + cosine, clip 1.0), one epoch each,
same machine, one after the other in this process:

  (a)  ours: `ja_instruct.train.run_training`, packed rows (best-fit decreasing);
  (b)  Alpaca's approach: HF Trainer, each batch padded to its longest example;
  (c)  TRL SFTTrainer, its default packing (bfd, padding-free) and its other defaults
       (gradient checkpointing on, bf16 autocast);
  (c') TRL tuned fairly: the same, without gradient checkpointing, fp32 like ours.

Reported: supervised tokens/s (non-pad, non-masked) and the ratios of ours to each; the
padding share of computed tokens; the held-out loss after the same examples (token-weighted,
the same evaluation for all); achieved FLOP/s (6 x params x real tokens / time) against a
matmul peak measured here (MFU). Then FSDP2 on 2 ranks (gloo): bytes of params + grads +
optimiser state per rank against one process. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JA_INSTRUCT_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False)
LR, WARMUP, SEED = 1e-3, 0.03, 0


# ----------------------------------------------------------------------------- data

def load_conversations() -> list[list[dict]]:
    """Question/answer conversations from the FastChat answer files of ../shared/data."""
    convs = []
    for qfile, adir in [(SHARED / "rakuda" / "questions.jsonl", SHARED / "rakuda" / "answers"),
                        (SHARED / "ja_mt_bench" / "question_full.jsonl", SHARED / "ja_mt_bench" / "model_answer")]:
        qs = {}
        for line in qfile.read_text(encoding="utf-8").splitlines():
            if line.strip():
                q = json.loads(line)
                qs[str(q["question_id"])] = q.get("turns") or [q.get("text")]
        for af in sorted(adir.glob("*.jsonl")):
            for line in af.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                a = json.loads(line)
                turns = qs.get(str(a["question_id"]))
                answers = a["choices"][0]["turns"]
                if not turns or not all(isinstance(t, str) and t.strip() for t in answers):
                    continue
                msgs = []
                for q, ans in zip(turns, answers):
                    msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
                convs.append(msgs)
    return convs


def build_tokenizer(convs, out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((m["content"] for c in convs for m in c), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>")
    hf.save_pretrained(out_dir)
    return hf


def build_model(tok, out_dir: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, **MODEL))
    m.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    # FLOPs per token use the matmul weights (everything but the input embedding lookup).
    return sum(p.numel() for n, p in m.named_parameters() if "embed_tokens" not in n)


# ----------------------------------------------------------------------------- evaluation

def eval_loss(model, examples) -> float:
    """Token-weighted loss on held-out examples, one by one (fp32)."""
    import torch
    import torch.nn.functional as F

    from ja_instruct.train.packing import IGNORE_INDEX, collate

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(examples)):
            b = collate(examples, [[i]], 0)
            logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
            total += F.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten(),
                                     ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((b["labels"] != IGNORE_INDEX).sum())
    return total / count


def matmul_peak_flops(n: int = 1536, reps: int = 6) -> float:
    """Best fp32 FLOP/s of an n x n matmul on this machine with the current threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def count_padding(loader) -> tuple[int, int]:
    """(computed tokens, padding tokens) over one pass of a HF data loader."""
    computed = pad = 0
    for b in loader:
        n = b["input_ids"].numel()
        computed += n
        if "attention_mask" in b:
            pad += n - int(b["attention_mask"].sum())
    return computed, pad


# ----------------------------------------------------------------------------- contenders

def run_ours(work: Path, model_dir: Path, train_convs, args) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM

    from ja_instruct.recipe import Recipe
    from ja_instruct.train import run_training
    from ja_instruct.train.config import TrainConfig

    data_dir = work / "data"
    rows = [{"id": str(i), "source": "bench", "license": "Apache-2.0", "commercial": True, "messages": c}
            for i, c in enumerate(train_convs)]
    datasets.Dataset.from_list(rows).save_to_disk(str(data_dir / "dataset"))
    cfg = TrainConfig(model=str(model_dir), dataset_dir=str(data_dir), max_length=args.max_length, packing=True,
                      micro_batch_size=1, global_batch_size=args.rows_per_step, lr=LR, warmup_ratio=WARMUP,
                      betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0, dtype="fp32", save_every=0,
                      tensorboard=False, seed=SEED)
    recipe = Recipe(name="bench", out_dir=work / "ours", train=cfg)
    cpu = time.process_time()
    final = run_training(recipe)  # CPU time includes its tokenisation, model load and export: no favours
    cpu = time.process_time() - cpu
    metrics = [json.loads(x) for x in (final.parent / "metrics.jsonl").read_text().splitlines()]
    prev, secs = 0, 0.0
    for r in metrics:  # time of each step = its tokens / its tokens-per-second
        secs += (r["tokens"] - prev) / r["tokens_per_s"]
        prev = r["tokens"]
    return {"model": AutoModelForCausalLM.from_pretrained(final), "seconds": secs, "cpu_seconds": cpu,
            "steps": len(metrics)}


def _hf_args(cls, work: Path, **kw):
    return cls(output_dir=str(work), num_train_epochs=1, learning_rate=LR, warmup_steps=WARMUP,
               lr_scheduler_type="cosine", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
               logging_steps=10, save_strategy="no", report_to="none", use_cpu=True, seed=SEED,
               dataloader_num_workers=0, disable_tqdm=True, **kw)


def run_alpaca(work: Path, model_dir: Path, tok, train_ex, args) -> dict:
    """Stanford Alpaca's train.py recipe: HF Trainer, pad to the longest in the batch, prompt masked."""
    import datasets
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    ds = datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in train_ex],
                                     "labels": [e.labels for e in train_ex]})
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    targs = _hf_args(TrainingArguments, work / "alpaca", per_device_train_batch_size=args.alpaca_batch)
    trainer = Trainer(model=model, args=targs, train_dataset=ds,
                      data_collator=DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100))
    computed, pad = count_padding(trainer.get_train_dataloader())
    cpu = time.process_time()
    out = trainer.train()
    return {"model": model, "seconds": out.metrics["train_runtime"], "cpu_seconds": time.process_time() - cpu,
            "steps": out.global_step, "computed": computed, "pad": pad}


def run_trl(work: Path, model_dir: Path, tok, train_ex, args, tuned: bool) -> dict:
    """TRL SFTTrainer with packing (its default bfd strategy, padding-free) on the same token ids."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    # Pre-tokenised: TRL keeps our ids; completion_mask marks the supervised tokens.
    ds = datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in train_ex],
                                     "completion_mask": [[int(x != -100) for x in e.labels] for e in train_ex]})
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    kw = dict(packing=True, max_length=args.max_length, per_device_train_batch_size=args.rows_per_step,
              completion_only_loss=True)
    if tuned:
        kw.update(gradient_checkpointing=False, bf16=False)
    cfg = _hf_args(SFTConfig, work / ("trl_tuned" if tuned else "trl"), **kw)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    computed, pad = count_padding(trainer.get_train_dataloader())
    cpu = time.process_time()
    out = trainer.train()
    return {"model": model, "seconds": out.metrics["train_runtime"], "cpu_seconds": time.process_time() - cpu,
            "steps": out.global_step, "computed": computed, "pad": pad, "bf16": cfg.bf16,
            "gradient_checkpointing": cfg.gradient_checkpointing}


# ----------------------------------------------------------------------------- FSDP2 memory

def fsdp_worker(model_dir: str, out: str) -> None:
    """One rank (or one process): build the model, take one optimiser step, count local bytes."""
    import torch

    from ja_instruct.train.config import TrainConfig
    from ja_instruct.train.distributed import setup_distributed
    from ja_instruct.train.model import build_model as build
    from ja_instruct.train.optim import build_optimizer

    torch.set_num_threads(1)
    d = setup_distributed()
    cfg = TrainConfig(model=model_dir, dtype="fp32")
    model = build(cfg, model_dir, d, torch.float32)
    opt = build_optimizer(model, cfg, d.device)
    ids = torch.randint(0, 100, (1, 64))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    opt.step()

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = sum(local(p).numel() * local(p).element_size() for p in model.parameters())
    grads = sum(local(p.grad).numel() * local(p.grad).element_size() for p in model.parameters() if p.grad is not None)
    state = sum(local(v).numel() * local(v).element_size() for s in opt.state.values() for v in s.values()
                if hasattr(v, "numel") and local(v).dim() > 0)
    if d.rank == 0:
        Path(out).write_text(json.dumps({"params": params, "grads": grads, "optim": state, "world": d.world_size}))
    if d.enabled:
        torch.distributed.destroy_process_group()


def fsdp_memory(model_dir: Path, work: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = {}
    for world in (1, 2):
        out = work / f"mem{world}.json"
        if world == 1:
            cmd = [sys.executable, __file__, "--fsdp-worker", str(model_dir), str(out)]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   __file__, "--fsdp-worker", str(model_dir), str(out)]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        res[world] = json.loads(out.read_text())
    total = {w: r["params"] + r["grads"] + r["optim"] for w, r in res.items()}
    return {"one_process_bytes": total[1], "per_rank_bytes_2": total[2], "ratio": total[2] / total[1],
            "detail": res}


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--examples", type=int, default=160, help="training conversations (one epoch)")
    ap.add_argument("--eval-examples", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--rows-per-step", type=int, default=2, help="packed rows per step (ours, TRL)")
    ap.add_argument("--alpaca-batch", type=int, default=0,
                    help="examples per step for (b); default: about the same tokens per step as ours")
    ap.add_argument("--hidden", type=int, default=MODEL["hidden_size"], help="hidden size of the tiny Llama")
    ap.add_argument("--layers", type=int, default=MODEL["num_hidden_layers"], help="decoder layers")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: robust on a shared machine; same for every contender)")
    ap.add_argument("--skip", default="", help="comma-separated contenders to skip: b,c,c',fsdp")
    ap.add_argument("--fsdp-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fsdp_worker:
        return fsdp_worker(*args.fsdp_worker)
    # A wider model moves compute from attention (which packing does not shrink on CPU: a packed
    # row's masked attention costs its full length squared) to the matmuls (which it does).
    MODEL.update(hidden_size=args.hidden, intermediate_size=round(args.hidden * 8 / 3 / 64) * 64,
                 num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32))
    if not SHARED.is_dir():
        sys.exit(f"real data folder {SHARED} is absent (set JA_INSTRUCT_SHARED_DATA)")

    import logging

    import torch

    from ja_instruct.data.tokenize import tokenize_conversation
    from ja_instruct.train.packing import Example

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    work = Path(tempfile.mkdtemp(prefix="ja-train-bench-"))
    convs = load_conversations()
    random.Random(SEED).shuffle(convs)
    tok = build_tokenizer(convs, work / "tok")
    n_params = build_model(tok, work / "model")
    examples, kept = [], []
    for c in convs[: args.examples + args.eval_examples]:
        t = tokenize_conversation(tok, "plamo", c, args.max_length, "truncate")
        if t is not None:
            examples.append(Example(t["input_ids"], t["labels"]))
            kept.append(c)
    train_ex, eval_ex = examples[: args.examples], examples[args.examples:]
    train_convs = kept[: args.examples]
    real = sum(len(e.input_ids) for e in train_ex)
    sup = sum(sum(x != -100 for x in e.labels[1:]) for e in train_ex)  # shifted: the first token predicts nothing
    mean_len = real / len(train_ex)
    if not args.alpaca_batch:
        args.alpaca_batch = max(1, round(args.rows_per_step * args.max_length / mean_len))
    peak = matmul_peak_flops()
    print(f"data: {len(train_ex)} train / {len(eval_ex)} eval conversations, {real} tokens ({sup} supervised), "
          f"mean {mean_len:.0f} tokens; model {n_params / 1e6:.2f}M matmul params; "
          f"{torch.get_num_threads()} threads; matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)

    results = {}

    def record(name, r, computed, pad):
        # Throughput per CPU-second of this process: on a shared machine the wall clock also
        # measures the neighbours; CPU time measures our work (both are reported).
        results[name] = {"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "steps": r["steps"],
                         "supervised_tokens_per_s": sup / r["cpu_seconds"],
                         "supervised_tokens_per_wall_s": sup / r["seconds"],
                         "tokens_per_s": real / r["cpu_seconds"], "padding_share": pad / computed if computed else 0.0,
                         "eval_loss": eval_loss(r["model"], eval_ex),
                         "mfu": 6 * n_params * real / r["cpu_seconds"] / peak}
        print(f"  {name}: {r['seconds']:.1f}s wall, {r['cpu_seconds']:.1f}s CPU, "
              f"{results[name]['supervised_tokens_per_s']:.0f} sup tok/CPU-s, "
              f"eval loss {results[name]['eval_loss']:.4f}", flush=True)

    print("(a) ours, packed ...", flush=True)
    r = run_ours(work, work / "model", train_convs, args)
    # Computed tokens: our rows, padded to the longest row of each micro-batch (micro batch 1: none).
    from ja_instruct.train.packing import build_rows, collate

    rows = build_rows(train_ex, args.max_length, True)
    computed = sum(collate(train_ex, [row], 0)["input_ids"].numel() for row in rows)
    record("ours", r, computed, computed - real)
    if "b" not in skip:
        print(f"(b) Alpaca: HF Trainer, pad to longest, batch {args.alpaca_batch} ...", flush=True)
        r = run_alpaca(work, work / "model", tok, train_ex, args)
        record("alpaca_hf_trainer", r, r["computed"], r["pad"])
    if "c" not in skip:
        print("(c) TRL SFTTrainer, default packing (+ its defaults) ...", flush=True)
        try:
            r = run_trl(work, work / "model", tok, train_ex, args, tuned=False)
            record("trl_default", r, r["computed"], r["pad"])
            results["trl_default"].update(bf16=r["bf16"], gradient_checkpointing=r["gradient_checkpointing"])
        except Exception as e:  # report, do not hide: TRL's defaults may not run on this machine
            results["trl_default"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  failed: {e}", flush=True)
    if "c'" not in skip:
        print("(c') TRL SFTTrainer tuned (no gradient checkpointing, fp32) ...", flush=True)
        r = run_trl(work, work / "model", tok, train_ex, args, tuned=True)
        record("trl_tuned", r, r["computed"], r["pad"])
    fsdp = None if "fsdp" in skip else fsdp_memory(work / "model", work)

    ours = results["ours"]["supervised_tokens_per_s"]
    ratios = {f"ours/{k}": ours / v["supervised_tokens_per_s"] for k, v in results.items()
              if k != "ours" and "supervised_tokens_per_s" in v}
    loss_vs_b = (results["ours"]["eval_loss"] / results["alpaca_hf_trainer"]["eval_loss"] - 1
                 if "alpaca_hf_trainer" in results else None)

    print()
    print("| contender | steps | wall s | CPU s | sup tok/CPU-s | sup tok/wall-s | tok/CPU-s | padding | eval loss | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, v in results.items():
        if "error" in v:
            print(f"| {k} | failed: {v['error'][:60]} |||||||")
            continue
        print(f"| {k} | {v['steps']} | {v['seconds']:.1f} | {v['cpu_seconds']:.1f} | {v['supervised_tokens_per_s']:.0f} | "
              f"{v['supervised_tokens_per_wall_s']:.0f} | {v['tokens_per_s']:.0f} | {100 * v['padding_share']:.1f}% | "
              f"{v['eval_loss']:.4f} | {100 * v['mfu']:.1f}% |")
    print()
    wall_ratios = {f"ours/{k}": results["ours"]["supervised_tokens_per_wall_s"] / v["supervised_tokens_per_wall_s"]
                   for k, v in results.items() if k != "ours" and "supervised_tokens_per_wall_s" in v}
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x per CPU-second ({wall_ratios[k]:.2f}x per wall-second)")
    if loss_vs_b is not None:
        print(f"eval loss ours vs (b): {100 * loss_vs_b:+.2f}%")
    if fsdp:
        print(f"FSDP2 2 ranks: params+grads+optimiser {fsdp['per_rank_bytes_2'] / 2**20:.1f} MiB per rank vs "
              f"{fsdp['one_process_bytes'] / 2**20:.1f} MiB in one process = {fsdp['ratio']:.3f}x")
    out = {"data": {"train_examples": len(train_ex), "eval_examples": len(eval_ex), "tokens": real,
                    "supervised_tokens": sup, "mean_length": mean_len, "max_length": args.max_length},
           "model": {**MODEL, "matmul_params": n_params}, "threads": torch.get_num_threads(),
           "matmul_peak_flops": peak, "results": results, "ratios": ratios, "wall_ratios": wall_ratios, "eval_loss_vs_b": loss_vs_b,
           "fsdp_memory": fsdp}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
