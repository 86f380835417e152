"""Packing isolation, enforced: explicit boundaries for every attention kind, the start-up check
on the real model, a remote-code model that ignores them refused, and unchanged losses."""

from __future__ import annotations

import re

import json
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest_train import make_conversations, read_metrics, write_recipe
from ja_instruct.errors import UserError
from ja_instruct.train.isolation import AttentionLayout, attention_layout, check_isolation
from ja_instruct.train.packing import Example, build_rows

CPU = torch.device("cpu")
NO_AUTOCAST = torch.autocast("cpu", enabled=False)


def _examples(tokenizer, n=12, seed=7) -> list[Example]:
    from ja_instruct.data.tokenize import tokenize_conversation

    out = []
    for conv in make_conversations(n, seed=seed):
        t = tokenize_conversation(tokenizer, "plamo", conv["messages"], max_length=None)
        out.append(Example(t["input_ids"], t["labels"]))
    return out


def _load(model_dir, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw).eval()


def _max_diff(model, layout, ex, rows, pad_id=0) -> float:
    """max |packed - alone| over every example of a micro-batch of ``rows`` (fp32)."""
    with torch.no_grad():
        packed = model(**layout.model_inputs(layout.collate(ex, rows, pad_id), CPU)).logits
        diffs = [(packed[r, s:s + n] - model(input_ids=torch.tensor([ex[i].input_ids])).logits[0]).abs().max()
                 for i, r, s, n in layout.spans(ex, rows)]
    return max(float(d) for d in diffs)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_4d_mask_gives_packed_logits_equal_to_separate_logits(tiny_model_dir, tiny_tokenizer, impl):
    model = _load(tiny_model_dir, attn_implementation=impl)
    layout = attention_layout(model, True, torch.float32, "tiny")
    assert layout.kind == ("mask" if impl == "sdpa" else "float_mask")
    ex = _examples(tiny_tokenizer)
    rows = build_rows(ex, max_length=120, packing=True)
    mb = sorted(rows, key=len)[-2:]  # micro-batch of 2 rows with several examples each, one padded
    assert len(mb[0]) >= 2 and len(mb[1]) >= 2
    batch = layout.collate(ex, mb, tiny_tokenizer.pad_token_id)
    mask = layout.model_inputs(batch, CPU)["attention_mask"]
    assert mask.shape == (2, 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    assert mask.dtype == (torch.bool if impl == "sdpa" else torch.float32)
    assert _max_diff(model, layout, ex, mb, tiny_tokenizer.pad_token_id) <= 1e-5
    # The mask does the work: with every token in one segment, examples see each other.
    with torch.no_grad():
        leaky = dict(batch, segment_ids=torch.zeros_like(batch["segment_ids"]))
        a = model(**layout.model_inputs(batch, CPU)).logits
        b = model(**layout.model_inputs(leaky, CPU)).logits
    assert (a - b).abs().max() > 1e-3


def test_sliding_window_layers_get_windowed_masks(tmp_path, tiny_tokenizer):
    # Examples longer than the window: the packed mask must apply the window as transformers does
    # alone, on an all-sliding model (Mistral) and on a mixed one (Qwen2: a dict of masks).
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, sliding_window=6)
    ex = _examples(tiny_tokenizer, n=4)
    rows = [[0, 1, 2], [3]]
    torch.manual_seed(0)
    models = [MistralForCausalLM(MistralConfig(num_hidden_layers=2, **shape)),
              Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=2, use_sliding_window=True, max_window_layers=1,
                                           layer_types=["full_attention", "sliding_attention"], **shape))]
    for model in models:
        model.config._attn_implementation = "sdpa"
        model.eval()
        layout = attention_layout(model, True, torch.float32, "windowed")
        assert layout.window == 6 and layout.mixed == isinstance(model, Qwen2ForCausalLM)
        assert _max_diff(model, layout, ex, rows) <= 1e-5
        # without the window in the mask, the packed logits would differ
        assert _max_diff(model, AttentionLayout("mask", "sdpa", torch.float32), ex, rows) > 1e-4


