"""Generation throughput: 40 questions, the same model, batched (left padded, sorted by length)
vs one question at a time, through the real ``hf`` backend. Target: >= 4x tokens/s.

Questions: the real Rakuda questions in ../shared/data when present, else the embedded set.
Model: a small random Llama (4 layers, hidden 256) with a byte-level BPE tokenizer trained
here on the questions, so the script needs no download and runs in about a minute on CPU;
``--model embedded:smollm2-135m-instruct`` (or any HF dir/id) measures a real model instead.
Decoding is greedy, so both runs generate the same tokens (the script reports how many of
the 40 answers agree).

    python benchmarks/generate_throughput.py [--json PATH] [--batch-size 16] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JA_INSTRUCT_SHARED_DATA", REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_question_set(n: int):
    """(source name, first ``n`` questions): Rakuda from ../shared/data if present, else embedded."""
    from ja_instruct.generate.questions import load_questions

    rakuda = SHARED / "rakuda" / "questions.jsonl"
    source = str(rakuda) if rakuda.is_file() else "embedded:questions_ja.jsonl"
    return source, load_questions(source, limit=n)


def build_small_llama(out: Path, texts: list[str], seed: int = 0) -> Path:
    """A random 4-layer, hidden-256 Llama and a BPE tokenizer trained on ``texts``, saved to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ja_instruct.data.templates import LLMJP_ALPACA_HEADER, PLAMO_HEADER

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts + [PLAMO_HEADER, LLMJP_ALPACA_HEADER, "### 指示:\n### 応答:\n"], trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(hf), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(out)
    hf.save_pretrained(out)
    return out


def measure(model_path: str, template: str, batch_size: int, convs: list, params) -> dict:
    """Answer every conversation with the hf backend at ``batch_size``; tokens/s over the wall time."""
    from ja_instruct.generate.backends import HFBackend
    from ja_instruct.generate.config import ModelSpec

    backend = HFBackend(ModelSpec(id="bench", template=template, batch_size=batch_size, dtype="float32"),
                        model_path)
    backend.generate(convs[:1], params.__class__(**{**params.as_dict(), "max_new_tokens": 2, "stop": ()}))  # warm-up
    t0 = time.perf_counter()
    gens = backend.generate(convs, params)
    wall = time.perf_counter() - t0
    backend.close()
    tokens = sum(g.n_tokens or 0 for g in gens)
    return {"batch_size": batch_size, "seconds": round(wall, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1), "texts": [g.text for g in gens]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="HF dir/id or embedded:NAME (default: a small Llama built here)")
    ap.add_argument("--template", default=None, help="prompt template (default: plamo; tokenizer for --model)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared, busy machine more threads make timings "
                         "noisy for both runs alike; 0 keeps torch's default)")
    args = ap.parse_args(argv)

    import torch

    from ja_instruct.generate.backends import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    source, questions = load_question_set(args.questions)
    convs = [[{"role": "user", "content": q.turns[0]}] for q in questions]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from ja_instruct.models import resolve_model

            model, template = resolve_model(args.model), args.template or "tokenizer"
        else:
            model = str(build_small_llama(Path(tmp) / "llama", [q.turns[0] for q in questions]))
            template = args.template or "plamo"
        print(f"questions: {len(questions)} from {source}; model: {args.model or 'small random Llama (4x256)'}; "
              f"template {template}; greedy, max_new_tokens {args.max_new_tokens}; torch threads "
              f"{torch.get_num_threads()}", file=sys.stderr)
        single = measure(model, template, 1, convs, params)
        batched = measure(model, template, args.batch_size, convs, params)
    same = sum(a == b for a, b in zip(single.pop("texts"), batched.pop("texts")))
    ratio = batched["tokens_per_s"] / single["tokens_per_s"]
    result = {"questions": len(questions), "source": source, "model": args.model or "small-llama-4x256",
              "torch_threads": torch.get_num_threads(),
              "max_new_tokens": args.max_new_tokens, "one_at_a_time": single, "batched": batched,
              "speedup": round(ratio, 2), "identical_answers": same, "target": 4.0, "met": ratio >= 4.0}
    print(f"one at a time : {single['tokens']} tokens in {single['seconds']:.1f}s = {single['tokens_per_s']:.1f} tok/s")
    print(f"batched (bs={args.batch_size}): {batched['tokens']} tokens in {batched['seconds']:.1f}s = "
          f"{batched['tokens_per_s']:.1f} tok/s")
    print(f"speedup: {ratio:.2f}x (target >= 4x: {'met' if ratio >= 4 else 'NOT met'}); "
          f"identical greedy answers: {same}/{len(questions)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
