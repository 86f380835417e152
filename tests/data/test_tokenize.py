"""SFT tokenisation: boundary-safe ids, labels on responses + EOS only, BOS, over-length policy."""

from __future__ import annotations

import pytest

try:  # tests/data is not a package: pytest puts this folder on sys.path
    from test_templates import A, I, S, U, bos_tokenizer, conversations, smollm2_tokenizer
except ImportError:  # it became one
    from .test_templates import A, I, S, U, bos_tokenizer, conversations, smollm2_tokenizer

from ja_instruct.data.templates import get_template
from ja_instruct.data.tokenize import (IGNORE_INDEX, _Encoder, encode_conversation, encode_prompt,
                                       tokenize_conversation, tokenize_dataset, trained_mask_from_offsets)
from ja_instruct.errors import UserError

MULTI = [U("こんにちは"), A("こんにちは！"), U("日本の首都はどこですか？"), I("地理"), A("日本の首都は東京です。")]


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_tokenizer()


CORPUS = [
    "以下はタスクを説明する指示で、文脈を説明した入力とペアになっています。要求を適切に補完するよう応答を書いてください。",
    "### 指示:\n日本の首都はどこですか？\n\n### 応答:\n日本の首都は東京です。",
    "### 入力:\n富士山は日本で一番高い山です。",
    "こんにちは。今日はいい天気ですね。散歩に行きましょう。",
    "日本の歴史には、奈良時代、平安時代、鎌倉時代、室町時代、江戸時代などがあります。",
]


