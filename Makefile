# Two set-up commands: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DATA ?= data/synthetic
DATA_HARD ?= data/synthetic-hard
RUNS ?= runs

.PHONY: install test test-all lint format demo demo-shuffled demo-hard data bench bench-gpu balancing clean

# Idempotent: a stamp file records that the install matches pyproject.toml.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev]' $(TORCH_PINS)
	$(PIP) install -q --no-deps SoccerNet
	touch $@

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "not bench"

lint: install
	$(VENV)/bin/ruff check mvcli tests
	$(VENV)/bin/ruff format --check mvcli tests

format: install
	$(VENV)/bin/ruff format mvcli tests
	$(VENV)/bin/ruff check --fix mvcli tests

data: install
	test -f $(DATA)/Test/annotations.json || $(PY) -m mvcli.data.synthetic --root $(DATA)

# The demos write their dataset when it is absent, in the same process as the run.
demo: install
	$(PY) -m mvcli.tools.demo --data_root $(DATA) --runs $(RUNS)

demo-shuffled: install
	$(PY) -m mvcli.tools.demo --data_root $(DATA) --runs $(RUNS) --shuffle_labels true

# The demo on the real class frequencies (red cards ~2%; every class in Test) and annotation
# quirks, balanced.
demo-hard: install
	$(PY) -m mvcli.tools.demo --data_root $(DATA_HARD) --runs $(RUNS) --name demo-hard \
		--imbalance real --quirks true --overlay configs/demo_hard.yaml

bench: install
	$(PY) -m pytest -q -m bench tests/benchmarks -s

# The speed options on a GPU (one H100: under 8 minutes) -> $(RUNS)/bench-gpu.json; without
# CUDA it says so and exits 0 (tests/benchmarks/gpu_bench.py, docs/performance.md#gpu).
bench-gpu: install
	$(PY) -m tests.benchmarks.gpu_bench --out $(RUNS)/bench-gpu.json

# Class balancing options vs the natural sampler at equal epochs (~15 min on 2 cores).
balancing: install
	$(PY) -m tests.benchmarks.balancing

clean:
	rm -rf $(RUNS) .pytest_cache .ruff_cache
