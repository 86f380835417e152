"""Tiny models for tests: a Japanese byte-level BPE tokenizer and a 2-layer Llama, built here."""

from __future__ import annotations

from pathlib import Path

# Japanese text to train the tiny tokenizer on (BPE; sentencepiece Unigram converts
# wrongly in transformers 5).
_CORPUS = [
    "以下はタスクを説明する指示で、文脈を説明した入力とペアになっています。要求を適切に補完するよう応答を書いてください。",
    "### 指示:\n日本の首都はどこですか？\n\n### 応答:\n日本の首都は東京です。",
    "### 入力:\n富士山は日本で一番高い山です。",
    "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。",
    "こんにちは。今日はいい天気ですね。散歩に行きましょう。",
    "機械学習とは、データから規則を学ぶ方法です。ニューラルネットワークはその一つです。",
    "日本の歴史には、奈良時代、平安時代、鎌倉時代、室町時代、江戸時代などがあります。",
    "政治、経済、社会、地理、歴史について質問に答えてください。",
    "Hello world. The quick brown fox jumps over the lazy dog. 1234567890",
]


def build_tiny_tokenizer(out_dir: Path | None = None):
    """A byte-level BPE tokenizer trained on a few Japanese sentences, as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                 eos_token="</s>", pad_token="<pad>")
    if out_dir is not None:
        hf.save_pretrained(out_dir)
    return hf


def build_tiny_llama(out_dir: Path, tokenizer=None, seed: int = 0, **overrides) -> Path:
    """Save a 2-layer, hidden-64 LlamaForCausalLM (+ tokenizer) as a HF model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