@pytest.fixture(scope="module")
def merging_tokenizer():
    """A byte-level BPE with no whitespace pre-splitting, so tokens cross the prompt/response
    boundary (``:\\n日本`` becomes one token), as sentencepiece tokenizers' tokens can."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=450, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 2, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def responses(msgs):
    return [m["content"] for m in msgs if m["role"] == "assistant"]


def trained_runs(out):
    """The contiguous runs of trained token ids."""
    runs, cur = [], []
    for tok_id, lab in zip(out["input_ids"], out["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == tok_id
            cur.append(tok_id)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("name", ["plamo", "llmjp-alpaca"])
def test_ids_equal_whole_text_and_trained_tokens_decode_to_responses(tiny_tokenizer, name):
    t = get_template(name, tiny_tokenizer)
    for msgs in conversations(30):
        if msgs[-1]["role"] != "assistant":
            continue
        out = tokenize_conversation(tiny_tokenizer, t, msgs, max_length=None)
        if out is None:
            continue
        assert out["input_ids"] == tiny_tokenizer(t.render(msgs))["input_ids"]
        # Byte-level pre-tokenisation splits at "\n", so decoding is exact here.
        runs = [tiny_tokenizer.decode(r) for r in trained_runs(out)]
        assert runs == [r + "</s>" for r in responses(msgs)], msgs


def test_every_assistant_turn_and_its_eos_trained(tiny_tokenizer):
    out = tokenize_conversation(tiny_tokenizer, "plamo", MULTI, max_length=512)
    eos = tiny_tokenizer.eos_token_id
    assert out["input_ids"].count(eos) == 2
    assert all(lab == eos for tok_id, lab in zip(out["input_ids"], out["labels"]) if tok_id == eos)
    assert [tiny_tokenizer.decode(r) for r in trained_runs(out)] == ["こんにちは！</s>", "日本の首都は東京です。</s>"]
    # Prompt tokens (header, instructions, input, role headers) are never trained.
    prompt = get_template("plamo", tiny_tokenizer).render(MULTI[:4], add_generation_prompt=True)
    n_prompt = len(tiny_tokenizer(prompt.split("こんにちは！")[0])["input_ids"])
    assert set(out["labels"][:n_prompt]) == {IGNORE_INDEX}


def test_boundary_crossing_tokens_are_kept_and_trained(merging_tokenizer):
    tok = merging_tokenizer
    t = get_template("plamo", tok)
    crossed = 0
    for msgs in conversations(30) + [MULTI, [U("日本の首都はどこですか？"), A("日本の首都は東京です。")]]:
        if msgs[-1]["role"] != "assistant":
            continue
        out = tokenize_conversation(tok, t, msgs, max_length=None)
        if out is None:
            continue
        text = t.render(msgs)
        # Boundary-safe: exactly the ids of the whole text.
        assert out["input_ids"] == tok(text)["input_ids"]
        # Separate prompt + response tokenisation would differ whenever a token crosses the boundary.
        r = t.render_with_spans(msgs)
        first = r.spans[0][0]
        if tok(text[:first])["input_ids"] + tok(text[first:])["input_ids"] != out["input_ids"]:
            crossed += 1
        # Trained runs decode to the responses (+EOS), preceded at most by prompt text that a
        # boundary token carries along.
        runs = [tok.decode(run) for run in trained_runs(out)]
        want = [resp + "</s>" for resp in responses(msgs)]
        runs_joined, cursor = "".join(runs), 0
        for w in want:
            at = runs_joined.find(w, cursor)
            assert at >= 0, (runs, want)
            cursor = at + len(w)
        assert all(run.endswith("</s>") for run in runs)
    assert crossed > 0, "the merging tokenizer should produce boundary-crossing tokens"


def test_slow_tokenizer_path_gives_the_same_labels(tiny_tokenizer, merging_tokenizer):
    for tok in (tiny_tokenizer, merging_tokenizer):
        for msgs in conversations(15) + [MULTI]:
            if msgs[-1]["role"] != "assistant":
                continue
            fast, status = encode_conversation(tok, "plamo", msgs, None)
            enc = _Encoder(tok)
            enc.is_fast = False  # take the path for tokenizers without offsets
            slow, status2 = encode_conversation(tok, "plamo", msgs, None, _enc=enc)
            assert (status, fast) == (status2, slow), msgs


def test_bos_added_once_and_never_trained(tiny_tokenizer):
    tok = bos_tokenizer(tiny_tokenizer)
    t = get_template("plamo", tok)
    out = tokenize_conversation(tok, t, MULTI, max_length=None)
    assert out["input_ids"] == tok(t.render(MULTI))["input_ids"]
    assert out["input_ids"][0] == tok.bos_token_id and out["input_ids"].count(tok.bos_token_id) == 1
    assert out["labels"][0] == IGNORE_INDEX
    # Generation prompts get the same BOS; a text that already has it does not get a second one.
    prompt = t.render(MULTI[:4], add_generation_prompt=True)
    assert encode_prompt(tok, prompt) == tok(prompt)["input_ids"]
    assert encode_prompt(tok, "<s>" + prompt) == tok(prompt)["input_ids"]
    assert out["input_ids"][:len(encode_prompt(tok, prompt))] == encode_prompt(tok, prompt)


def test_tokenizer_template_ids_match_apply_chat_template(tiny_tokenizer):
    """The tokenizer's own template: no BOS added on top, as apply_chat_template(tokenize=True) does."""
    tok = bos_tokenizer(tiny_tokenizer)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}"
                         "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>\n{% endif %}")
    msgs = [U("日本の首都は？"), I("地理"), A("東京です。"), U("次は？"), A("大阪です。")]
    out = tokenize_conversation(tok, "tokenizer", msgs, max_length=None)
    merged = [U("日本の首都は？\n\n地理"), A("東京です。"), U("次は？"), A("大阪です。")]
    assert out["input_ids"] == tok.apply_chat_template(merged, return_dict=False)
    assert out["input_ids"].count(tok.bos_token_id) == 1
    assert [tok.decode(r) for r in trained_runs(out)] == ["東京です。</s>", "大阪です。</s>"]
    prompt = get_template("tokenizer", tok).render(msgs[:4], add_generation_prompt=True)
    assert encode_prompt(tok, prompt, "tokenizer") == tok.apply_chat_template(merged[:3], add_generation_prompt=True,
                                                                              return_dict=False)


def test_smollm2_all_templates(smollm2):
    for name in ("plamo", "llmjp-alpaca", "tokenizer"):
        t = get_template(name, smollm2)
        for msgs in [MULTI, [S("あなたは親切です。"), U("1+1は？"), A("2です。")]]:
            out = tokenize_conversation(smollm2, t, msgs, max_length=None)
            assert out["input_ids"] == smollm2(t.render(msgs))["input_ids"]
            runs = [smollm2.decode(r) for r in trained_runs(out)]
            assert runs == [r + "<|im_end|>" for r in responses(msgs)], (name, runs)


