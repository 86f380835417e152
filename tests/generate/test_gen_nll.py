"""Reference NLL: equal to a direct forward pass, masked to answers + EOS, token-weighted; the stage file."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from ja_instruct.data.templates import get_template
from ja_instruct.errors import UserError
from ja_instruct.generate import backends
from ja_instruct.generate.backends import FakeBackend, HFBackend
from ja_instruct.generate.config import ReferenceNLLConfig
from ja_instruct.generate.nll import conversation_nll, load_references, summarize_nll, unique_ids
from ja_instruct.generate.run import run_generation
from ja_instruct.io import read_json, read_jsonl_store
from ja_instruct.recipe import load_recipe

CONVS = [
    [{"role": "user", "content": "日本の首都はどこですか？"}, {"role": "assistant", "content": "日本の首都は東京です。"}],
    [{"role": "user", "content": "機械学習とは？"},
     {"role": "assistant", "content": "データから規則を学ぶ方法です。ニューラルネットワークはその一つです。"},
     {"role": "user", "content": "例は？"}, {"role": "assistant", "content": "こんにちは。"}],
    [{"role": "system", "content": "丁寧に答えてください。"}, {"role": "user", "content": "歴史"},
     {"role": "input", "content": "江戸時代"}, {"role": "assistant", "content": "江戸時代は長く続きました。" * 3}],
    [{"role": "user", "content": "天気は？"}, {"role": "assistant", "content": "いい天気ですね。"}],
    [{"role": "user", "content": "地理"}, {"role": "assistant", "content": "富士山は日本で一番高い山です。" * 5}],
]
# The tokenizer's own template (ChatML-like with the tiny tokenizer's special tokens).
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<s>' + m['role'] + '\n' + m['content'] + '</s>\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def direct_nll(model, tokenizer, text: str, answers: list[str], eos: str) -> tuple[float, int]:
    """Sum of -log p over the tokens of each answer + the EOS after it, by a plain forward pass."""
    import torch

    spans, cursor = [], 0
    for a in answers:  # each answer is followed by the EOS string in the rendered text
        at = text.index(a + eos, cursor)
        spans.append((at, at + len(a) + len(eos)))
        cursor = at + len(a)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    scored = [t for t, (s, e) in enumerate(enc["offset_mapping"]) if any(s < b and e > a for a, b in spans)]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return -sum(logp[t - 1, ids[t]].item() for t in scored), len(scored)


def answers_of(conv):
    return [m["content"] for m in conv if m["role"] == "assistant"]


def test_plamo_nll_equals_direct_forward_and_scores_answers_plus_eos(tiny_lm, tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok("a")["input_ids"] == tok("a", add_special_tokens=False)["input_ids"]  # no BOS to account for
    template = get_template("plamo", tok)
    results = conversation_nll(tiny_lm, tok, "plamo", CONVS[:3], batch_size=1)
    for conv, (nll, n) in zip(CONVS[:3], results):
        want, want_n = direct_nll(tiny_lm, tok, template.render(conv), answers_of(conv), tok.eos_token)
        assert n == want_n and nll == pytest.approx(want, rel=1e-5)
    # Prompt tokens excluded, the EOS included: a one-turn answer scores its own tokens + 1.
    assert results[0][1] == len(tok(answers_of(CONVS[0])[0], add_special_tokens=False)["input_ids"]) + 1


def test_tokenizer_template_nll_equals_direct_forward(tiny_lm, chat_tokenizer):
    tok = chat_tokenizer
    convs = [CONVS[0], CONVS[1], CONVS[3]]
    results = conversation_nll(tiny_lm, tok, "tokenizer", convs, batch_size=2)
    for conv, (nll, n) in zip(convs, results):
        text = tok.apply_chat_template(conv, tokenize=False)
        want, want_n = direct_nll(tiny_lm, tok, text, answers_of(conv), "</s>")
        assert n == want_n and nll == pytest.approx(want, rel=1e-5)


def test_padded_batches_equal_one_at_a_time(tiny_lm, tiny_tokenizer):
    alone = conversation_nll(tiny_lm, tiny_tokenizer, "llmjp-alpaca", CONVS, batch_size=1)
    batched = conversation_nll(tiny_lm, tiny_tokenizer, "llmjp-alpaca", CONVS, batch_size=3)
    assert len({n for _, n in alone}) > 2  # lengths differ, so batches really are padded
    for (a, na), (b, nb) in zip(alone, batched):
        assert na == nb and a == pytest.approx(b, rel=1e-4)


def test_summary_is_token_weighted_and_overlong_is_skipped(tiny_lm, tiny_tokenizer):
    tok = tiny_tokenizer
    template = get_template("plamo", tok)
    short, long_ = CONVS[3], CONVS[4]
    overlong = [{"role": "user", "content": "長い"}, {"role": "assistant", "content": "日本の歴史。" * 400}]
    results = conversation_nll(tiny_lm, tok, template, [short, long_, overlong], batch_size=2)
    assert results[2] is None  # more tokens than the model's 512 positions
    summary = summarize_nll(["s", "l", "o"], results)
    (s1, n1), (s2, n2) = (direct_nll(tiny_lm, tok, template.render(c), answers_of(c), tok.eos_token)
                          for c in (short, long_))
    assert summary["tokens"] == n1 + n2 and summary["conversations"] == 2 and summary["skipped"] == 1
    assert summary["mean_nll"] == pytest.approx((s1 + s2) / (n1 + n2), rel=1e-5)
    assert abs(summary["mean_nll"] - (s1 / n1 + s2 / n2) / 2) > 1e-4  # not the mean of means
    assert summary["perplexity"] == pytest.approx(2.718281828 ** summary["mean_nll"], rel=1e-6)
    assert [p["id"] for p in summary["per_conversation"]] == ["s", "l"]


# --------------------------------------------------------------------------- references

def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_question_file_references_and_bad_records(tmp_path):
    qs = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "category": "math", "turns": ["1+1は？", "2+2は？"], "reference": ["2です。", "4です。"]},
        {"question_id": 2, "category": "math", "turns": ["3+3は？", "4+4は？"], "reference": ["6です。"]},
        {"question_id": 3, "category": "writing", "turns": ["詩を書いて。"]},
        {"question_id": 4, "category": "math", "turns": ["5+5は？"]}])
    refs_file = write_jsonl(tmp_path / "ref.jsonl", [{"question_id": 4, "choices": [{"turns": ["10です。"]}]}])
    refs = load_references(ReferenceNLLConfig(references=str(qs), reference_answers=str(refs_file)), recipe=None)
    assert refs.ids == ["1", "4"] and refs.skipped == 2
    assert [m["role"] for m in refs.conversations[0]] == ["user", "assistant", "user", "assistant"]
    assert refs.conversations[1][1] == {"role": "assistant", "content": "10です。"}

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "messages": CONVS[0]},
                                               {"id": "b", "messages": [{"role": "user", "content": 3}]}])
    with pytest.raises(UserError) as e:
        load_references(ReferenceNLLConfig(references=str(bad)), recipe=None)
    assert (e.value.file, e.value.line, e.value.field) == (str(bad), 2, "generate.reference_nll.references")
    no_answer = write_jsonl(tmp_path / "na.jsonl", [{"messages": [{"role": "user", "content": "質問"}]}])
    with pytest.raises(UserError, match="no assistant message"):
        load_references(ReferenceNLLConfig(references=str(no_answer)), recipe=None)


# --------------------------------------------------------------------------- the stage

@pytest.fixture
def stage(tmp_path, tiny_model_dir, monkeypatch):
    """A recipe with a tiny hf model, a fake and an 'openai' model (served by the fake), and a
    counter of hf model loads."""
    write_jsonl(tmp_path / "q.jsonl", [{"question_id": i, "category": "地理", "turns": [f"日本の地理{i}"]}
                                       for i in range(2)])
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"id": f"c{i}", "messages": c} for i, c in enumerate(CONVS[:3])])
    loads = []
    real_init = HFBackend.__init__

    def counting(self, *a, **kw):
        loads.append(1)
        real_init(self, *a, **kw)

    monkeypatch.setattr(HFBackend, "__init__", counting)
    monkeypatch.setitem(backends.BACKENDS, "openai", FakeBackend)  # answers without a network

    def recipe(nll=f"{{references: {refs}, batch_size: 2}}", system=None):
        models = (f"[{{id: tiny, backend: hf, path: {tiny_model_dir}, template: plamo, device: cpu, batch_size: 2"
                  + (f", system_prompt: {system}" if system else "") + "},"
                  " {id: fk, backend: fake}, {id: api, backend: openai, base_url: 'http://127.0.0.1:9/v1'}]")
        path = tmp_path / "recipe.yaml"
        path.write_text(f"name: t\nout_dir: {tmp_path / 'run'}\ngenerate:\n  questions: {tmp_path / 'q.jsonl'}\n"
                        f"  max_new_tokens: 3\n  reference_nll: {nll}\n  models: {models}\n", encoding="utf-8")
        return load_recipe(path)
    return recipe, refs, loads


def test_stage_writes_file_then_is_up_to_date_then_recomputes_what_changed(stage, tiny_lm, tiny_tokenizer, caplog):
    recipe, refs, loads = stage
    caplog.set_level(logging.INFO)
    out = run_generation(recipe())
    doc = read_json(out / "reference_nll.json")
    assert set(doc) == {"version", "references", "definition", "models"}
    assert doc["references"]["conversations"] == 3 and doc["references"]["source"] == str(refs)
    # a user's reference file is named as such, never called held-out
    assert doc["references"]["heldout"] is False
    assert f"reference answers of {refs}" in doc["definition"] and "held-out" not in doc["definition"]
    tiny = doc["models"]["tiny"]
    assert set(tiny) == {"fingerprint", "mean_nll", "perplexity", "tokens", "conversations", "skipped",
                         "per_conversation"}
    direct = [direct_nll(tiny_lm, tiny_tokenizer, get_template("plamo", tiny_tokenizer).render(c), answers_of(c),
                         "</s>") for c in CONVS[:3]]
    assert tiny["tokens"] == sum(n for _, n in direct)
    assert tiny["mean_nll"] == pytest.approx(sum(s for s, _ in direct) / tiny["tokens"], rel=1e-5)
    assert [p["id"] for p in tiny["per_conversation"]] == ["c0", "c1", "c2"]
    api = doc["models"]["api"]
    assert set(api) == {"fingerprint", "unavailable"} and "openai" in api["unavailable"]
    assert "unavailable" in doc["models"]["fk"]
    assert len(loads) == 1  # scored with the model generation loaded, not loaded twice
    manifest = read_json(out / "manifest.json")
    assert manifest["inputs"]["references"] == doc["references"]["fingerprint"]
    assert manifest["outputs"][":reference_nll"] == "reference_nll.json"

    caplog.clear()
    run_generation(recipe())
    assert "generate: up to date" in caplog.text and len(loads) == 1

    # A file whose references block is stale (written before it had "heldout") is rewritten, scoring nothing.
    stale = read_json(out / "reference_nll.json")
    del stale["references"]["heldout"]
    (out / "reference_nll.json").write_text(json.dumps(stale), encoding="utf-8")
    caplog.clear()
    run_generation(recipe())
    assert "generate: up to date" not in caplog.text and len(loads) == 1
    assert read_json(out / "reference_nll.json") == doc
    run_generation(recipe())
    assert "generate: up to date" in caplog.text

    # New references: only the NLL is redone (the model loaded for it alone), with the reason.
    answers = read_jsonl_store(out / "tiny.jsonl")
    write_jsonl(refs, [{"id": f"c{i}", "messages": c} for i, c in enumerate(CONVS[1:4])])
    caplog.clear()
    run_generation(recipe())
    assert "tiny: reference NLL recomputed: references changed" in caplog.text
    assert len(loads) == 2 and read_jsonl_store(out / "tiny.jsonl") == answers
    again = read_json(out / "reference_nll.json")
    assert again["models"]["tiny"]["fingerprint"] != tiny["fingerprint"]
    assert again["references"]["fingerprint"] == read_json(out / "manifest.json")["inputs"]["references"]

    # A new system prompt changes answers and NLL: one load serves both.
    caplog.clear()
    run_generation(recipe(system="丁寧に答えてください。"))
    assert "tiny: reference NLL recomputed: settings changed (system_prompt" in caplog.text and len(loads) == 3

    # Turned off: no file left behind, nothing loaded.
    run_generation(recipe(nll="null", system="丁寧に答えてください。"))
    assert not (out / "reference_nll.json").exists() and len(loads) == 3
    assert "references" not in read_json(out / "manifest.json")["inputs"]


def test_heldout_references(stage, tmp_path):
    import datasets

    recipe, _, _ = stage
    with pytest.raises(UserError) as e:
        run_generation(recipe(nll="{references: heldout}"))
    assert e.value.field == "generate.reference_nll.references" and "data.heldout.fraction" in e.value.hint
    data = tmp_path / "run" / "data"
    rows = [{"id": f"h{i}", "source": "s", "messages": c} for i, c in enumerate(CONVS[:2])]
    for name in ("dataset", "heldout"):
        datasets.Dataset.from_list(rows).save_to_disk(str(data / name))
    refs = load_references(ReferenceNLLConfig(references="heldout"), recipe(nll="{references: heldout}"))
    assert refs.ids == ["h0", "h1"] and refs.conversations[0] == CONVS[0]


def _build(out, tmp_path, fraction: float, n: int = 12, tag: str = "甲"):
    """A data build at ``out`` from ``n`` alpaca rows (held-out split when ``fraction`` > 0)."""
    from ja_instruct.data import build_dataset
    from ja_instruct.data.config import DataConfig

    rows = write_jsonl(tmp_path / f"{out.name}.jsonl", [{"index": i, "instruction": f"{tag}の質問{i}",
                                                         "output": f"{tag}の答え{i}です。"} for i in range(n)])
    cfg = DataConfig(sources=[{"name": "s", "path": str(rows), "format": "alpaca", "license": "Apache-2.0"}],
                     heldout={"fraction": fraction})
    build_dataset(cfg, out, seed=0, echo=lambda _: None)
    return out


def test_a_data_build_folder_means_its_heldout_split(tmp_path):
    from ja_instruct.data import load_dataset_dir, load_heldout

    build = _build(tmp_path / "built", tmp_path, fraction=0.5)
    refs = load_references(ReferenceNLLConfig(references=str(build)), recipe=None)
    held, train = load_heldout(build), load_dataset_dir(build)
    assert refs.ids == list(held["id"]) and not set(refs.ids) & set(train["id"])  # never the training split
    assert refs.heldout is True and refs.source == f"held-out split of {build}"
    # its heldout/ folder is the same split, labelled the same way
    again = load_references(ReferenceNLLConfig(references=str(build / "heldout")), recipe=None)
    assert (again.ids, again.heldout, again.source) == (refs.ids, True, refs.source)

    bare = _build(tmp_path / "bare", tmp_path, fraction=0.0)
    with pytest.raises(UserError, match="no held-out split") as e:
        load_references(ReferenceNLLConfig(references=str(bare)), recipe=None)
    assert e.value.field == "generate.reference_nll.references" and "data.heldout.fraction" in e.value.hint


def test_heldout_reads_the_dataset_training_uses(tmp_path):
    """`references: heldout` is the split of the folder training reads: train.dataset_dir when set."""
    _build(tmp_path / "run" / "data", tmp_path, fraction=0.5, tag="甲")
    other = _build(tmp_path / "other", tmp_path, fraction=0.5, tag="乙")

    def recipe(train: str):
        path = tmp_path / "r.yaml"
        path.write_text(f"name: t\nout_dir: {tmp_path / 'run'}\n{train}generate:\n"
                        "  reference_nll: {references: heldout}\n  models: [{id: fk, backend: fake}]\n",
                        encoding="utf-8")
        return load_recipe(path)

    def answers(r) -> set[str]:
        refs = load_references(ReferenceNLLConfig(references="heldout"), r)
        assert refs.heldout is True
        return {c[-1]["content"][0] for c in refs.conversations}

    assert answers(recipe("")) == {"甲"}  # no train section: the data stage's folder
    assert answers(recipe("train: {model: m}\n")) == {"甲"}
    assert answers(recipe(f"train: {{model: m, dataset_dir: {other}}}\n")) == {"乙"}
    r = recipe(f"train: {{model: m, dataset_dir: {other / 'dataset'}}}\n")  # its dataset/ subfolder
    assert answers(r) == {"乙"}
    source = load_references(ReferenceNLLConfig(references="heldout"), r).source
    assert source == f"held-out split of {other}"
    bare = _build(tmp_path / "bare", tmp_path, fraction=0.0)
    with pytest.raises(UserError, match=str(bare)) as e:
        load_references(ReferenceNLLConfig(references="heldout"), recipe(f"train: {{model: m, dataset_dir: {bare}}}\n"))
    assert "data.heldout.fraction" in e.value.hint


def test_duplicate_ids_get_unused_suffixes(tmp_path):
    assert unique_ids(["a", "a", "a#2"]) == ["a", "a#3", "a#2"]
    assert unique_ids(["a", "a", "a", "b"]) == ["a", "a#2", "a#3", "b"]
    assert unique_ids([None, "1", None]) == ["1#2", "1", "3"]  # a position never takes a given id
    refs = write_jsonl(tmp_path / "dup.jsonl", [{"id": i, "messages": CONVS[0]} for i in ("a", "a", "a#2", "a")])
    ids = load_references(ReferenceNLLConfig(references=str(refs)), recipe=None).ids
    assert len(set(ids)) == 4 and ids[0] == "a" and ids[2] == "a#2"


def test_ja_mt_bench_reference_answers_as_a_reference_set(shared_data, tiny_lm, tiny_tokenizer):
    """A real recipe's reference set: JA MT-Bench questions with GPT-4's reference answers. Every
    question with a reference for each turn becomes a 2-turn conversation; the rest are counted."""
    bench = shared_data / "ja_mt_bench"
    questions = [json.loads(x) for x in (bench / "question.jsonl").read_text(encoding="utf-8").splitlines() if x]
    refs = {json.loads(x)["question_id"] for x in
            (bench / "reference_answer" / "gpt-4.jsonl").read_text(encoding="utf-8").splitlines() if x}
    cfg = ReferenceNLLConfig(references=str(bench / "question.jsonl"),
                             reference_answers=str(bench / "reference_answer" / "gpt-4.jsonl"))
    got = load_references(cfg, recipe=None)
    assert got.heldout is False
    assert 0 < len(got.conversations) <= len(refs) and got.skipped == len(questions) - len(got.conversations)
    assert all([m["role"] for m in c] == ["user", "assistant", "user", "assistant"] for c in got.conversations)
    # The tiny model's positions hold only the shortest conversations; longer ones are skipped.
    shortest = sorted(got.conversations, key=lambda c: sum(len(m["content"]) for m in c))[:2]
    short_limit = [c for c in shortest if len(tiny_tokenizer(get_template("plamo", tiny_tokenizer).render(c))
                                              ["input_ids"]) < tiny_lm.config.max_position_embeddings]
    assert short_limit
    result = conversation_nll(tiny_lm, tiny_tokenizer, "plamo", short_limit + got.conversations[:1], batch_size=2)
    assert all(r is not None and r[1] > 0 and r[0] > 0 for r in result[:len(short_limit)])
