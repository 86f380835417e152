"""DPO against TRL's `DPOTrainer` (the issue's "correctness against TRL"): on one fixed batch of
the tiny Llama in fp32, TRL's loss, rewards, margins and reward accuracy (its own collator and
`_compute_loss`) equal ours, through `pair_losses` on our summed log-probabilities and through
the whole `dpo_step` on a batch split into 2 micro-batches (gradients included). Plus: packed
pairs give the log-probabilities of lone rows, and LoRA's reference is the base model.

The reference is the model as built; the policy is a copy whose weights carry seeded noise
(with policy == reference every reward is 0 and every comparison would pass trivially)."""

from __future__ import annotations

import copy

import pytest
import torch

from ja_instruct.train.config import DpoConfig, TrainConfig
from ja_instruct.train.distributed import Dist
from ja_instruct.train.dpo import all_logps, dpo_step, expand_rows, pair_losses, reference_context
from ja_instruct.train.isolation import AttentionLayout, attention_layout
from ja_instruct.train.packing import IGNORE_INDEX, Example

# TRL's DPOConfig passes transformers' deprecated `gradient_checkpointing` name: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is deprecated and will be removed in v6:FutureWarning")

_PROMPTS = ["日本の首都はどこですか？", "富士山について説明してください。", "機械学習とは何ですか？",
            "今日の天気はどうですか？", "江戸時代について教えてください。", "政治と経済の関係は？"]
_ANSWERS = ["日本の首都は東京です。", "富士山は日本で一番高い山です。", "機械学習とは、データから規則を学ぶ方法です。",
            "こんにちは。今日はいい天気ですね。", "日本の歴史には江戸時代などがあります。", "政治、経済、社会について答えます。"]
TOL = 1e-5
D = Dist()  # one process, CPU


def _pairs(tok) -> list[dict]:
    """Six pairs of token ids with prompts and answers of varied lengths (so rows are padded)."""
    eos = [tok.eos_token_id]
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = []
    for i, q in enumerate(_PROMPTS):
        chosen = _ANSWERS[i] * (1 + i % 2)
        rejected = _ANSWERS[(i + 2) % 6] + (_ANSWERS[(i + 3) % 6] if i % 3 == 0 else "")
        out.append({"prompt_ids": enc(q), "chosen_ids": enc(chosen) + eos, "rejected_ids": enc(rejected) + eos})
    return out


def _examples(pairs: list[dict]) -> list[Example]:
    """Ours: example 2p = prompt + chosen, 2p + 1 = prompt + rejected, labelled on the answer only."""
    out = []
    for p in pairs:
        for key in ("chosen_ids", "rejected_ids"):
            out.append(Example(p["prompt_ids"] + p[key], [IGNORE_INDEX] * len(p["prompt_ids"]) + p[key]))
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """(reference, policy): the tiny Llama as built, and a copy with seeded noise on every weight."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    ref.eval()
    policy.train()
    return ref, policy


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    pairs = _pairs(tiny_tokenizer)
    return pairs, _examples(pairs)


def _trl_figures(models, tok, pairs, beta: float, loss_type, loss_weights, tmp_path) -> dict:
    """TRL's loss, gradients and metrics on the batch, through its own collator and `_compute_loss`."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    ref, policy = (copy.deepcopy(m) for m in models)  # TRL patches the models' forward: its own copies
    policy.train()
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=loss_type, loss_weights=loss_weights,
                     report_to=[], bf16=False, use_cpu=True, gradient_checkpointing=False, max_length=None,
                     per_device_train_batch_size=len(pairs), save_strategy="no", logging_strategy="no")
    # The trainer wants a text dataset (it tokenises it); the batch itself is our token ids.
    text = Dataset.from_dict({"prompt": ["質問"] * 2, "chosen": ["はい"] * 2, "rejected": ["いいえ"] * 2})
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=text, processing_class=tok)
    collated = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(pairs)
    loss = trainer.compute_loss(trainer.model, collated)
    loss.backward()
    m = trainer._metrics["train"]
    out = {k: m[k][-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                                  "logps/chosen", "logps/rejected")}
    out["loss"] = loss.item()
    out["grads"] = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return out


class _Recorder:
    """An optimiser that only records the gradients `dpo_step` produced (the weights stay put)."""

    def __init__(self, model):
        self.model, self.grads = model, {}

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