def test_truncate_keeps_the_start_and_drop_drops(tiny_tokenizer):
    full = tokenize_conversation(tiny_tokenizer, "plamo", MULTI, max_length=None)
    n = len(full["input_ids"])
    first_trained = next(i for i, lab in enumerate(full["labels"]) if lab != IGNORE_INDEX)

    out, status = encode_conversation(tiny_tokenizer, "plamo", MULTI, n - 3, "truncate")
    assert status == "truncated"
    assert out["input_ids"] == full["input_ids"][:n - 3] and out["labels"] == full["labels"][:n - 3]
    # Cut before any response token: nothing to train, dropped.
    assert encode_conversation(tiny_tokenizer, "plamo", MULTI, first_trained, "truncate") == \
        (None, "dropped_overlong")
    assert encode_conversation(tiny_tokenizer, "plamo", MULTI, first_trained + 1, "truncate")[1] == "truncated"
    assert encode_conversation(tiny_tokenizer, "plamo", MULTI, n - 1, "drop") == (None, "dropped_overlong")
    assert encode_conversation(tiny_tokenizer, "plamo", MULTI, n, "drop") == (full, "kept")


def test_dropped_conversations(tiny_tokenizer):
    assert encode_conversation(tiny_tokenizer, "plamo", [U("質問だけ")], 64) == (None, "dropped_no_response")
    # A special-token string inside a message would become a control token.
    assert encode_conversation(tiny_tokenizer, "plamo", [U("a"), A("b</s>c")], 64) == (None, "dropped_special_tokens")


def test_bad_arguments(tiny_tokenizer):
    with pytest.raises(UserError, match="overlong"):
        tokenize_conversation(tiny_tokenizer, "plamo", MULTI, 64, overlong="cut")
    with pytest.raises(UserError, match="max_length"):
        tokenize_conversation(tiny_tokenizer, "plamo", MULTI, 0)
    with pytest.raises(UserError, match="unknown prompt template"):
        tokenize_conversation(tiny_tokenizer, "nope", MULTI, 64)


def test_offsets_mask_overlap_rule():
    offsets = [(0, 2), (2, 5), (5, 6), (6, 6), (6, 9), (9, 12)]
    assert trained_mask_from_offsets(offsets, [(4, 6), (10, 11)]) == [False, True, True, False, False, True]


def test_tokenize_dataset_columns_and_stats(tiny_tokenizer):
    import datasets

    full = tokenize_conversation(tiny_tokenizer, "plamo", MULTI, max_length=None)
    n = len(full["input_ids"])
    single = [U("日本の首都は？"), A("東京です。")]
    rows = [MULTI, single, [U("質問だけ")], [U("x"), A("</s>")], MULTI]
    ds = datasets.Dataset.from_dict({"id": [str(i) for i in range(len(rows))], "messages": rows})

    out, stats = tokenize_dataset(ds, tiny_tokenizer, "plamo", max_length=n - 2, overlong="truncate")
    assert out.column_names == ["input_ids", "labels", "num_supervised"]
    assert stats == {"total": 5, "kept": 3, "truncated": 2, "dropped_overlong": 0, "dropped_no_response": 1,
                     "dropped_special_tokens": 1, "supervised_tokens": sum(out["num_supervised"]),
                     "tokens": sum(len(x) for x in out["input_ids"])}
    for row in out:
        assert row["num_supervised"] == sum(lab != IGNORE_INDEX for lab in row["labels"]) > 0
        assert len(row["input_ids"]) == len(row["labels"]) <= n - 2

    out, stats = tokenize_dataset(ds, tiny_tokenizer, "plamo", max_length=n - 2, overlong="drop")
    assert (stats["kept"], stats["dropped_overlong"], stats["truncated"]) == (1, 2, 0)
    assert out[0]["input_ids"] == tokenize_conversation(tiny_tokenizer, "plamo", single, None)["input_ids"]

    with pytest.raises(UserError, match="messages"):
        tokenize_dataset(ds.remove_columns("messages"), tiny_tokenizer, "plamo", 64)