def _reference_varlen(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """flash_attn_varlen_func's semantics on CPU: the batch is flattened and each [cu[i], cu[i+1])
    attends causally within itself; without cu_seq_lens, plain causal attention per row."""
    b, h, length, dim = query.shape
    k, v = (t.repeat_interleave(h // t.shape[1], 1) for t in (key, value))
    if cu_seq_lens_q is None:
        return F.scaled_dot_product_attention(query, k, v, is_causal=True, scale=scaling).transpose(1, 2), None
    assert torch.equal(cu_seq_lens_q, cu_seq_lens_k) and cu_seq_lens_q.dtype == torch.int32
    q, k, v = (t.transpose(1, 2).reshape(b * length, h, dim).transpose(0, 1) for t in (query, k, v))
    out = torch.empty_like(q)
    bounds = cu_seq_lens_q.tolist()
    assert max_length_q == max(e - s for s, e in zip(bounds, bounds[1:]))
    for s, e in zip(bounds, bounds[1:]):
        out[:, s:e] = F.scaled_dot_product_attention(q[:, s:e], k[:, s:e], v[:, s:e], is_causal=True, scale=scaling)
    return out.transpose(0, 1).reshape(b, length, h, dim), None


def test_varlen_layout_flattens_the_micro_batch_with_sequence_boundaries(tiny_model_dir, tiny_tokenizer):
    # flash-attention needs a GPU: a CPU kernel with flash_attn_varlen_func's contract stands in,
    # registered the way transformers registers kernels, and receives the boundaries through the model.
    from transformers import AttentionInterface

    AttentionInterface.register("reference_varlen", _reference_varlen)
    model = _load(tiny_model_dir, attn_implementation="reference_varlen")
    layout = AttentionLayout("varlen", "reference_varlen", torch.float32)
    ex = _examples(tiny_tokenizer)
    mb = sorted(build_rows(ex, max_length=120, packing=True), key=len)[-2:]
    batch = layout.collate(ex, mb, 0)
    lengths = [len(ex[i].input_ids) for row in mb for i in row]
    assert batch["input_ids"].shape == (1, sum(lengths))  # one row, no padding
    assert batch["cu_seq_lens_q"].tolist() == [sum(lengths[:k]) for k in range(len(lengths) + 1)]
    assert _max_diff(model, layout, ex, mb) <= 1e-5
    # A kernel given no boundaries attends across the flattened examples: the check catches it.
    blind = AttentionLayout("plain", "reference_varlen", torch.float32)
    with pytest.raises(UserError, match="not safe"):
        check_isolation(model, blind, ex, name="tiny", pad_id=0, autocast=NO_AUTOCAST, device=CPU)


def test_layout_follows_the_attention_implementation():
    def fake(impl, **config):
        return SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl, **config))

    f32 = torch.float32
    assert attention_layout(fake("flash_attention_2"), True, f32, "m").kind == "varlen"
    assert attention_layout(fake("kernels-community/flash-attn2"), True, f32, "m").kind == "varlen"
    assert attention_layout(fake("flex_attention"), True, f32, "m").kind == "flex"
    assert attention_layout(fake("flash_attention_2"), False, f32, "m").kind == "plain"
    assert attention_layout(fake("sdpa", sliding_window=64, layer_types=["full_attention"]), True, f32,
                            "m").window is None
    with pytest.raises(UserError, match="linear_attention.*packing: false"):
        attention_layout(fake("sdpa", layer_types=["linear_attention", "full_attention"]), True, f32, "m")


def test_check_passes_on_the_tiny_llama_and_logs_one_line(tiny_model_dir, tiny_tokenizer, caplog):
    caplog.set_level(logging.INFO, logger="ja_instruct.train.isolation")
    model = _load(tiny_model_dir)
    model.train()
    layout = attention_layout(model, True, torch.float32, "tiny-llama")
    diff = check_isolation(model, layout, _examples(tiny_tokenizer), name="tiny-llama", pad_id=0,
                           autocast=NO_AUTOCAST, device=CPU)
    assert diff <= 1e-5 and model.training  # training mode restored
    (line,) = [r.getMessage() for r in caplog.records if "packing isolation" in r.getMessage()]
    assert line.startswith("packing isolation checked on tiny-llama: max |Δlogit|")
    # too few examples for a probe: deterministic random ids are used instead
    assert check_isolation(model, layout, [], name="tiny-llama", pad_id=0, autocast=NO_AUTOCAST, device=CPU) <= 1e-5


# A remote-code model of the kind the seed's PLaMo-13B is: it takes attention_mask and
# position_ids, but ignores both and builds its own causal mask and positions.
_CONFIG_PY = '''
from transformers import PretrainedConfig


class LeakyConfig(PretrainedConfig):
    model_type = "leaky_test"

    def __init__(self, vocab_size=600, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=512,
                 **kwargs):
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.num_heads, self.max_position_embeddings = num_heads, max_position_embeddings
        super().__init__(**kwargs)
'''

_MODELING_PY = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_leaky import LeakyConfig


class LeakyBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads = c.num_heads
        self.norm1, self.norm2 = nn.LayerNorm(c.hidden_size), nn.LayerNorm(c.hidden_size)
        self.qkv, self.out = nn.Linear(c.hidden_size, 3 * c.hidden_size), nn.Linear(c.hidden_size, c.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(c.hidden_size, 2 * c.hidden_size), nn.GELU(),
                                 nn.Linear(2 * c.hidden_size, c.hidden_size))

    def forward(self, x):
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        own_mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=own_mask)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, h))
        return x + self.mlp(self.norm2(x))


class LeakyForCausalLM(PreTrainedModel):
    config_class = LeakyConfig
    _no_split_modules = ["LeakyBlock"]

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(LeakyBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None, **kwargs):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # position_ids ignored
        x = self.embed(input_ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)  # attention_mask ignored
        return CausalLMOutput(logits=self.lm_head(self.norm(x)))
