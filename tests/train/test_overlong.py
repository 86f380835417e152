"""Over-long examples: dropped by default, and every run, manifest and model card says how many
examples were kept whole, truncated and dropped, and why."""

from __future__ import annotations

import logging

import pytest

from conftest_train import make_conversations, write_dataset_dir, write_recipe
from ja_instruct.data.tokenize import tokenize_conversation
from ja_instruct.errors import UserError
from ja_instruct.manifest import read_manifest
from ja_instruct.recipe import load_recipe
from ja_instruct.train import run_training
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import Dist
from ja_instruct.train.export import model_card
from ja_instruct.train.prepare import prepare

LIMIT = 64


@pytest.fixture(scope="module")
def lengths(tiny_tokenizer) -> list[int]:
    """Token length of each toy conversation (plamo template)."""
    return [len(tokenize_conversation(tiny_tokenizer, "plamo", r["messages"], None)["input_ids"])
            for r in make_conversations(48)]


def _cfg(model, **kw) -> TrainConfig:
    return TrainConfig(**{"model": str(model), "max_length": LIMIT, "micro_batch_size": 2, "global_batch_size": 4,
                          **kw})


def test_drop_is_the_default_and_prepare_says_so(tiny_model_dir, toy_dataset_dir, lengths, caplog):
    assert TrainConfig(model="m").overlong == "drop"
    over = sum(n > LIMIT for n in lengths)
    assert 0 < over < len(lengths)  # the toy data has both kinds at this limit
    caplog.set_level(logging.INFO)
    p = prepare(_cfg(tiny_model_dir), str(tiny_model_dir), toy_dataset_dir, 0, Dist())
    assert len(p.examples) == len(lengths) - over
    assert all(len(e.input_ids) <= LIMIT for e in p.examples)
    line = f"tokenise: {len(lengths) - over} kept, {over} dropped (longer than {LIMIT} tokens)"
    assert p.token_summary == line and line in caplog.text

    caplog.clear()
    p = prepare(_cfg(tiny_model_dir, overlong="truncate"), str(tiny_model_dir), toy_dataset_dir, 0, Dist())
    assert len(p.examples) == len(lengths) and p.token_stats["truncated"] == over
    assert f"tokenise: {len(lengths)} kept ({over} of them truncated to {LIMIT} tokens)" in caplog.text

    caplog.clear()
    p = prepare(_cfg(tiny_model_dir, max_length=512), str(tiny_model_dir), toy_dataset_dir, 0, Dist())
    assert f"tokenise: {len(lengths)} kept" in caplog.text  # said on every run, even a clean one


def test_nothing_left_names_the_reason_and_the_way_out(tmp_path, tiny_model_dir):
    data = write_dataset_dir(tmp_path / "d", make_conversations(48))
    with pytest.raises(UserError, match=r"0 kept, 48 dropped \(longer than 16 tokens\)") as e:
        prepare(_cfg(tiny_model_dir, max_length=16), str(tiny_model_dir), data, 0, Dist())
    assert "overlong: truncate" in e.value.hint


def test_card_states_kept_truncated_and_dropped_with_reasons(tiny_model_dir):
    counts = {"total": 50, "kept_whole": 40, "truncated": 0, "dropped": {"longer than 64 tokens": 9,
                                                                        "no assistant turn": 1}}
    stats = {"sources": {"a": {"license": "MIT", "sampled": 50, "path": "a.jsonl"}},
             "heldout": {"total": 6, "fraction": 0.1, "max_examples": None}}
    card = model_card(_cfg(tiny_model_dir), {"tokenise": counts, "stats": stats})
    assert "| trained on whole | 40 |" in card and "| dropped: longer than 64 tokens | 9 |" in card
    assert "| dropped: no assistant turn | 1 |" in card and "`overlong: drop`" in card and "no EOS" in card
    assert "6 further examples were held out of training for evaluation" in card
    cut = model_card(_cfg(tiny_model_dir, overlong="truncate"),
                     {"tokenise": {**counts, "kept_whole": 30, "truncated": 10, "dropped": {}}})
    assert "| trained on truncated to 64 tokens | 10 |" in cut and "`overlong: truncate`" in cut
    assert "dropped:" not in cut and "held out" not in cut


def test_manifest_and_card_of_a_run_carry_the_counts(tmp_path, tiny_model_dir, toy_dataset_dir, lengths):
    over = sum(n > LIMIT for n in lengths)
    path = write_recipe(tmp_path / "r.yaml", tiny_model_dir, toy_dataset_dir, tmp_path / "run", max_steps=1,
                        max_length=LIMIT)
    final = run_training(load_recipe(path))
    t = read_manifest(final.parent, "train").details["tokenise"]
    assert (t["total"], t["kept_whole"], t["truncated"]) == (len(lengths), len(lengths) - over, 0)
    assert t["dropped"] == {f"longer than {LIMIT} tokens": over} and t["overlong"] == "drop"
    assert t["summary"].startswith(f"tokenise: {len(lengths) - over} kept, {over} dropped")
    card = (final / "README.md").read_text(encoding="utf-8")
    assert f"| dropped: longer than {LIMIT} tokens | {over} |" in card
