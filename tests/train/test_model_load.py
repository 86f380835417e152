"""Loading that scales: rank 0 reads the checkpoint, the other ranks build a skeleton on the meta
device and receive their shards. Checked against the old path (every rank from_pretrained)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest_train import read_metrics, write_recipe
from ja_instruct.errors import UserError
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.model import (_rows, build_skeleton, check_same_module, load_pretrained)
from tiny import build_tiny_llama

# A remote-code model written the way the seed's PLaMo-13B is (transformers 4 era): rotary
# tables kept as plain tensor attributes, plus a non-persistent buffer, tied embeddings.
_CONFIG_PY = '''
from transformers import PretrainedConfig


class RopeConfig(PretrainedConfig):
    model_type = "rope_test"

    def __init__(self, vocab_size=600, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64,
                 tie_word_embeddings=True, **kwargs):
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.num_heads, self.max_position_embeddings = num_heads, max_position_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
'''

_MODELING_PY = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_rope import RopeConfig


class Rotary(nn.Module):
    def __init__(self, dim, n):
        super().__init__()
        self.inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))  # plain attributes
        emb = torch.cat([torch.outer(torch.arange(n, dtype=torch.float32), self.inv_freq)] * 2, -1)
        self.cos_cached, self.sin_cached = emb.cos(), emb.sin()
        self.register_buffer("scale", torch.full((dim,), 0.5), persistent=False)

    def forward(self, x):
        n = x.shape[-2]
        x1, x2 = x.chunk(2, -1)
        return (x * self.cos_cached[:n] + torch.cat([-x2, x1], -1) * self.sin_cached[:n]) * (2 * self.scale)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads = c.num_heads
        self.norm = nn.LayerNorm(c.hidden_size)
        self.qkv, self.out = nn.Linear(c.hidden_size, 3 * c.hidden_size), nn.Linear(c.hidden_size, c.hidden_size)
        self.rot = Rotary(c.hidden_size // c.num_heads, c.max_position_embeddings)

    def forward(self, x):
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(self.rot(q), self.rot(k), v, is_causal=True)
        return x + self.out(a.transpose(1, 2).reshape(b, n, h))


class RopeForCausalLM(PreTrainedModel):
    config_class = RopeConfig
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"lm_head.weight": "embed.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None, **kwargs):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return CausalLMOutput(logits=self.lm_head(x))
'''


def _rope_model(path: Path):
    """Save the remote-code model (random init); returns the module as built, real buffers and all."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path.mkdir()
    (path / "configuration_rope.py").write_text(_CONFIG_PY)
    (path / "modeling_rope.py").write_text(_MODELING_PY)
    (path / "config.json").write_text(json.dumps({
        "model_type": "rope_test", "architectures": ["RopeForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_rope.RopeConfig",
                     "AutoModelForCausalLM": "modeling_rope.RopeForCausalLM"}}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, trust_remote_code=True),
                                             trust_remote_code=True)
    model.save_pretrained(path)
    return model.eval()


def test_skeleton_has_no_weights_but_the_buffers_the_model_computes(tiny_model_dir):
    cfg = TrainConfig(model=str(tiny_model_dir))
    rng = torch.get_rng_state()
    skeleton = build_skeleton(cfg, str(tiny_model_dir))
    assert torch.equal(torch.get_rng_state(), rng)  # the seeded stream (LoRA's init) is left alone
    assert all(p.is_meta for p in skeleton.parameters())
    loaded = load_pretrained(cfg, str(tiny_model_dir))
    buffers = dict(loaded.named_buffers())
    assert {n for n, _ in skeleton.named_buffers()} == set(buffers) and "model.rotary_emb.inv_freq" in buffers
    for name, b in skeleton.named_buffers():
        assert not b.is_meta and torch.equal(b, buffers[name]), name
    check_same_module(skeleton, loaded, "tiny")  # same tensors, same ties: no error


