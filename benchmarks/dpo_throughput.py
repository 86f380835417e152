"""DPO training throughput and memory: ours vs TRL's DPOTrainer (default and tuned), side by side.

    python benchmarks/dpo_throughput.py [--json PATH] [--pairs 48] [--batch 8]
    python benchmarks/dpo_throughput.py --tiny        (seconds: the smoke test's mode)

The same model, pairs, token ids and optimisation for every contender, each in its own
subprocess (clean peak memory), one after the other on this machine, fp32 on the CPU:

* model: a Llama built here (random init; 512 hidden, 8 layers, 8,000-word vocabulary:
  35M parameters);
* pairs: synthetic, realistic lengths (prompts 20-200 tokens, answers 20-300, drawn
  independently, so batches pad); chosen answers use the lower half of the vocabulary
  and rejected ones the upper half, a preference the model can learn, so the loss moves;
* a word-level tokenizer with a chat template: our ``template: tokenizer`` and TRL's
  conversational tokenisation give the same token ids (checked, and printed);
* the same pairs per step, steps, constant lr, beta, AdamW betas, clip, seed.

Contenders:
  ours         `ja_instruct.train.stage.train` with ``method: dpo`` (packing, pairs per step
               counted in pairs, 1 row per micro-batch);
  trl_default  DPOTrainer with its defaults (a reference model copy, batches of 8 pairs padded
               to their longest, gradient checkpointing, bf16 autocast);
  trl_tuned    the fastest honest TRL settings found on this CPU: precompute_ref_log_probs (no
               reference model in memory, one reference pass), 1 pair per micro-batch (padding
               only within a pair) x gradient accumulation, no gradient checkpointing, fp32 (as
               ours, for equal loss). ``padding_free`` is not available in TRL 1.16 (it warns and
               falls back to padding), so it is left off.
  ours_fsdp2   ours under torchrun, FSDP2 on 2 ranks (gloo): memory per rank vs one process.

Like for like, every contender's timed run does the same kinds of work: load and tokenise, its
reference pass, train, then save a resumable checkpoint of the last step (model + optimiser:
ours a DCP checkpoint; TRL its ``checkpoint-N`` via ``save_strategy="steps"``) and export the
final model (ours ``final/``; TRL ``save_model``). Ours also runs its packing/shared-prompt
checks on the model before step 1: counted, no favours.

Figures:
* throughput, two ways, both in pairs per CPU-second of the process (all ranks for FSDP2):
  "whole run" (everything above) and "steps alone" (process CPU from the end of optimiser
  step 1 to the end of the last step, read by a step-end hook in each trainer: our ``on_step``,
  TRL's ``TrainerCallback.on_step_end``, less any checkpoint saved inside that window, so no
  load, reference pass, first step, checkpoint or export); the CPU spent saving (checkpoint +
  export) is shown on its own;
* memory: peak RSS (whole process) and the steady-state training peak (the largest RSS during
  steps 2..N-1: weights, gradients, optimiser state and activations, without the load and
  export transients), both net of the process's RSS right after its imports; the bytes of
  parameters, gradients and AdamW state each process (rank) holds, read from the optimiser;
* FSDP2 memory per rank / one process, twice: in the throughput configuration above (long
  rows: activations dominate a 35M model) and in a model-state configuration, where weights,
  gradients and AdamW state dominate, as they do at 13B: a 171M Llama (1024 hidden,
  12 layers, same vocabulary), short pairs (<= 120 tokens), activation checkpointing, 1 pair
  per micro-batch, 2 pairs per step, 3 steps, for both the one-process and the 2-rank run;
* each trainer's own last-step loss, and the DPO loss of every trained model on held-out
  pairs, measured by the same code here (the "final loss" compared at +-2%).
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

FULL = dict(model=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=8), words=8000, prompt=(20, 200), answer=(20, 300))
TINY = dict(model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2), words=200, prompt=(4, 16), answer=(4, 24))
# The model-state memory configuration: weights, gradients and AdamW state dominate the RSS.
MEM_FULL = dict(model=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                           num_key_value_heads=16), words=8000, prompt=(8, 20), answer=(8, 36))
MEM_TINY = dict(model=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4), words=200, prompt=(4, 12), answer=(4, 12))
MEM_PAIRS, MEM_BATCH = 6, 2  # 3 steps: the steady window is step 2, before the last step's checkpoint
BETA, LR, SEED, MAX_LENGTH = 0.1, 2e-4, 0, 1024
ADAM_BETAS, CLIP = (0.9, 0.999), 1.0
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }}\n"
            "{% elif m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }}</s>\n{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"]


# ----------------------------------------------------------------------------- inputs

def build_tokenizer(words: int, out_dir: Path):
    """A word-level tokenizer (``w0 .. w{n-1}`` + specials) with a chat template: text and ids map 1:1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": len(SPECIALS) + i for i in range(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", additional_special_tokens=SPECIALS[4:])
    hf.chat_template = TEMPLATE
    hf.save_pretrained(out_dir)
    return hf


