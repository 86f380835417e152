"""Generation prompts are the training prompt ids; cut answers never end in half a character."""

from __future__ import annotations

import pytest

from ja_instruct.data.templates import get_template
from ja_instruct.data.tokenize import IGNORE_INDEX, tokenize_conversation
from ja_instruct.generate.backends import HFBackend, SamplingParams, prompt_ids
from ja_instruct.generate.config import ModelSpec
from ja_instruct.generate.detok import SafeDecoder
from tiny import build_tiny_llama, build_tiny_tokenizer

# A Llama-2 style chat template that writes its own BOS (as such templates do).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")
VARIANTS = {"plain": {}, "bos": {"add_bos_token": True}, "eos": {"add_eos_token": True},
            "bos+eos": {"add_bos_token": True, "add_eos_token": True}}
TURNS = [{"role": "user", "content": "日本の首都はどこですか？"}, {"role": "assistant", "content": "日本の首都は東京です。"},
         {"role": "user", "content": "富士山について教えてください。"}, {"role": "assistant", "content": "日本で一番高い山です。"}]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The tiny tokenizer saved once, reloaded as each variant (BOS and/or EOS added to every text)."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    out = {}
    for name, kw in VARIANTS.items():
        tok = AutoTokenizer.from_pretrained(d, **kw)
        tok.chat_template = CHAT_TEMPLATE
        out[name] = tok
    return out


def trained_runs(labels: list[int]) -> list[int]:
    """Start index of each run of trained tokens (one per assistant turn)."""
    return [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]


def test_variants_really_add_specials(tokenizers):
    ids = {n: t("あ")["input_ids"] for n, t in tokenizers.items()}
    eos, bos = tokenizers["eos"].eos_token_id, tokenizers["bos"].bos_token_id
    assert ids["eos"][-1] == eos and ids["bos"][0] == bos and ids["plain"][-1] != eos and ids["plain"][0] != bos


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("template", ["plamo", "llmjp-alpaca", "tokenizer"])
def test_prompt_ids_equal_training_prompt_ids(tokenizers, template, variant):
    tok = tokenizers[variant]
    train = tokenize_conversation(tok, template, TURNS, max_length=None)
    starts = trained_runs(train["labels"])
    assert len(starts) == 2
    tmpl = get_template(template, tok)
    for turn, start in zip((1, 3), starts):  # first answer, and the second after the model's own first
        gen = prompt_ids(tok, tmpl, TURNS[:turn])
        assert gen == train["input_ids"][:start], (template, variant, turn)
        assert gen[-1] != tok.eos_token_id  # the prompt ends in the response header, never in EOS
    assert prompt_ids(tok, tmpl, TURNS[:1]).count(tok.bos_token_id) <= 1  # BOS at most once


def test_hf_backend_encodes_like_training_with_an_eos_appending_tokenizer(tokenizers, tmp_path):
    tok = tokenizers["bos+eos"]
    model_dir = build_tiny_llama(tmp_path / "m", tok)
    backend = HFBackend(ModelSpec(id="t", template="llmjp-alpaca", device="cpu"), str(model_dir))
    assert backend.tokenizer("あ")["input_ids"][-1] == tok.eos_token_id  # the reloaded tokenizer still appends EOS
    train = tokenize_conversation(backend.tokenizer, "llmjp-alpaca", TURNS[:2], max_length=None)
    assert backend.encode(TURNS[:1]) == train["input_ids"][:trained_runs(train["labels"])[0]]


# --------------------------------------------------------------------------- cut characters

TEXT = "日本の首都は東京です。鱈と鰤"  # 鱈, 鰤: not in the tiny tokenizer's corpus -> several byte tokens


def _complete_prefix(text: str, n_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 fits in ``n_bytes``."""
    out, used = "", 0
    for ch in text:
        used += len(ch.encode("utf-8"))
        if used > n_bytes:
            break
        out += ch
    return out


def test_byte_level_cut_drops_only_the_partial_character(tiny_tokenizer):
    dec = SafeDecoder(tiny_tokenizer)
    ids = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    pieces = tiny_tokenizer.convert_ids_to_tokens(ids)  # byte-level: one symbol per byte
    raw = [tiny_tokenizer.decode(ids[:m]) for m in range(1, len(ids) + 1)]
    assert sum(r.endswith("\ufffd") for r in raw) >= 2  # the test really cuts characters, some mid-token
    for m in range(1, len(ids) + 1):
        got = dec.decode(ids[:m], cut=True)
        assert not got.endswith("\ufffd")
        assert got == _complete_prefix(TEXT, sum(len(p) for p in pieces[:m])), m
    assert dec.decode(ids[:-1], cut=False) == raw[-2]  # an answer that ended by itself is left alone


def byte_fallback_tokenizer():
    """A SentencePiece-style tokenizer: one token per known character, <0xNN> byte tokens otherwise."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + [f"<0x{b:02X}>" for b in range(256)])}
    for ch in "日本の首都は東京です。と答え":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def test_byte_fallback_cut_keeps_whole_characters_before_it():
    tok = byte_fallback_tokenizer()
    dec = SafeDecoder(tok)
    text = "東京鱈鰤と"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 + 3 + 3 + 1  # 鱈 and 鰤 are three byte tokens each
    expected_chars = {1: "東", 2: "東京", 5: "東京鱈", 8: "東京鱈鰤", 9: text}
    for m in range(1, len(ids) + 1):
        want = expected_chars[max(k for k in expected_chars if k <= m)]
        got = dec.decode(ids[:m], cut=True)
        assert got == want, (m, got)
    # Byte fallback turns the whole byte run into U+FFFDs when it ends unfinished, 鱈 included.
    assert tok.decode(ids[:7]).count("\ufffd") >= 2


@pytest.mark.parametrize("make", [build_tiny_tokenizer, byte_fallback_tokenizer])
def test_a_genuine_replacement_character_is_kept(make):
    tok = make()
    for text in ("答え\ufffd", "東\ufffd\ufffd"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert SafeDecoder(tok).decode(ids, cut=True) == tok.decode(ids) == text


def test_hf_decode_of_a_truncated_answer(tiny_model_dir):
    backend = HFBackend(ModelSpec(id="t", template="plamo", device="cpu"), str(tiny_model_dir))
    ids = backend.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    g = backend._decode(ids[:-1], SamplingParams(max_new_tokens=len(ids) - 1))
    assert g.truncated and g.text == "日本の首都は東京です。鱈と" and g.n_tokens == len(ids) - 1
    whole = backend._decode(ids + [backend.tokenizer.eos_token_id], SamplingParams(max_new_tokens=100))
    assert whole.text == TEXT and not whole.truncated