def test_a_skeleton_that_differs_from_the_checkpoint_is_refused(tmp_path, tiny_tokenizer):
    tied = build_tiny_llama(tmp_path / "tied", tiny_tokenizer, tie_word_embeddings=True)
    cfg = TrainConfig(model=str(tied))
    loaded = load_pretrained(cfg, str(tied))
    other = build_tiny_llama(tmp_path / "other", tiny_tokenizer, intermediate_size=96, tie_word_embeddings=True)
    with pytest.raises(UserError, match="differs from the one from_pretrained loads.*intermediate_size"):
        check_same_module(build_skeleton(cfg, str(other)), loaded, "tiny")
    skeleton = build_skeleton(cfg, str(tied))
    skeleton.model.norm.weight = torch.nn.Parameter(torch.empty(63, device="meta"))  # same config, not same tensors
    with pytest.raises(UserError, match="model.norm.weight"):
        check_same_module(skeleton, loaded, "tiny")
    skeleton = build_skeleton(cfg, str(tied))
    skeleton.lm_head.weight = torch.nn.Parameter(torch.empty_like(skeleton.lm_head.weight))  # untied
    with pytest.raises(UserError, match="lm_head.weight"):
        check_same_module(skeleton, loaded, "tiny")


def test_remote_code_buffers_and_tensor_attributes_get_their_values(tmp_path):
    # transformers 5 builds the model on the meta device: from_pretrained alone leaves this model's
    # rotary tables on meta and its non-persistent buffer uninitialised.
    from transformers import AutoModelForCausalLM

    path = tmp_path / "rope"
    reference = _rope_model(path)
    raw = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
    assert raw.blocks[0].rot.cos_cached.is_meta  # what the repair is for (else: fixed upstream)
    model = load_pretrained(TrainConfig(model=str(path), trust_remote_code=True), str(path)).eval()
    ids = torch.randint(0, 600, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert torch.equal(model.blocks[1].rot.scale, torch.full((16,), 0.5))
    assert model.lm_head.weight is model.embed.weight


def test_shard_rows_cut_like_torch_chunk():
    for n in (1, 2, 5, 7, 600, 601):
        for world in (1, 2, 3, 4, 8):
            chunks = torch.arange(n).chunk(world)
            for rank in range(world):
                want = chunks[rank].tolist() if rank < len(chunks) else []
                assert list(range(n))[_rows(n, world, rank)] == want, (n, world, rank)


# ----------------------------------------------------------------------------- torchrun, 2 ranks

_COMPARE = '''
import sys
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM
from ja_instruct.train.config import TrainConfig
from ja_instruct.train.distributed import setup_distributed, teardown_distributed
from ja_instruct.train import model as M

d = setup_distributed()
path, extra = sys.argv[1], sys.argv[2:]
cfg = TrainConfig(model=path, trust_remote_code="remote" in extra,
                  lora={"enabled": True, "r": 4, "target_modules": ["q_proj", "v_proj"]} if "lora" in extra else {})


def full(model):
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone()
            for k, v in model.state_dict().items()}


torch.manual_seed(5)
new = M.build_model(cfg, path, d, torch.float32)
torch.manual_seed(5)  # the old path: every rank from_pretrained, then shard
old = M._finish(AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                     dtype=torch.float32), cfg)
if cfg.trust_remote_code:  # from_pretrained alone leaves this model's tables without values
    M.adopt_unsaved_state(old, M.build_skeleton(cfg, path))
M.shard_model(old, cfg, d, torch.float32)
a, b = full(new), full(old)
assert a.keys() == b.keys()
differ = [k for k in a if not torch.equal(a[k], b[k])]
unsaved = {n: M._get(*t).detach().cpu() for n, t in M._unsaved(new).items()}
gathered = [None] * d.world_size
dist.all_gather_object(gathered, unsaved)  # rank 0's rotary tables vs every rank's
rank0 = gathered[0]
off = [n for n, t in unsaved.items() if not torch.equal(t, rank0[n])]
old_unsaved = {n: M._get(*t).detach().cpu() for n, t in M._unsaved(old).items()}
off += [n for n, t in unsaved.items() if not torch.equal(t, old_unsaved[n])]
ties = {k: v for k, v in M._aliases(new).items() if k != v}
base = new.get_base_model() if hasattr(new, "get_base_model") else new
tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
meta = [n for n, p in new.named_parameters() if p.to_local().is_meta]
lora = sum(k.endswith("lora_A.default.weight") and bool(a[k].abs().sum() > 0) for k in a)
print(f"RANK {d.rank} differ={differ} unsaved_off={off} n_unsaved={len(unsaved)} ties={sorted(ties)} "
      f"tied={tied} meta={meta} lora_nonzero={lora}", flush=True)
teardown_distributed(d)
'''

# The CLI, with the old loading path when LOAD_PATH=old (patched into the training loop).
_CLI = '''
import os
import sys
import torch

if os.environ.get("LOAD_PATH") == "old":
    import ja_instruct.train.loop as loop
    from transformers import AutoModelForCausalLM
    from ja_instruct.train.model import _attn_kwargs, _finish, config_overrides, shard_model

    def old_build_model(cfg, model_path, d, dtype):
        model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code,
                                                     dtype=torch.float32, **config_overrides(cfg),
                                                     **_attn_kwargs(cfg))
        model = _finish(model, cfg)
        shard_model(model, cfg, d, dtype)
        model.train()
        return model

    loop.build_model = old_build_model
from ja_instruct.cli import main

sys.exit(main(sys.argv[1:]))
'''


def _torchrun(script: Path, *args, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("LOAD_PATH", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


def _rank_lines(r: subprocess.CompletedProcess) -> list[str]:
    # torchrun interleaves the ranks' output: one report per rank, each ending with its lora count
    lines = sorted(re.findall(r"RANK \d .*?lora_nonzero=\d+", r.stdout))
    assert r.returncode == 0 and len(lines) == 2, r.stderr[-3000:]
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tied", "lora", "remote"])
def test_rank0_loading_gives_the_old_paths_model(tmp_path, tiny_tokenizer, kind):
    # Every tensor (weights, LoRA's seeded init, rotary tables) equals the old path's, on each
    # rank; tied weights are still one tensor; nothing is left on the meta device. Odd vocab:
    # the shards are uneven.
    if kind == "remote":
        model, args = tmp_path / "rope", ["remote"]
        _rope_model(model)
    else:
        model = build_tiny_llama(tmp_path / "m", tiny_tokenizer, vocab_size=603, tie_word_embeddings=kind == "tied")
        args = [kind]
    script = tmp_path / "compare.py"
    script.write_text(_COMPARE)
    for line in _rank_lines(_torchrun(script, model, *args)):
        assert "differ=[] unsaved_off=[]" in line and "meta=[]" in line, line
        n_unsaved = int(line.split("n_unsaved=")[1].split()[0])
        assert n_unsaved == (8 if kind == "remote" else 2), line  # inv_freq (+ original) / 2 blocks x 4
        if kind == "lora":
            assert "ties=[]" in line and "lora_nonzero=4" in line, line  # 2 layers x q, v
        else:
            assert "tied=True" in line and "lm_head.weight" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_training_losses_and_export_equal_the_old_loading_paths(tmp_path, tiny_tokenizer, toy_dataset_dir, kind):
    # The whole stage under torchrun: same losses step by step and the same exported weights
    # (LoRA: only the adapters are gathered for the export, merged into the base on rank 0).
    from safetensors.torch import load_file

    model = build_tiny_llama(tmp_path / "model", tiny_tokenizer, attention_dropout=0.1, tie_word_embeddings=True)
    script = tmp_path / "cli.py"
    script.write_text(_CLI)
    train = dict(max_steps=4)
    if kind == "lora":
        train.update(lr=1e-2, lora={"enabled": True, "r": 4, "target_modules": ["q_proj", "v_proj"],
                                    "export": "merged"})
    runs = {}
    for path in ("old", "new"):
        recipe = write_recipe(tmp_path / f"{path}.yaml", model, toy_dataset_dir, tmp_path / path, **train)
        r = _torchrun(script, "train", recipe, env_extra={"LOAD_PATH": path})
        assert r.returncode == 0, r.stderr[-3000:]
        runs[path] = tmp_path / path / "train"
    old, new = (read_metrics(runs[p] / "metrics.jsonl") for p in ("old", "new"))
    assert sorted(old) == sorted(new) == [1, 2, 3, 4]
    for step in old:
        assert new[step]["loss"] == pytest.approx(old[step]["loss"], abs=1e-6), step
        assert new[step]["grad_norm"] == pytest.approx(old[step]["grad_norm"], rel=1e-6), step
    assert new[4]["loss"] != new[1]["loss"]  # it trained
    a, b = (load_file(runs[p] / "final" / "model.safetensors") for p in ("old", "new"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    base = load_file(model / "model.safetensors")
    assert not torch.equal(b["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