def build_model(tok, shape: dict, out_dir: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, max_position_embeddings=MAX_LENGTH,
                                     tie_word_embeddings=False, **shape))
    m.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return sum(p.numel() for p in m.parameters())


def make_pairs(n: int, heldout: int, spec: dict) -> list[dict]:
    """Synthetic pairs: random prompts; chosen answers from the lower half of the words, rejected
    from the upper half; lengths uniform in the ranges of ``spec`` (independent, so they pad)."""
    rng = random.Random(SEED)
    half = spec["words"] // 2

    def text(k: int, lo: int, hi: int) -> str:
        return " ".join(f"w{rng.randrange(lo, hi)}" for _ in range(k))

    out = []
    for i in range(n + heldout):
        out.append({"id": f"p{i}", "prompt": text(rng.randint(*spec["prompt"]), 0, spec["words"]),
                    "chosen": text(rng.randint(*spec["answer"]), 0, half),
                    "rejected": text(rng.randint(*spec["answer"]), half, spec["words"]),
                    "split": "heldout" if i >= n else "train"})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- memory

def rss_now() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The process's peak resident set size so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim``), so that RSS measures the
    memory in use, not what an earlier phase (loading, the reference pass) freed but kept."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: RSS keeps the high-water mark instead
        pass


def steady_window(steps: int) -> tuple[int, int]:
    """(first, last) optimiser steps whose ends bound the steady-state window: steps 2 .. N-1
    (before the last step's checkpoint and export), or 2 .. N on a run of 2 steps."""
    return 1, (steps - 1 if steps >= 3 else steps)


class SteadyPeak:
    """Largest RSS between `start` and `stop`, sampled every 10 ms by a thread (about 0.1% of a core)."""

    def __init__(self) -> None:
        self.peak, self._on, self._done = 0, False, False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._done:
            if self._on:
                self.peak = max(self.peak, rss_now())
            time.sleep(0.01)

    def start(self) -> None:
        trim_heap()
        self.peak, self._on = rss_now(), True

    def stop(self) -> None:
        if self._on:
            self.peak, self._on = max(self.peak, rss_now()), False

    def close(self) -> None:
        self._done = True


class StepClock:
    """Process CPU (and wall) time of the training steps alone: from the end of optimiser step 1
    to the end of step ``last``, less the saving done inside that window (ours saves its last
    checkpoint before its step hook runs, TRL after), so load, reference pass, first step,
    checkpoints and export are out; `saving` also totals the whole run's saving on its own."""

    def __init__(self, last: int) -> None:
        self.last, self._start, self.window = last, None, None
        self.save_cpu = self.save_wall = 0.0

    def step_end(self, step: int) -> None:
        if step == 1:
            self._start = (time.process_time(), time.perf_counter(), self.save_cpu, self.save_wall)
        if step == self.last and step > 1 and self._start is not None:
            cpu, wall, s_cpu, s_wall = self._start
            self.window = {"cpu_s": time.process_time() - cpu - (self.save_cpu - s_cpu),
                           "wall_s": time.perf_counter() - wall - (self.save_wall - s_wall)}

    def add_saving(self, cpu: float, wall: float) -> None:
        self.save_cpu += cpu
        self.save_wall += wall

    @contextlib.contextmanager
    def saving(self):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.add_saving(time.process_time() - cpu, time.perf_counter() - wall)

    def timed(self, fn):
        """``fn`` with its CPU and wall time counted as saving."""
        def wrapper(*a, **k):
            with self.saving():
                return fn(*a, **k)
        return wrapper


def _imports():
    """Every worker imports the same modules before its baseline RSS is read (fair baselines)."""
    import datasets  # noqa: F401
    import torch
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import ja_instruct.train.loop  # noqa: F401
    import ja_instruct.train.stage  # noqa: F401

    torch.set_num_threads(1)  # robust on a shared machine; the same for every contender


# ----------------------------------------------------------------------------- contenders (workers)

def _count_model_state() -> dict:
    """Bytes of this process's (this rank's) parameters, gradients and AdamW state, read by hooks
    on the optimiser our loop builds (`ja_instruct.train.loop.build_optimizer`, wrapped here):
    gradients just before a step, optimiser state just after."""
    import ja_instruct.train.loop as loop

    counts: dict = {}
    real = loop.build_optimizer

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    def before(opt, *_):
        params = [p for g in opt.param_groups for p in g["params"]]
        counts["params"] = sum(local_bytes(p) for p in params)
        counts["grads"] = sum(local_bytes(p.grad) for p in params if p.grad is not None)

    def after(opt, *_):
        counts["optim"] = sum(local_bytes(v) for s in opt.state.values() for v in s.values()
                              if hasattr(v, "numel") and v.dim() > 0)

    def build(*a, **k):
        opt = real(*a, **k)
        opt.register_step_pre_hook(before)
        opt.register_step_post_hook(after)
        return opt

    loop.build_optimizer = build
    return counts


