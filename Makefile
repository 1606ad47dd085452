# The few commands a contributor needs. Each installs into a virtual environment first (idempotent).
VENV ?= .venv
OLDEST_TRANSFORMERS ?= 5.17.0
PY := $(VENV)/bin/python

.PHONY: install demo test test-oldest lint format bench

install:
	scripts/install.sh $(VENV)

demo: install            ## `hovle chat` on the embedded default: a tiny untrained model built offline
	HF_HUB_OFFLINE=1 $(VENV)/bin/hovle chat --image scripts/sample.png "What is in this picture?"
	HF_HUB_OFFLINE=1 $(PY) scripts/quickstart.py

test: install            ## the whole suite (a few minutes on 2 cores)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

test-oldest:             ## the suite on the oldest supported transformers (setup.py's floor)
	scripts/install.sh .venv-oldest $(OLDEST_TRANSFORMERS)
	HF_HUB_OFFLINE=1 .venv-oldest/bin/python -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: install           ## decoding cost per token vs plain Llama and vs full recomputation
	$(PY) benchmarks/decode_cost.py