CASES = [  # (our DpoConfig, TRL loss_type, TRL loss_weights)
    (DpoConfig(beta=0.1), ["sigmoid"], None),
    (DpoConfig(beta=0.5), ["sigmoid"], None),
    (DpoConfig(beta=0.1, loss="ipo"), ["ipo"], None),
    (DpoConfig(beta=0.1, sft_weight=0.3), ["sigmoid", "sft"], [1.0, 0.3]),
]


@pytest.mark.parametrize("cfg,loss_type,weights", CASES, ids=["sigmoid-0.1", "sigmoid-0.5", "ipo", "sigmoid+sft"])
def test_loss_rewards_and_accuracy_equal_trl(cfg, loss_type, weights, models, batch, tiny_tokenizer, tmp_path):
    pairs, examples = batch
    ref_model, policy = models
    trl_out = _trl_figures(models, tiny_tokenizer, pairs, cfg.beta, loss_type, weights, tmp_path)
    # The test can only fail if the batch is not degenerate: rewards away from 0, accuracy not 0 or 1.
    assert abs(trl_out["rewards/chosen"]) > 1e-3 and abs(trl_out["rewards/rejected"]) > 1e-3
    assert 0 < trl_out["rewards/accuracies"] < 1

    pad = tiny_tokenizer.pad_token_id
    n = len(pairs)
    c, r = torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)
    plain = AttentionLayout("plain", "sdpa", torch.float32)
    one_per_row = expand_rows([[p] for p in range(n)], packing=False)
    ref, _ = all_logps(ref_model, examples, one_per_row, plain, D, pad, micro_batch_size=4)
    pol, ntok = all_logps(policy, examples, one_per_row, plain, D, pad, micro_batch_size=4)

    # (a) the loss formula on our summed log-probabilities
    terms = pair_losses(pol[c], pol[r], ref[c], ref[r], ntok[c], ntok[r], cfg)
    loss = terms.loss.mean() + cfg.sft_weight * (-pol[c].sum() / ntok[c].sum())
    margins = terms.chosen_rewards - terms.rejected_rewards
    ours = {"loss": loss.item(), "rewards/chosen": terms.chosen_rewards.mean().item(),
            "rewards/rejected": terms.rejected_rewards.mean().item(), "rewards/margins": margins.mean().item(),
            "rewards/accuracies": (margins > 0).double().mean().item(),
            "logps/chosen": pol[c].mean().item(), "logps/rejected": pol[r].mean().item()}
    for key, value in ours.items():
        assert value == pytest.approx(trl_out[key], abs=TOL), key

    # (b) the whole step, packed (2 pairs in a row, 2 micro-batches of unequal size) and unpacked
    for packing, units in ((True, [[0, 1], [2], [3, 4], [5]]), (False, [[0], [1], [2], [3], [4], [5]])):
        layout = attention_layout(policy, packing, torch.float32, "tiny")
        # Unequal micro-batches (as the loop makes them: rows of pairs, then expanded), so a loss
        # normalised per micro-batch instead of over the whole batch would differ.
        cut = 1 if packing else 2
        micro = [(layout.collate(examples, rows, pad), rows)
                 for rows in (expand_rows(units[:cut], packing), expand_rows(units[cut:], packing))]
        rec = _Recorder(policy)
        step = dpo_step(policy, rec, micro, examples, ref.float(), layout, D, cfg)
        for key in ours:
            assert step[key] == pytest.approx(trl_out[key], abs=TOL), (packing, key)
        assert step["pairs"] == n
        # gradients: the loss is normalised over the global batch, not per micro-batch
        assert rec.grads.keys() == trl_out["grads"].keys()
        for name, g in rec.grads.items():
            torch.testing.assert_close(g, trl_out["grads"][name], rtol=1e-4, atol=1e-6, msg=f"{packing} {name}")
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in trl_out["grads"].values()])).item()
        assert step["grad_norm"] == pytest.approx(norm, rel=1e-4)