def worker_ours(work: Path, cfg: dict, name: str) -> dict:
    """Ours, one process or one rank of torchrun (FSDP2 when WORLD_SIZE > 1)."""
    _imports()
    base = rss_now()
    import ja_instruct.train.checkpoint as ckpt
    import ja_instruct.train.export as export
    from ja_instruct.train.config import TrainConfig
    from ja_instruct.train.stage import train

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    tcfg = TrainConfig(model=cfg["model_dir"], method="dpo", dpo={"pairs": cfg["pairs"][name], "beta": BETA},
                       template="tokenizer", max_length=MAX_LENGTH, packing=True, batch_unit="examples",
                       global_batch_size=cfg["batch"], micro_batch_size=1, epochs=1, lr=LR, warmup_ratio=0.0,
                       min_lr_ratio=1.0, weight_decay=0.0, betas=ADAM_BETAS, grad_clip=CLIP, dtype="fp32",
                       activation_checkpointing=cfg.get("activation_checkpointing", False),
                       save_every=0, tensorboard=False, seed=SEED)
    steady = SteadyPeak()
    first, last = steady_window(cfg["steps"])
    state = _count_model_state()
    clock = StepClock(cfg["steps"])
    # The loop calls `ckpt.save_checkpoint` and the stage imports `export_final` at call time.
    ckpt.save_checkpoint = clock.timed(ckpt.save_checkpoint)
    export.export_final = clock.timed(export.export_final)

    def on_step(step: int) -> None:
        clock.step_end(step)
        if step == first:
            steady.start()
        if step == last:
            steady.stop()

    cpu, wall = time.process_time(), time.perf_counter()
    train(tcfg, dataset_dir=Path(cfg["pairs"][name]), out=work / name, seed=SEED, on_step=on_step)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    steady.close()
    metrics = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    steps_done = [r for r in metrics if not r.get("eval")]
    out = {"cpu_s": cpu, "wall_s": wall, "steps": len(steps_done), "pairs": sum(r["pairs"] for r in steps_done),
           "last_loss": steps_done[-1]["loss"], "base_rss": base, "peak_rss": peak_rss(), "steady_rss": steady.peak,
           "final": str(work / name / "final"), "rank": rank, "world": world, "state_bytes": state,
           "steps_window": {**(clock.window or {}), "pairs": sum(r["pairs"] for r in steps_done if r["step"] > 1)},
           "save_cpu_s": clock.save_cpu, "save_wall_s": clock.save_wall}
    (work / f"{name}.rank{rank}.json").write_text(json.dumps(out))
    return out


def worker_trl(work: Path, cfg: dict, tuned: bool) -> dict:
    _imports()
    base = rss_now()
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    name = "trl_tuned" if tuned else "trl_default"
    rows = [json.loads(x) for x in Path(cfg["pairs"]["ours"]).read_text().splitlines()]
    # Conversational: TRL renders prompt and answers with the tokenizer's chat template (as ours).
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows],
                            "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
                            "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows]})
    tok = AutoTokenizer.from_pretrained(cfg["model_dir"])
    micro = 1 if tuned else 8  # TRL's default per-device batch is 8 pairs
    if cfg["batch"] % micro:
        micro = cfg["batch"]
    kw = dict(precompute_ref_log_probs=True, precompute_ref_batch_size=1, gradient_checkpointing=False,
              bf16=False) if tuned else {}
    args = DPOConfig(output_dir=str(work / name), beta=BETA, learning_rate=LR, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, adam_beta1=ADAM_BETAS[0], adam_beta2=ADAM_BETAS[1],
                     max_grad_norm=CLIP, num_train_epochs=1, per_device_train_batch_size=micro,
                     gradient_accumulation_steps=cfg["batch"] // micro, max_length=MAX_LENGTH, seed=SEED,
                     report_to=[], save_strategy="steps", save_steps=cfg["steps"], logging_steps=1, use_cpu=True,
                     disable_tqdm=True, dataloader_num_workers=0, **kw)
    steady = SteadyPeak()
    steps = cfg["steps"]
    first, last = steady_window(steps)
    clock = StepClock(steps)
    saving_from: list[tuple[float, float]] = []

    class Mark(TrainerCallback):
        def on_step_end(self, a, state, control, **_):
            clock.step_end(state.global_step)
            if state.global_step == first:
                steady.start()
            if state.global_step == last:
                steady.stop()
            saving_from[:] = [(time.process_time(), time.perf_counter())]

        def on_save(self, a, state, control, **_):
            # Its checkpoint is written after the step hook and before this one (with the step's log line).
            cpu, wall = saving_from[0]
            clock.add_saving(time.process_time() - cpu, time.perf_counter() - wall)

    cpu, wall = time.process_time(), time.perf_counter()
    # Model loading, tokenisation and the reference pass count, as they do for ours; so do its
    # last step's checkpoint (model + optimiser, like ours) and the final export (like ours).
    trainer = DPOTrainer(model=cfg["model_dir"], args=args, train_dataset=ds, processing_class=tok,
                         callbacks=[Mark()])
    out_train = trainer.train()
    with clock.saving():
        trainer.save_model(str(work / name / "final"))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    steady.close()
    checkpoints = sorted(x.name for x in (work / name).glob("checkpoint-*"))
    ids = [[list(r["prompt_ids"]), list(r["chosen_ids"]), list(r["rejected_ids"])] for r in trainer.train_dataset]
    # Padding of its batches: one fresh pass of its data loader after training (same batch
    # sizes; its shuffle draws other groups, so this is the expected share, not the very batches).
    computed = real = 0
    for b in trainer.get_train_dataloader():
        computed += b["input_ids"].numel()
        real += int(b["attention_mask"].sum())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out = {"cpu_s": cpu, "wall_s": wall, "steps": out_train.global_step, "pairs": out_train.global_step * cfg["batch"],
           "last_loss": losses[-1], "base_rss": base, "peak_rss": peak_rss(), "steady_rss": steady.peak,
           "final": str(work / name / "final"), "bf16": args.bf16,
           "gradient_checkpointing": args.gradient_checkpointing, "micro_batch": micro,
           "ref_model": trainer.ref_model is not None, "ids": ids, "padding_share": 1 - real / computed,
           "checkpoints": checkpoints,
           "steps_window": {**(clock.window or {}), "pairs": (steps - 1) * cfg["batch"]},
           "save_cpu_s": clock.save_cpu, "save_wall_s": clock.save_wall}
    (work / f"{name}.rank0.json").write_text(json.dumps(out))
    return out


