"""The model card's account of a DPO run: both stages (the SFT model it started from, then
DPO on judge-labelled pairs), the pairs' provenance and licences, and what DPO measured."""

from __future__ import annotations

from pathlib import Path

from ja_instruct.train.config import TrainConfig


def _starting_model(model_path: str | None) -> list[str]:
    """What the starting model's own card says it is (its title and first paragraph)."""
    readme = Path(model_path) / "README.md" if model_path else None
    if readme is None or not readme.is_file():
        return ["The starting model has no model card of its own."]
    text = readme.read_text(encoding="utf-8", errors="replace")
    if text.startswith("---"):
        text = text.split("---", 2)[-1]
    paras = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    title = next((p.lstrip("# ") for p in paras if p.startswith("# ")), None)
    body = next((p for p in paras if not p.startswith("#")), "")
    return [f"Stage 1 (the starting model{', ' + repr(title) if title else ''}): {body}".strip()]


def dpo_sections(cfg: TrainConfig, card: dict) -> list[str]:
    """Markdown lines: "## Stages" and "## Preference pairs" of a DPO model card."""
    facts = card.get("dpo") or {}
    pairs = facts.get("pairs") or {}
    meta = pairs.get("meta") or {}
    d = cfg.dpo
    loss = (f"IPO (tau {d.beta})" if d.loss == "ipo" else f"sigmoid DPO (beta {d.beta}"
            + (f", label smoothing {d.label_smoothing}" if d.label_smoothing else "") + ")")
    lines = ["## Stages", "", *_starting_model(card.get("model_path")), "",
             f"Stage 2: {loss}{f' plus {d.sft_weight} x the SFT loss on the chosen answers' if d.sft_weight else ''}, "
             f"on {pairs.get('train', '?')} preference pairs (reference: the starting model"
             f"{', adapters off' if cfg.lora.enabled else ''}; its log-probabilities computed once and cached).", "",
             "## Preference pairs", "",
             "| key | value |", "|---|---|",
             f"| pairs | `{pairs.get('path', '?')}` (fingerprint {pairs.get('fingerprint', '?')}) |",
             f"| trained / held out | {pairs.get('train', '?')} / {pairs.get('heldout', '?')} |",
             f"| labelled by | {meta.get('judge') or 'not recorded (an imported preference set)'} |",
             f"| prompts' licence | {meta.get('license') or 'unknown'} |",
             f"| judge's terms | {meta.get('judge_terms') or 'not recorded'} |", ""]
    evals = facts.get("eval") or []
    if evals:
        first, last = evals[0], evals[-1]
        lines += [f"Held-out preference accuracy {first.get('accuracy', 0):.3f} at step {first.get('step')} -> "
                  f"{last.get('accuracy', 0):.3f} at step {last.get('step')}; mean reward margin "
                  f"{first.get('margin', 0):.4f} -> {last.get('margin', 0):.4f} ({last.get('pairs')} pairs).", ""]
    last = facts.get("train_last") or {}
    if last:
        lines += ["Last 10% of the steps: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()) + ".", ""]
    lines += ["The weights inherit the starting model's licence and conditions, those of the prompts, and any "
              "terms of the judge that labelled the pairs.", ""]
    return lines
