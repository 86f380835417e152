# make demo-dpo: preference tuning after the demo's SFT (recipes/demo-dpo.yaml, docs/dpo.md).
#
# The SFT model is the demo's (runs/demo/train/final): `ja-instruct train recipes/demo.yaml`
# does nothing when `make demo` already ran (one "up to date" line), else trains it first
# (~5 min on 2 cores). Then pairs (the SFT model's sampled answers, judged by the demo judge)
# -> DPO (LoRA on the SFT model) -> generate (base, SFT, DPO) -> judge -> report:
# runs/demo-dpo/report/index.html. Every stage is skipped when up to date, so a second
# `make demo-dpo` does no work and a killed one resumes.

.PHONY: demo-dpo

demo-dpo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/ja-instruct train recipes/demo.yaml
	HF_HUB_OFFLINE=1 $(VENV)/bin/ja-instruct run recipes/demo-dpo.yaml