def run_worker(name: str, work: Path, cfg_path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", name, str(work), str(cfg_path)]
    if name.endswith("_fsdp2"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd[1:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [x.strip() for x in r.stderr.splitlines() if x.strip()]
        errors = [x for x in lines if "Error" in x and "ChildFailedError" not in x and "elastic" not in x]
        return {"error": (errors or lines or ["(no output)"])[-1][-600:]}
    ranks = sorted(work.glob(f"{name}.rank*.json"))
    res = [json.loads(p.read_text()) for p in ranks]
    return res[0] if len(res) == 1 else {"ranks": res}


# ----------------------------------------------------------------------------- evaluation (one code for all)

def answer_logps(model, examples) -> list[float]:
    """Summed log-probability of each example's labelled tokens (one example per forward)."""
    import torch

    out = []
    with torch.no_grad():
        for ids, labels in examples:
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1)
            tgt = torch.tensor(labels[1:])
            keep = tgt != -100
            out.append(lp[keep].gather(1, tgt[keep, None]).sum().item())
    return out


def heldout_loss(model_dir: str, examples, ref: list[float]) -> dict:
    """DPO sigmoid loss, reward accuracy and margin of the held-out pairs under a trained model."""
    import math

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pol = answer_logps(model, examples)
    margins = [BETA * ((pol[i] - ref[i]) - (pol[i + 1] - ref[i + 1])) for i in range(0, len(pol), 2)]
    loss = sum(math.log1p(math.exp(-m)) if m > -30 else -m for m in margins) / len(margins)
    return {"loss": loss, "accuracy": sum(m > 0 for m in margins) / len(margins),
            "margin": sum(margins) / len(margins)}


# ----------------------------------------------------------------------------- main

def _mib(b: float) -> float:
    return b / 2 ** 20


MET = {True: "MET", False: "NOT MET"}


def _window(r: dict) -> dict:
    """Pairs per CPU- and wall-second of the training steps alone (see `StepClock`)."""
    w = r.get("steps_window") or {}
    if not w.get("cpu_s"):
        return {"steps_pairs_per_cpu_s": None, "steps_pairs_per_wall_s": None, "steps_cpu_s": None,
                "steps_pairs": w.get("pairs")}
    return {"steps_pairs_per_cpu_s": w["pairs"] / w["cpu_s"], "steps_pairs_per_wall_s": w["pairs"] / w["wall_s"],
            "steps_cpu_s": w["cpu_s"], "steps_wall_s": w["wall_s"], "steps_pairs": w["pairs"]}


def _f(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def summarize(results: dict) -> tuple[dict, list[str]]:
    """The figures of each one-process contender, and the table's lines."""
    lines = ["| contender | steps | pairs/CPU-s whole run | pairs/CPU-s steps alone | pairs/wall-s whole run | "
             "CPU s: whole / steps alone / saving | wall s | peak RSS MiB (net) | steady-state RSS MiB (net) | "
             "padding | last-step loss | held-out loss | held-out acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table = {}
    for name in ("ours", "trl_default", "trl_tuned"):
        r = results.get(name)
        if not r or "error" in r:
            if r:
                lines.append(f"| {name} | failed: {r['error'][:120]} |||||||||||")
            continue
        fig = {"pairs_per_cpu_s": r["pairs"] / r["cpu_s"], "pairs_per_wall_s": r["pairs"] / r["wall_s"], **_window(r),
               "save_cpu_s": r["save_cpu_s"], "save_wall_s": r["save_wall_s"],
               "peak_rss_mib": _mib(r["peak_rss"]), "peak_rss_net_mib": _mib(r["peak_rss"] - r["base_rss"]),
               "steady_rss_mib": _mib(r["steady_rss"]), "steady_rss_net_mib": _mib(r["steady_rss"] - r["base_rss"]),
               "base_rss_mib": _mib(r["base_rss"]), "cpu_s": r["cpu_s"], "wall_s": r["wall_s"], "steps": r["steps"],
               "pairs": r["pairs"], "last_loss": r["last_loss"], "heldout": r["heldout"]}
        fig.update({k: r[k] for k in ("bf16", "gradient_checkpointing", "micro_batch", "ref_model", "padding_share",
                                      "checkpoints") if k in r})
        table[name] = fig
        lines.append(f"| {name} | {r['steps']} | {fig['pairs_per_cpu_s']:.3f} | {_f(fig['steps_pairs_per_cpu_s'])} | "
                     f"{fig['pairs_per_wall_s']:.3f} | {r['cpu_s']:.1f} / {_f(fig['steps_cpu_s'], '.1f')} / "
                     f"{r['save_cpu_s']:.1f} | {r['wall_s']:.1f} | "
                     f"{fig['peak_rss_mib']:.0f} ({fig['peak_rss_net_mib']:.0f}) | "
                     f"{fig['steady_rss_mib']:.0f} ({fig['steady_rss_net_mib']:.0f}) | "
                     f"{100 * fig.get('padding_share', 0.0):.0f}% | {r['last_loss']:.4f} | "
                     f"{r['heldout']['loss']:.4f} | {r['heldout']['accuracy']:.2f} |")
    return table, lines


def _ratio(a, b):
    return a / b if a is not None and b else None


def compare(table: dict) -> tuple[dict, list[str]]:
    """Ours / each TRL contender: throughput (whole run, steps alone), memory, held-out loss; the
    issue's throughput target, judged on both throughput figures."""
    verdict, lines = {}, []
    o = table.get("ours")
    for name in ("trl_default", "trl_tuned"):
        if o is None or name not in table:
            continue
        t = table[name]
        v = {"cpu_ratio": o["pairs_per_cpu_s"] / t["pairs_per_cpu_s"],
             "wall_ratio": o["pairs_per_wall_s"] / t["pairs_per_wall_s"],
             "steps_cpu_ratio": _ratio(o["steps_pairs_per_cpu_s"], t["steps_pairs_per_cpu_s"]),
             "steps_wall_ratio": _ratio(o["steps_pairs_per_wall_s"], t["steps_pairs_per_wall_s"]),
             "peak_rss_net_ratio": o["peak_rss_net_mib"] / t["peak_rss_net_mib"],
             "heldout_loss_rel_diff": o["heldout"]["loss"] / t["heldout"]["loss"] - 1}
        v["loss_agrees_2pct"] = abs(v["heldout_loss_rel_diff"]) <= 0.02
        verdict[name] = v
        lines.append(f"ours / {name}: whole run {v['cpu_ratio']:.2f}x pairs per CPU-second ({v['wall_ratio']:.2f}x "
                     f"per wall-second); steps alone {_f(v['steps_cpu_ratio'], '.2f')}x per CPU-second "
                     f"({_f(v['steps_wall_ratio'], '.2f')}x per wall-second); {v['peak_rss_net_ratio']:.2f}x net peak "
                     f"RSS; held-out loss {100 * v['heldout_loss_rel_diff']:+.2f}% "
                     f"({'agrees' if v['loss_agrees_2pct'] else 'does NOT agree'} within 2%)")
    if "trl_tuned" in verdict:
        v = verdict["trl_tuned"]
        met = v["cpu_ratio"] >= 1.5 and v["loss_agrees_2pct"]
        met_steps = v["steps_cpu_ratio"] is not None and v["steps_cpu_ratio"] >= 1.5 and v["loss_agrees_2pct"]
        verdict["target_throughput_met"], verdict["target_throughput_met_steps"] = met, met_steps
        lines.append(f"target >= 1.5x TRL tuned at equal loss (+-2%, held-out loss "
                     f"{100 * v['heldout_loss_rel_diff']:+.2f}%): "
                     f"whole run {MET[met]} ({v['cpu_ratio']:.2f}x per CPU-second); training steps alone "
                     f"{MET[met_steps]} ({_f(v['steps_cpu_ratio'], '.2f')}x per CPU-second)")
    return verdict, lines


def fsdp_verdict(o: dict | None, fsdp: dict | None, title: str) -> tuple[dict | None, list[str]]:
    """FSDP2 on 2 ranks against one process: model state, steady-state and whole-run RSS per rank,
    and the model state's share of the steady-state RSS."""
    if not fsdp:
        return None, []
    if "error" in fsdp or not o or "error" in o:
        why = fsdp.get("error") or (o or {}).get("error") or "no one-process run to compare with"
        return {"error": why}, [f"FSDP2, 2 ranks, {title}: failed: {why}"]
    ranks = fsdp["ranks"]

    def state(r):
        return sum(r["state_bytes"].get(k, 0) for k in ("params", "grads", "optim"))

    steady = [r["steady_rss"] - r["base_rss"] for r in ranks]
    peak = [r["peak_rss"] - r["base_rss"] for r in ranks]
    held = [state(r) for r in ranks]
    one_steady = o["steady_rss"] - o["base_rss"]
    one = {"steady_rss_net_mib": _mib(one_steady), "peak_rss_net_mib": _mib(o["peak_rss"] - o["base_rss"]),
           "model_state_mib": _mib(state(o)), "model_state_share": state(o) / one_steady,
           "last_loss": o["last_loss"]}
    ratio_steady = max(steady) / one_steady
    ratio_state = max(held) / state(o)
    window_cpu = [(r.get("steps_window") or {}).get("cpu_s") for r in ranks]
    v = {"config": title, "steady_rss_net_per_rank_mib": [_mib(x) for x in steady],
         "peak_rss_net_per_rank_mib": [_mib(x) for x in peak], "model_state_per_rank_mib": [_mib(x) for x in held],
         "model_state_share_per_rank": [h / x for h, x in zip(held, steady)], "one_process": one,
         "ratio_steady_rss": ratio_steady, "ratio_peak_rss": max(peak) / (o["peak_rss"] - o["base_rss"]),
         "ratio_model_state": ratio_state, "target_met_model_state": ratio_state <= 0.55,
         "target_met_steady_rss": ratio_steady <= 0.55,
         "pairs_per_cpu_s": ranks[0]["pairs"] / sum(r["cpu_s"] for r in ranks),
         "pairs_per_wall_s": ranks[0]["pairs"] / max(r["wall_s"] for r in ranks),
         "steps_pairs_per_cpu_s": (ranks[0]["steps_window"]["pairs"] / sum(window_cpu)
                                   if all(window_cpu) else None),
         "last_loss": ranks[0]["last_loss"], "heldout": fsdp.get("heldout")}
    mib = lambda xs: ", ".join(f"{_mib(x):.0f}" for x in xs)  # noqa: E731
    pct = lambda xs: "/".join(f"{100 * x:.0f}%" for x in xs)  # noqa: E731
    lines = [f"FSDP2, 2 ranks (gloo), per rank (max) / one process, target <= 0.55; {title}:",
             f"  parameters + gradients + AdamW state: {mib(held)} MiB vs {one['model_state_mib']:.0f} MiB = "
             f"{ratio_state:.3f}x ({MET[ratio_state <= 0.55]})",
             f"  steady-state RSS net of imports (state + activations + the rest): {mib(steady)} MiB vs "
             f"{one['steady_rss_net_mib']:.0f} MiB = {ratio_steady:.3f}x ({MET[ratio_steady <= 0.55]}); "
             f"model state is {pct([one['model_state_share']])} of it in one process, "
             f"{pct(v['model_state_share_per_rank'])} per rank",
             f"  whole-run peak RSS net of imports: {v['ratio_peak_rss']:.3f}x; last-step loss {v['last_loss']:.4f} "
             f"(one process {o['last_loss']:.4f})"
             + (f", held-out loss {v['heldout']['loss']:.4f}" if v["heldout"] else ""),
             f"  {v['pairs_per_cpu_s']:.3f} pairs/CPU-s whole run, {_f(v['steps_pairs_per_cpu_s'])} steps alone "
             f"(both ranks' CPU)"]
    return v, lines


def same_token_ids(results: dict, train_ex) -> bool | None:
    """Whether TRL tokenised the pairs into our very ids (prompt, chosen answer, rejected answer)."""
    ours = []
    for k in range(0, len(train_ex), 2):
        c, r = train_ex[k], train_ex[k + 1]
        start = next(i for i, t in enumerate(c.labels) if t != -100)
        ours.append([c.input_ids[:start], c.input_ids[start:], r.input_ids[start:]])
    verdict = None
    for res in results.values():
        ids = res.pop("ids", None)
        if ids is not None:
            verdict = (verdict is not False) and ids == ours
    return verdict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long run on a tiny model (smoke test)")
    ap.add_argument("--pairs", type=int, help="training pairs, one epoch (default 48; tiny 8)")
    ap.add_argument("--heldout", type=int, help="held-out pairs for the final loss (default 16; tiny 4)")
    ap.add_argument("--batch", type=int, help="pairs per optimiser step, all contenders (default 8; tiny 4)")
    ap.add_argument("--skip", default="", help="comma-separated runs to skip: trl_default,trl_tuned,ours_fsdp2,"
                    "memory (the model-state memory configuration)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (models, checkpoints) for inspection")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, work, cfg_path = args.worker
        cfg = json.loads(Path(cfg_path).read_text())
        if name.startswith("ours"):
            worker_ours(Path(work), cfg, name)
        else:
            worker_trl(Path(work), cfg, tuned=name == "trl_tuned")
        return 0
    spec = TINY if args.tiny else FULL
    n_pairs = args.pairs or (8 if args.tiny else 48)
    n_held = args.heldout or (4 if args.tiny else 16)
    batch = args.batch or (4 if args.tiny else 8)
    if n_pairs % batch:
        sys.exit(f"--pairs {n_pairs} must be a multiple of --batch {batch} (every contender takes whole steps)")
    work = Path(tempfile.mkdtemp(prefix="ja-dpo-bench-"))
    try:
        out = bench(args, spec, n_pairs, n_held, batch, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


def bench(args, spec: dict, n_pairs: int, n_held: int, batch: int, work: Path) -> dict:
    import logging

    import torch

    from ja_instruct.data.templates import get_template
    from ja_instruct.pairs.records import read_pairs_jsonl
    from ja_instruct.train.dpo_data import tokenize_pairs

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    tok = build_tokenizer(spec["words"], work / "model")
    n_params = build_model(tok, spec["model"], work / "model")
    rows = make_pairs(n_pairs, n_held, spec)
    train_rows = [r for r in rows if r["split"] == "train"]
    # Each of our runs reads its own copy, so each computes (and caches) its reference itself.
    pairs = {name: str(write_jsonl(work / f"pairs_{name}" / "pairs.jsonl", train_rows))
             for name in ("ours", "ours_fsdp2")}
    cfg_path = work / "config.json"
    cfg_path.write_text(json.dumps({"model_dir": str(work / "model"), "pairs": pairs, "batch": batch,
                                    "steps": n_pairs // batch}))
    template = get_template("tokenizer", tok)
    held_recs = [r for r in read_pairs_jsonl(write_jsonl(work / "heldout.jsonl", rows)) if r.split == "heldout"]
    train_ex, _, tstats = tokenize_pairs(read_pairs_jsonl(Path(pairs["ours"])), tok, template, MAX_LENGTH, True)
    held_ex, _, _ = tokenize_pairs(held_recs, tok, template, MAX_LENGTH, True)
    if tstats["kept"] != n_pairs:
        sys.exit(f"only {tstats['kept']} of {n_pairs} pairs fit max_length {MAX_LENGTH}: {tstats}")
    n_tok = sum(len(e.input_ids) for e in train_ex)
    ans_tok = sum(sum(t != -100 for t in e.labels) for e in train_ex)
    print(f"model: Llama {n_params / 1e6:.1f}M parameters ({spec['model']['hidden_size']} hidden, "
          f"{spec['model']['num_hidden_layers']} layers, vocab {len(tok)}), fp32, 1 thread per process; "
          f"pairs: {n_pairs} train ({n_tok:,} tokens in chosen + rejected sequences, {ans_tok:,} answer tokens), "
          f"{n_held} held out; {batch} pairs/step, {n_pairs // batch} steps, lr {LR} constant, beta {BETA}", flush=True)

    results: dict[str, dict] = {}
    skip = set(filter(None, args.skip.split(",")))
    for name in ("ours", "trl_default", "trl_tuned", "ours_fsdp2"):
        if name not in skip:
            print(f"running {name} ...", flush=True)
            results[name] = run_worker(name, work, cfg_path)
            if "error" in results[name]:
                print(f"  {name} failed: {results[name]['error']}", flush=True)
    same_ids = same_token_ids(results, train_ex)

    # The final loss: every trained model on the held-out pairs, one code path.
    from transformers import AutoModelForCausalLM

    held = [(e.input_ids, e.labels) for e in held_ex]
    ref = answer_logps(AutoModelForCausalLM.from_pretrained(work / "model").eval(), held)
    start_eval = heldout_loss(str(work / "model"), held, ref)
    for r in results.values():
        final = r.get("final") or (r.get("ranks") or [{}])[0].get("final")
        if final and "error" not in r:
            r["heldout"] = heldout_loss(final, held, ref)

    table, lines = summarize(results)
    print("\n" + "\n".join(lines))
    print(f"\nheld-out loss before training: {start_eval['loss']:.4f} (accuracy {start_eval['accuracy']:.2f}); "
          f"token ids identical in ours and TRL: {same_ids}")
    if "trl_default" in table:
        d = table["trl_default"]
        print(f"trl_default ran with bf16={d['bf16']}, gradient_checkpointing={d['gradient_checkpointing']}, "
              f"{d['micro_batch']} pairs per micro-batch, reference model copy: {d['ref_model']}")
    if "trl_tuned" in table:
        d = table["trl_tuned"]
        print(f"trl_tuned ran with bf16={d['bf16']}, gradient_checkpointing={d['gradient_checkpointing']}, "
              f"{d['micro_batch']} pair per micro-batch, precompute_ref_log_probs=True, reference model kept: "
              f"{d['ref_model']}, padding_free off (disabled in TRL 1.16)")
    verdict, lines = compare(table)
    fsdp, fsdp_lines = fsdp_verdict(results.get("ours"), results.get("ours_fsdp2"),
                                    "throughput configuration (above; activations dominate)")
    if fsdp is not None:
        verdict["fsdp2"] = fsdp
    print("\n".join(lines + fsdp_lines), flush=True)
    mem_setup = raw_mem = None
    if "memory" not in skip:
        mem_setup, raw_mem, mem, mem_lines = memory_bench(MEM_TINY if args.tiny else MEM_FULL, work)
        verdict["fsdp2_model_state"] = mem
        print("\n".join(mem_lines))
    return {"model": {**spec["model"], "vocab_size": len(tok), "parameters": n_params},
            "data": {"train_pairs": n_pairs, "heldout_pairs": n_held, "pairs_per_step": batch,
                     "steps": n_pairs // batch, "tokens": n_tok, "answer_tokens": ans_tok,
                     "prompt_tokens": spec["prompt"], "answer_tokens_range": spec["answer"]},
            "settings": {"lr": LR, "beta": BETA, "adam_betas": ADAM_BETAS, "grad_clip": CLIP, "seed": SEED,
                         "max_length": MAX_LENGTH, "threads_per_process": 1},
            "same_token_ids": same_ids, "heldout_before": start_eval, "results": table, "raw": results,
            "memory_config": mem_setup, "raw_memory": raw_mem, "verdict": verdict}


def memory_bench(spec: dict, work: Path) -> tuple[dict, dict, dict, list[str]]:
    """The model-state configuration (see the module doc): ours in one process and under FSDP2 on
    2 ranks, the same settings, memory only. Returns (setup, raw results, verdict, lines)."""
    from ja_instruct.data.templates import get_template
    from ja_instruct.pairs.records import read_pairs_jsonl
    from ja_instruct.train.dpo_data import tokenize_pairs

    mdir, names = work / "mem_model", ("ours_mem", "ours_mem_fsdp2")
    tok = build_tokenizer(spec["words"], mdir)
    n_params = build_model(tok, spec["model"], mdir)
    rows = make_pairs(MEM_PAIRS, 0, spec)
    pairs = {name: str(write_jsonl(work / f"pairs_{name}" / "pairs.jsonl", rows)) for name in names}
    steps = MEM_PAIRS // MEM_BATCH
    cfg_path = work / "config_mem.json"
    cfg_path.write_text(json.dumps({"model_dir": str(mdir), "pairs": pairs, "batch": MEM_BATCH, "steps": steps,
                                    "activation_checkpointing": True}))
    ex, _, _ = tokenize_pairs(read_pairs_jsonl(Path(pairs[names[0]])), tok, get_template("tokenizer", tok),
                              MAX_LENGTH, True)
    per_pair = [len(ex[k].input_ids) + len(ex[k + 1].input_ids) for k in range(0, len(ex), 2)]
    setup = {"model": {**spec["model"], "vocab_size": len(tok), "parameters": n_params}, "pairs": MEM_PAIRS,
             "pairs_per_step": MEM_BATCH, "micro_batch_pairs": 1, "steps": steps, "activation_checkpointing": True,
             "dtype": "fp32", "tokens_per_pair_max": max(per_pair),
             "tokens_per_pair_mean": sum(per_pair) / len(per_pair)}
    print(f"\nmemory, model-state configuration: Llama {n_params / 1e6:.1f}M parameters "
          f"({spec['model']['hidden_size']} hidden, {spec['model']['num_hidden_layers']} layers, vocab {len(tok)}); "
          f"{MEM_PAIRS} pairs of <= {max(per_pair)} tokens (chosen + rejected sequences); activation checkpointing; "
          f"{MEM_BATCH} pairs/step, 1 per micro-batch, {steps} steps; fp32; one process, then FSDP2 on 2 ranks ...",
          flush=True)
    raw = {name: run_worker(name, work, cfg_path) for name in names}
    v, lines = fsdp_verdict(raw[names[0]], raw[names[1]], "model-state configuration (weights, gradients and "
                            "AdamW state dominate)")
    return setup, raw, v, lines


if __name__ == "__main__":
    sys.exit(main())
