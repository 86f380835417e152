"""DPO in the SFT loop: pairs as packed examples, sequence log-probabilities, the loss, one step.

A pair p is two examples of `Prepared.examples`: 2p (prompt + chosen) and 2p + 1 (prompt +
rejected), each labelled on its answer only (the last response of the conversation and the
EOS after it, as SFT trains it). The sampler orders *pair units* exactly as it orders SFT
examples (`ja_instruct.train.packing`); `expand_rows` turns a row of pairs into the rows the
model sees: with packing both examples of every pair of the row share one row (separate
segments: the block-causal mask keeps them apart, checked on the model at start-up like
SFT), without packing each example is its own padded row. Either way both halves of a pair
are in the same micro-batch of the same rank, so the pair's loss is computed where its
log-probabilities are.

    log pi(y|x) = sum of the answer tokens' log-probabilities            (`example_logps`)
    reward      = beta * (log pi - log pi_ref)                          (TRL's rewards/*)
    sigmoid     = -(1-e) log sigmoid(beta m) - e log sigmoid(-beta m),  m = (pi_c - ref_c) - (pi_r - ref_r)
    ipo         = (m' - 1/(2 beta))^2, m' the same with log-ratios averaged per answer token

The reference log-probabilities are computed once, before step 1, with the model the run
starts from (`reference_logps`; with LoRA under peft's ``disable_adapter``, so no second copy
of the model exists), and cached beside the pairs (`ja_instruct.train.dpo_data`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ja_instruct.train.config import DpoConfig
from ja_instruct.train.distributed import Dist
from ja_instruct.train.isolation import AttentionLayout, reshard
from ja_instruct.train.model import is_fsdp
from ja_instruct.train.packing import IGNORE_INDEX, Example

# The metrics of a step, as TRL's DPOTrainer names them (summed over pairs, then averaged).
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected")


def expand_rows(unit_rows: list[list[int]], packing: bool) -> list[list[int]]:
    """Rows of example indices from rows of pair indices: pair p is examples 2p and 2p + 1."""
    if packing:
        return [[i for p in row for i in (2 * p, 2 * p + 1)] for row in unit_rows]
    return [[i] for row in unit_rows for p in row for i in (2 * p, 2 * p + 1)]


def shared_prefix_len(chosen: Example, rejected: Example) -> int:
    """Tokens a pair's two examples can share: their common prefix, up to (not including) the
    token that predicts either's first answer token, which each answer's branch keeps."""
    def first_label(ex: Example) -> int:
        return next((t for t, lab in enumerate(ex.labels) if lab != IGNORE_INDEX), len(ex.labels))

    lcp = 0
    for a, b in zip(chosen.input_ids, rejected.input_ids):
        if a != b:
            break
        lcp += 1
    return max(0, min(lcp, first_label(chosen) - 1, first_label(rejected) - 1))


def collate_shared(examples: list[Example], rows: list[list[int]], pad_id: int, shared: list[int]) -> dict:
    """A micro-batch whose rows hold whole pairs with each pair's prompt ONCE: ``prefix | chosen
    tail | rejected tail``, ``shared[p]`` prefix tokens (`shared_prefix_len`). ``branch_ids`` (0
    prefix, 1 chosen, 2 rejected) make the rejected tail blind to the chosen one
    (`AttentionLayout.model_inputs`); both tails' positions continue from the prefix, so each
    answer's tokens see exactly what they see in their own example (checked on the model at
    start-up: `check_shared_prompt`). ``spans`` says where each example's tail lies, for
    `example_logps`. The prompt's compute is spent once instead of twice."""
    ids, labels, pos, seg, branch, spans = [], [], [], [], [], []
    for r, row in enumerate(rows):
        if len(row) % 2 or any(row[k] % 2 or row[k + 1] != row[k] + 1 for k in range(0, len(row), 2)):
            raise ValueError(f"collate_shared needs rows of whole pairs (2p, 2p + 1), got {row}")
        r_ids, r_lab, r_pos, r_seg, r_br = [], [], [], [], []
        for g, k in enumerate(range(0, len(row), 2)):
            c, j = examples[row[k]], examples[row[k + 1]]
            n = shared[row[k] // 2]
            r_ids += c.input_ids[:n]
            r_lab += [IGNORE_INDEX] * n
            r_pos += list(range(n))
            r_seg += [g] * n
            r_br += [0] * n
            for b, (i, ex) in enumerate(((row[k], c), (row[k + 1], j)), 1):
                tail = len(ex.input_ids) - n
                spans.append((i, r, len(r_ids), tail))
                r_ids += ex.input_ids[n:]
                r_lab += ex.shifted_labels[n:]
                r_pos += list(range(n, n + tail))
                r_seg += [g] * tail
                r_br += [b] * tail
        ids.append(r_ids)
        labels.append(r_lab)
        pos.append(r_pos)
        seg.append(r_seg)
        branch.append(r_br)
    real, width = sum(len(x) for x in ids), max(len(x) for x in ids)
    for row, r_ids, r_lab, r_pos, r_seg, r_br in zip(rows, ids, labels, pos, seg, branch):
        n = width - len(r_ids)
        r_ids += [pad_id] * n
        r_lab += [IGNORE_INDEX] * n
        r_pos += list(range(n))
        r_seg += [len(row)] * n  # padding: a group of its own
        r_br += [0] * n
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return {"input_ids": t(ids), "labels": t(labels), "position_ids": t(pos), "segment_ids": t(seg),
            "branch_ids": t(branch), "spans": spans, "tokens": real}


def pair_batch(examples: list[Example], rows: list[list[int]], layout: AttentionLayout, pad_id: int,
               shared: list[int] | None) -> dict:
    """The collated micro-batch of ``rows`` (example rows of whole pairs), prompts shared when
    ``shared`` is given, with its ``spans``."""
    if shared is not None:
        return collate_shared(examples, rows, pad_id, shared)
    batch = layout.collate(examples, rows, pad_id)
    batch["spans"] = layout.spans(examples, rows)
    batch["tokens"] = sum(len(examples[i].input_ids) for row in rows for i in row)
    return batch


def logits_to_keep_supported(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` as a tensor of positions: transformers'
    own models do; remote code (``transformers_modules``) may take only an int, or ignore it, so
    it gets whole logits. Then the output head runs on answer positions only."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__module__.startswith("transformers."):
        return False
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def answer_logits(model: torch.nn.Module, batch: dict, layout: AttentionLayout, device: torch.device,
                  keep_ok: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward, with the output head (and its B x T x vocab logits) only on the positions
    that carry a label in some row, when the model allows: (logits, kept positions or None)."""
    inputs = layout.model_inputs(batch, device)
    if not keep_ok:
        return model(**inputs).logits, None
    keep = (batch["labels"] != IGNORE_INDEX).any(0).nonzero().flatten()
    if keep.numel() == 0:
        keep = torch.zeros(1, dtype=torch.long)
    return model(**inputs, logits_to_keep=keep.to(device)).logits, keep


def example_logps(logits: torch.Tensor, batch: dict, spans: list[tuple[int, int, int, int]],
                  n_examples: int, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each example's labelled tokens, and how many there are.

    ``spans`` is `AttentionLayout.spans` of the micro-batch: ``(example, row, start, length)``;
    ``keep``: the positions ``logits`` were computed at (`answer_logits`), None for all.
    Returns float32 tensors of ``n_examples`` entries (indexed by example; examples not in the
    micro-batch are 0); the sums keep the autograd graph."""
    labels = batch["labels"].to(logits.device)
    owner = torch.full(labels.shape, n_examples, dtype=torch.long, device=logits.device)  # n: no example
    for ex, row, start, length in spans:
        owner[row, start:start + length] = ex
    if keep is not None:
        keep = keep.to(logits.device)
        labels, owner = labels[:, keep], owner[:, keep]
    # -cross_entropy is log p(label); ignored positions give 0. Same kernel as the SFT loss.
    tok = -F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none").view(labels.shape)
    owner = owner.masked_fill(labels == IGNORE_INDEX, n_examples)
    sums = torch.zeros(n_examples + 1, dtype=torch.float32, device=logits.device)
    sums = sums.index_add(0, owner.flatten(), tok.flatten())
    counts = torch.zeros(n_examples + 1, dtype=torch.float32, device=logits.device)
    counts = counts.index_add(0, owner.flatten(), torch.ones_like(tok.flatten()))
    return sums[:n_examples], counts[:n_examples]


@dataclass
class PairTerms:
    """Per-pair quantities of a batch of pairs (1-D tensors over the pairs)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def pair_losses(pol_c: torch.Tensor, pol_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
                n_c: torch.Tensor, n_r: torch.Tensor, cfg: DpoConfig) -> PairTerms:
    """The DPO (or IPO) loss of each pair from its summed answer log-probabilities under the
    policy (``pol_*``) and the reference (``ref_*``); ``n_*``: answer tokens of each answer."""
    chosen_lr, rejected_lr = pol_c - ref_c, pol_r - ref_r
    if cfg.loss == "ipo":
        # IPO on per-token averages (TRL's `ipo`, confirmed with IPO's authors): the squared
        # loss would otherwise grow with the answers' length.
        m = chosen_lr / n_c.clamp(min=1) - rejected_lr / n_r.clamp(min=1)
        loss = (m - 1 / (2 * cfg.beta)) ** 2
    else:
        logits = cfg.beta * (chosen_lr - rejected_lr)
        e = cfg.label_smoothing
        loss = -(1 - e) * F.logsigmoid(logits) - e * F.logsigmoid(-logits)
    return PairTerms(loss, cfg.beta * chosen_lr.detach(), cfg.beta * rejected_lr.detach())


def dpo_step(model: torch.nn.Module, optimizer, micro: list[tuple[dict, list[list[int]]]], examples: list[Example],
             ref: torch.Tensor, layout: AttentionLayout, d: Dist, cfg: DpoConfig, *, autocast=None,
             grad_clip: float | None = None) -> dict:
    """One optimiser step of DPO over this rank's micro-batches ``micro`` = [(collated batch,
    its rows of example indices)]; every rank calls it with as many micro-batches (the SFT
    loop's rule). ``ref``: the cached reference log-probability of every example.

    The loss is the mean over the pairs of the WHOLE global batch (every micro-batch of every
    rank), plus ``sft_weight`` x the mean NLL per chosen-answer token of the global batch, so
    it does not depend on how the batch is split. Returns the step's metrics (TRL's names),
    averaged over the global batch's pairs, with ``loss``, ``grad_norm``, ``pairs`` and
    ``tokens``."""
    fsdp = is_fsdp(model)
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    keep_ok = logits_to_keep_supported(model)
    n = len(examples)
    pairs_of = [sorted({i // 2 for row in rows for i in row}) for _, rows in micro]
    for (_, rows), pairs in zip(micro, pairs_of):  # a pair's loss needs both halves in its micro-batch
        if sum(len(row) for row in rows) != 2 * len(pairs):
            raise RuntimeError("dpo_step: a micro-batch holds half of a pair (use expand_rows on whole pairs)")
    chosen_tokens = sum(sum(t != IGNORE_INDEX for t in examples[2 * p].shifted_labels) for ps in pairs_of for p in ps)
    # tokens the model ran (a shared prompt once), padding not counted
    tokens = sum(batch["tokens"] if "tokens" in batch else sum(len(examples[i].input_ids) for row in rows for i in row)
                 for batch, rows in micro)
    counts = torch.tensor([sum(len(ps) for ps in pairs_of), chosen_tokens, tokens], dtype=torch.float64)
    d.all_reduce_sum(counts)
    n_pairs, n_chosen_tok = max(counts[0].item(), 1.0), max(counts[1].item(), 1.0)
    sums = torch.zeros(len(PAIR_METRICS) + 1, dtype=torch.float64)  # + the loss
    for k, ((batch, rows), pairs) in enumerate(zip(micro, pairs_of)):
        if fsdp:  # reduce-scatter gradients once per step, on the last micro-batch
            model.set_requires_gradient_sync(k == len(micro) - 1)
        with autocast:
            logits, kept = answer_logits(model, batch, layout, d.device, keep_ok)
        logp, ntok = example_logps(logits, batch, batch.get("spans") or layout.spans(examples, rows), n, kept)
        del logits
        if not pairs:  # an empty micro-batch (fewer rows than ranks): keep the collective, add nothing
            (logp.sum() * 0.0).backward()
            continue
        c = torch.tensor([2 * p for p in pairs], device=logp.device)
        r = c + 1
        refd = ref.to(logp.device, torch.float32)
        terms = pair_losses(logp[c], logp[r], refd[c], refd[r], ntok[c], ntok[r], cfg)
        loss = terms.loss.sum() / n_pairs
        if cfg.sft_weight:
            loss = loss + cfg.sft_weight * (-logp[c].sum()) / n_chosen_tok
        # FSDP averages gradients over ranks; x world size turns that average into the sum.
        (loss * d.world_size).backward()
        cr, rr = terms.chosen_rewards, terms.rejected_rewards
        sums += torch.stack([cr.sum(), rr.sum(), (cr - rr).sum(), (cr > rr).float().sum(),
                             logp[c].detach().sum(), logp[r].detach().sum(), loss.detach()]).double().cpu()
    d.all_reduce_sum(sums)
    grad_norm = _clip(model, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out = {key: sums[j].item() / n_pairs for j, key in enumerate(PAIR_METRICS)}
    out.update(loss=sums[-1].item(), grad_norm=grad_norm, pairs=int(counts[0].item()), tokens=int(counts[2].item()))
    return out


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    from ja_instruct.train.loop import _clip as clip

    return clip(model, max_norm)


def shard_rows(rows: list[list[int]], d: Dist, micro_batch_size: int) -> list[list[list[int]]]:
    """This rank's micro-batches of ``rows`` for a pass over all of them (reference, evaluation):
    rows dealt round robin, every rank the same number of micro-batches (FSDP forwards are
    collectives; a rank short of rows runs empty ones)."""
    mine = rows[d.rank::d.world_size]
    m = max(1, math.ceil(len(rows) / (d.world_size * micro_batch_size)))
    return [mine[j * micro_batch_size:(j + 1) * micro_batch_size] for j in range(m)]


@torch.no_grad()
def all_logps(model: torch.nn.Module, examples: list[Example], rows: list[list[int]], layout: AttentionLayout,
              d: Dist, pad_id: int, micro_batch_size: int, *, autocast=None, desc: str = "",
              shared: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probability and answer tokens of every example in ``rows``, over all
    ranks (float64, all-reduced: every rank gets all of them). Dropout is off (eval mode).
    ``shared``: prompts shared per pair (`collate_shared`; rows then hold whole pairs)."""
    from tqdm.auto import tqdm

    autocast = autocast if autocast is not None else contextlib.nullcontext()
    n = len(examples)
    keep_ok = logits_to_keep_supported(model)
    out = torch.zeros(2, n, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        parts = shard_rows(rows, d, micro_batch_size)
        for mb in tqdm(parts, desc=desc or "log-probs", unit="batch", disable=not d.is_main or not desc):
            empty = not mb
            if empty:  # one token without a label: the forward every rank must run
                batch = layout.collate([Example([pad_id], [IGNORE_INDEX])], [[0]], pad_id)
            else:
                batch = pair_batch(examples, mb, layout, pad_id, shared)
            with autocast:
                logits, kept = answer_logits(model, batch, layout, d.device, keep_ok)
            if not empty:
                logp, ntok = example_logps(logits, batch, batch["spans"], n, kept)
                out[0] += logp.double().cpu()
                out[1] += ntok.double().cpu()
            del logits
    finally:
        model.train(was_training)
        # FSDP2 leaves the root's parameters gathered after a forward without backward: reshard, or
        # the optimiser built next would hold the unsharded parameters (and checkpoints fail).
        reshard(model)
    d.all_reduce_sum(out)
    return out[0], out[1]


def reference_context(model: torch.nn.Module):
    """The reference model is the model the run starts from: with LoRA, the same weights with
    the adapters switched off (peft's ``disable_adapter``), so nothing is copied. Without LoRA
    the model itself (`reference_logps` runs before step 1)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()


def evaluate_pairs(model: torch.nn.Module, examples: list[Example], rows: list[list[int]], ref: torch.Tensor,
                   layout: AttentionLayout, d: Dist, pad_id: int, micro_batch_size: int, cfg: DpoConfig, *,
                   autocast=None, shared: list[int] | None = None) -> dict:
    """Preference accuracy (share of pairs whose chosen reward beats the rejected one, strictly),
    mean reward margin and mean loss of the pairs in ``rows`` (held-out pairs) under the model now."""
    logp, ntok = all_logps(model, examples, rows, layout, d, pad_id, micro_batch_size, autocast=autocast,
                           shared=shared)
    pairs = sorted({i // 2 for row in rows for i in row})
    c = torch.tensor([2 * p for p in pairs])
    r = c + 1
    terms = pair_losses(logp[c], logp[r], ref[c].double(), ref[r].double(), ntok[c], ntok[r], cfg)
    margin = terms.chosen_rewards - terms.rejected_rewards
    return {"pairs": len(pairs), "accuracy": float((margin > 0).double().mean()),
            "margin": float(margin.mean()), "loss": float(terms.loss.mean())}


def check_shared_prompt(model: torch.nn.Module, layout: AttentionLayout, examples: list[Example], shared: list[int],
                        *, name: str, pad_id: int, autocast, d: Dist) -> float:
    """Shared prompts must give each answer the logits of its own sequence, on the real model;
    returns the max |Δlogit|. The two pairs with the longest shared prompts go through one row
    as training collates them (`collate_shared`) and each of their examples through a row of
    its own (the layout `check_isolation` proved); every rank runs the same forwards (FSDP).
    Raises `UserError` when the layout cannot share or the logits differ beyond the tolerance."""
    import logging

    from ja_instruct.errors import UserError
    from ja_instruct.train.isolation import _max_over_ranks, tolerance

    hint = "Set train.dpo.share_prompt: false (each example of a pair then carries its own prompt)."
    if layout.kind not in ("mask", "float_mask", "flex") or layout.window is not None:
        raise UserError(f"train.dpo.share_prompt needs a full-attention mask, but {name} runs "
                        f"{layout.attn_implementation} attention ({layout.kind}"
                        f"{', sliding window' if layout.window is not None else ''})", field="train.dpo.share_prompt",
                        hint=hint)
    pick = sorted(sorted(range(len(shared)), key=lambda p: (-shared[p], p))[:2])
    if not pick or max(shared[p] for p in pick) == 0:
        return 0.0
    row = [i for p in pick for i in (2 * p, 2 * p + 1)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast:
            sb = collate_shared(examples, [row], pad_id, shared)
            got = model(**layout.model_inputs(sb, d.device)).logits.float()
            own = model(**layout.model_inputs(layout.collate(examples, [[i] for i in row], pad_id), d.device)).logits.float()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001  (any failure of foreign model code is the verdict)
        raise UserError(f"shared prompts cannot be used with {name}: its forward rejects the mask "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"[:400],
                        field="train.dpo.share_prompt", hint=hint) from None
    finally:
        model.train(was_training)
        reshard(model)
    diff = scale = 0.0
    for i, r, start, length in sb["spans"]:
        mine = own[row.index(i), shared[i // 2]:shared[i // 2] + length]
        diff = max(diff, (got[r, start:start + length] - mine).abs().max().item())
        scale = max(scale, mine.abs().max().item())
    diff, scale = _max_over_ranks([diff, scale], d.device if d.enabled else None)
    tol = tolerance(layout.dtype, scale)
    if not diff <= tol:  # NaN fails too
        raise UserError(f"shared prompts are not safe with {name}: an answer after a shared prompt does not get "
                        f"the logits of its own sequence (max |Δlogit| {diff:.3g} > tolerance {tol:.3g})",
                        field="train.dpo.share_prompt", hint=hint)
    if d.is_main:
        logging.getLogger(__name__).info("dpo: shared prompts checked on %s: max |Δlogit| %.1g (tolerance %.1g)",
                                         name, diff, tol)
    return diff