def test_packed_pairs_give_the_log_probs_of_lone_rows(models, batch, tiny_tokenizer):
    """Chosen and rejected of a pair (and several pairs) in one row, kept apart by the block-causal
    mask, score exactly as each answer alone in its own row; without the mask they do not."""
    pairs, examples = batch
    _, policy = models
    pad = tiny_tokenizer.pad_token_id
    n = len(pairs)
    plain = AttentionLayout("plain", "sdpa", torch.float32)
    lone, ntok = all_logps(policy, examples, expand_rows([[p] for p in range(n)], False), plain, D, pad, 4)
    layout = attention_layout(policy, True, torch.float32, "tiny")
    assert layout.kind in ("mask", "float_mask")
    units = [[0], [1, 2], [3, 4, 5]]
    rows = expand_rows(units, True)
    assert rows[0] == [0, 1]  # the chosen and the rejected of pair 0 share a row
    packed, ntok_packed = all_logps(policy, examples, rows, layout, D, pad, 2)
    assert torch.equal(ntok_packed, ntok)
    torch.testing.assert_close(packed, lone, rtol=0, atol=1e-4)
    # The same rows without the mask (causal attention only): the rejected answer sees the chosen one.
    leaky, _ = all_logps(policy, examples, rows, plain, D, pad, 2)
    assert (leaky[1::2] - lone[1::2]).abs().max() > 1e-2


def test_lora_reference_is_the_base_model(tiny_model_dir, batch, tiny_tokenizer):
    """With LoRA the reference is the adapter-free model (peft's ``disable_adapter``): equal to the
    base model's log-probabilities although the adapters (non-zero here) change the policy's."""
    from ja_instruct.train.model import build_model

    pairs, examples = batch
    cfg = TrainConfig(model=str(tiny_model_dir), dataset_dir="unused", lora={"enabled": True, "r": 4, "alpha": 8,
                                                                           "dropout": 0.0})
    base = build_model(cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": False})}),
                       str(tiny_model_dir), D, torch.float32)
    peft_model = build_model(cfg, str(tiny_model_dir), D, torch.float32)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        changed = 0
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0 (a no-op adapter); make the adapters count
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
                changed += 1
    assert changed > 0
    pad = tiny_tokenizer.pad_token_id
    layout = attention_layout(peft_model, True, torch.float32, "tiny")
    rows = expand_rows([[p] for p in range(len(pairs))], True)
    want, _ = all_logps(base, examples, rows, layout, D, pad, 2)
    adapted, _ = all_logps(peft_model, examples, rows, layout, D, pad, 2)
    assert (adapted - want).abs().max() > 1e-2  # the adapters do change the model
    with reference_context(peft_model):
        got, _ = all_logps(peft_model, examples, rows, layout, D, pad, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    after, _ = all_logps(peft_model, examples, rows, layout, D, pad, 2)
    torch.testing.assert_close(after, adapted, rtol=0, atol=0)  # the adapters are back on afterwards


def test_label_smoothing_is_conservative_dpo_of_trl_sigmoid(models, batch, tiny_tokenizer, tmp_path):
    """TRL 1.16's sigmoid loss has no label smoothing (its ``label_smoothing`` is robust DPO's and
    EXO's); conservative DPO is (1 - e) x the sigmoid loss + e x the sigmoid loss of the swapped
    pairs, so TRL on the pairs and on the swapped pairs gives the expected value."""
    pairs, examples = batch
    ref_model, policy = models
    e, beta = 0.2, 0.1
    swapped = [{**p, "chosen_ids": p["rejected_ids"], "rejected_ids": p["chosen_ids"]} for p in pairs]
    straight = _trl_figures(models, tiny_tokenizer, pairs, beta, ["sigmoid"], None, tmp_path)["loss"]
    flipped = _trl_figures(models, tiny_tokenizer, swapped, beta, ["sigmoid"], None, tmp_path)["loss"]
    pad, n = tiny_tokenizer.pad_token_id, len(pairs)
    c, r = torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)
    plain = AttentionLayout("plain", "sdpa", torch.float32)
    rows = expand_rows([[p] for p in range(n)], packing=False)
    ref, _ = all_logps(ref_model, examples, rows, plain, D, pad, 4)
    pol, ntok = all_logps(policy, examples, rows, plain, D, pad, 4)
    terms = pair_losses(pol[c], pol[r], ref[c], ref[r], ntok[c], ntok[r], DpoConfig(beta=beta, label_smoothing=e))
    assert abs(straight - flipped) > 1e-3
    assert terms.loss.mean().item() == pytest.approx((1 - e) * straight + e * flipped, abs=TOL)
