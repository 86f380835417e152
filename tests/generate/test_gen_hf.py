"""The hf backend on a tiny random Llama: left padding, batched == one at a time (greedy)."""

from __future__ import annotations

import pytest

from ja_instruct.errors import UserError
from ja_instruct.generate.backends import HFBackend, SamplingParams
from ja_instruct.generate.config import ModelSpec

QUESTIONS = ["日本の首都はどこですか？", "富士山", "機械学習とは何ですか？ニューラルネットワークについても説明してください。",
             "こんにちは", "日本の歴史について教えてください。"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core box: one torch thread is several times faster than two
    fighting other jobs (the results are the same)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    path = str(tiny_model_dir)
    one = HFBackend(ModelSpec(id="tiny", template="plamo", batch_size=1, device="cpu"), path)
    many = HFBackend(ModelSpec(id="tiny", template="plamo", batch_size=4, device="cpu"), path)
    return one, many


def test_prompt_uses_the_template_and_left_padding(backends):
    one, many = backends
    assert many.tokenizer.padding_side == "left"
    ids = many.encode([{"role": "user", "content": "富士山"}])
    text = many.tokenizer.decode(ids)
    assert text.startswith("以下はタスクを説明する指示") and text.endswith("### 指示:\n富士山\n\n### 応答:\n")
    batch = many.tokenizer.pad({"input_ids": [ids, ids + ids]}, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == many.tokenizer.pad_token_id  # pads sit on the left
    assert batch["attention_mask"][0, -1].item() == 1


def test_batched_equals_one_at_a_time_under_greedy(backends):
    one, many = backends
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    singles = one.generate(convs, params)
    batched = many.generate(convs, params)  # mixed lengths: padding inside every batch
    assert [g.text for g in batched] == [g.text for g in singles]
    assert [g.n_tokens for g in batched] == [g.n_tokens for g in singles]
    for g in batched:  # a random model rarely says EOS: hitting the limit is flagged
        assert 1 <= g.n_tokens <= 11 and g.truncated == (g.n_tokens == 10)
    # A multi-turn conversation (the second MT-Bench turn) renders and generates too.
    conv2 = convs[0] + [{"role": "assistant", "content": singles[0].text}, {"role": "user", "content": "続けて"}]
    assert len(many.generate([conv2, convs[1]], params)) == 2


def test_sampling_is_seeded(backends):
    _, many = backends
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS[:3]]
    a = many.generate(convs, SamplingParams(temperature=1.0, max_new_tokens=8, seed=1))
    b = many.generate(convs, SamplingParams(temperature=1.0, max_new_tokens=8, seed=1))
    assert [g.text for g in a] == [g.text for g in b]


def test_stop_strings_cut_the_answer(backends):
    _, many = backends
    conv = [[{"role": "user", "content": QUESTIONS[0]}], [{"role": "user", "content": QUESTIONS[3]}]]
    full = many.generate(conv, SamplingParams(temperature=0.0, max_new_tokens=10))
    text = full[0].text
    k = next(i for i in range(2, len(text) - 1) if "\ufffd" not in text[i:i + 2] and text[i:i + 2] not in text[:i + 1])
    stopped = many.generate(conv, SamplingParams(temperature=0.0, max_new_tokens=10, stop=(text[k:k + 2],)))
    assert stopped[0].text == text[:k].strip() and not stopped[0].truncated  # generation stopped there
    assert stopped[0].n_tokens < 10
    g = many._decode(many.tokenizer("日本の首都は東京です。\n\n### 指示:\n次", add_special_tokens=False)["input_ids"],
                     SamplingParams(max_new_tokens=100, stop=("\n\n### 指示:",)))
    assert g.text == "日本の首都は東京です。" and not g.truncated


def test_tokenizer_template_needs_a_chat_template(tiny_model_dir):
    with pytest.raises(UserError, match="chat template"):
        HFBackend(ModelSpec(id="tiny", template="tokenizer", device="cpu"), str(tiny_model_dir))
    with pytest.raises(UserError, match="unknown prompt template"):
        HFBackend.check(ModelSpec(id="tiny", template="alpaca"), str(tiny_model_dir))
