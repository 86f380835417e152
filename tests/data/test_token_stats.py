"""`describe_token_stats` / `example_counts`: what tokenisation kept whole, truncated and dropped,
said without ambiguity, from a real `tokenize_dataset` run."""

from __future__ import annotations

import pytest

from ja_instruct.data.tokenize import (describe_token_stats, example_counts, tokenize_conversation,
                                       tokenize_dataset)

U = lambda t: {"role": "user", "content": t}  # noqa: E731
A = lambda t: {"role": "assistant", "content": t}  # noqa: E731

LONG = [U("富士山について詳しく説明してください。"), A("富士山は日本で一番高い山です。" * 6)]
SHORT = [U("日本の首都は？"), A("東京です。")]


@pytest.fixture
def dataset_and_limit(tiny_tokenizer):
    import datasets

    short = len(tokenize_conversation(tiny_tokenizer, "plamo", SHORT, None)["input_ids"])
    long = len(tokenize_conversation(tiny_tokenizer, "plamo", LONG, None)["input_ids"])
    limit = (short + long) // 2  # SHORT fits, LONG does not
    assert short < limit < long
    rows = [LONG, SHORT, LONG, [U("質問だけ")], SHORT, LONG]
    ds = datasets.Dataset.from_dict({"id": [str(i) for i in range(len(rows))], "messages": rows})
    return ds, limit


def test_drop_is_the_default_and_is_said(tiny_tokenizer, dataset_and_limit):
    ds, limit = dataset_and_limit
    out, stats = tokenize_dataset(ds, tiny_tokenizer, "plamo", limit)  # default policy
    assert len(out) == 2 and stats["dropped_overlong"] == 3 and stats["truncated"] == 0
    assert describe_token_stats(stats, limit) == \
        f"tokenise: 2 kept, 3 dropped (longer than {limit} tokens), 1 dropped (no assistant turn)"
    assert example_counts(stats, limit) == {"total": 6, "kept_whole": 2, "truncated": 0,
                                            "dropped": {f"longer than {limit} tokens": 3, "no assistant turn": 1}}


def test_truncate_names_the_truncated_ones(tiny_tokenizer, dataset_and_limit):
    ds, limit = dataset_and_limit
    out, stats = tokenize_dataset(ds, tiny_tokenizer, "plamo", limit, overlong="truncate")
    assert len(out) == 5 and stats["kept"] == 5 and stats["truncated"] == 3
    line = describe_token_stats(stats, limit, "truncate")
    assert line == f"tokenise: 5 kept (3 of them truncated to {limit} tokens), 1 dropped (no assistant turn)"
    counts = example_counts(stats, limit, "truncate")
    assert (counts["kept_whole"], counts["truncated"]) == (2, 3)


def test_every_drop_reason_and_a_clean_run():
    stats = {"total": 10, "kept": 4, "truncated": 1, "dropped_overlong": 3, "dropped_no_response": 2,
             "dropped_special_tokens": 1}
    assert describe_token_stats(stats, 64, "truncate") == (
        "tokenise: 4 kept (1 of them truncated to 64 tokens), 3 dropped (prompt alone fills 64 tokens), "
        "2 dropped (no assistant turn), 1 dropped (special-token string in a message)")
    assert describe_token_stats({"total": 7, "kept": 7, "truncated": 0}, 64) == "tokenise: 7 kept"