'''


def _remote_code_model(path, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    path.mkdir()
    (path / "configuration_leaky.py").write_text(_CONFIG_PY)
    (path / "modeling_leaky.py").write_text(_MODELING_PY)
    (path / "config.json").write_text(json.dumps({
        "model_type": "leaky_test", "vocab_size": len(tokenizer), "architectures": ["LeakyForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_leaky.LeakyConfig",
                     "AutoModelForCausalLM": "modeling_leaky.LeakyForCausalLM"}}))
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)  # local folder: no network
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, trust_remote_code=True).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_remote_code_model_that_ignores_boundaries_is_refused_and_trains_without_packing(
        tmp_path, tiny_tokenizer, toy_dataset_dir):
    from ja_instruct.recipe import load_recipe
    from ja_instruct.train import run_training

    model_dir = _remote_code_model(tmp_path / "leaky", tiny_tokenizer)
    common = dict(trust_remote_code=True, max_steps=2, micro_batch_size=2, global_batch_size=2)
    packed = load_recipe(write_recipe(tmp_path / "on.yaml", model_dir, toy_dataset_dir, tmp_path / "on", **common))
    with pytest.raises(UserError) as err:
        run_training(packed)
    msg = str(err.value)
    assert str(model_dir) in msg and "max |Δlogit|" in msg and "`packing: false`" in msg
    assert not (tmp_path / "on" / "train" / "final").exists()

    plain = load_recipe(write_recipe(tmp_path / "off.yaml", model_dir, toy_dataset_dir, tmp_path / "off",
                                     packing=False, **common))
    final = run_training(plain)
    assert (final / "config.json").is_file()
    assert sorted(read_metrics(final.parent / "metrics.jsonl")) == [1, 2]


def test_packed_run_losses_equal_the_position_id_inference_they_replace(
        tmp_path, tiny_model_dir, toy_dataset_dir, monkeypatch):
    # The same run with the old model inputs (restarting position ids, no mask: transformers
    # inferred the blocks) gives the same losses and gradient norms as the explicit mask.
    from ja_instruct.recipe import load_recipe
    from ja_instruct.train import run_training

    def run(name):
        recipe = load_recipe(write_recipe(tmp_path / f"{name}.yaml", tiny_model_dir, toy_dataset_dir,
                                          tmp_path / name, max_steps=3, micro_batch_size=2))
        return read_metrics(run_training(recipe).parent / "metrics.jsonl")

    explicit = run("explicit")
    monkeypatch.setattr(AttentionLayout, "model_inputs", lambda self, batch, device: {
        "input_ids": batch["input_ids"].to(device), "position_ids": batch["position_ids"].to(device),
        "use_cache": False})
    inferred = run("inferred")
    for step in (1, 2, 3):
        assert explicit[step]["supervised_tokens"] == inferred[step]["supervised_tokens"]
        assert explicit[step]["loss"] == pytest.approx(inferred[step]["loss"], abs=1e-6)
        assert explicit[step]["grad_norm"] == pytest.approx(inferred[step]["grad_norm"], rel=1e-5)
    assert explicit[3]["loss"] != explicit[1]["loss"]


_FSDP_SCRIPT = '''
import sys
import torch
from torch.distributed.tensor import DTensor
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import setup_distributed, teardown_distributed
from ja_instruct.train.isolation import attention_layout, check_isolation
from ja_instruct.train.model import build_model
from ja_instruct.train.packing import Example

d = setup_distributed()
model = build_model(TrainConfig(model=sys.argv[1]), sys.argv[1], d, torch.float32)
layout = attention_layout(model, True, torch.float32, "tiny")
ex = [Example(list(range(5 + 3 * i, 20 + 2 * i)), [0] * (15 - i)) for i in range(3)]
diff = check_isolation(model, layout, ex, name="tiny", pad_id=0, autocast=torch.autocast("cpu", enabled=False),
                       device=d.device, distributed=True)
sharded = all(isinstance(p, DTensor) for p in model.parameters())
print(f"RANK {d.rank} diff={diff:.3g} sharded={sharded}", flush=True)
teardown_distributed(d)
'''


@pytest.mark.slow
def test_check_under_fsdp_leaves_the_model_sharded(tmp_path, tiny_model_dir):
    # The root is not resharded after forward; without a reshard after the check the optimiser
    # would be built over its gathered (plain) parameters.
    import os
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(_FSDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(tiny_model_dir)], env=env, capture_output=True, text=True, timeout=120)
    lines = sorted(re.findall(r"RANK \d diff=\S+ sharded=(?:True|False)", r.stdout))  # two ranks may share a line
    assert r.returncode == 0 and len(lines) == 2, r.stderr[-2000:]
    for line in lines:
        assert line.endswith("sharded=True") and float(line.split("diff=")[1].split()[0]) <= 1e-5
