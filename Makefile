# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
PYTEST_WORKERS ?= 2

.PHONY: setup demo catapult test test-slow check lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip >/dev/null 2>&1 || true
	# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build.
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

# The quick reproduction of the papers: runs, reports, and the claims table.
demo: setup
	$(VENV)/bin/implicit-bias reproduce all --quick --out results/reproduce-quick

# The catapult example sweep of SPEC §5 and its report (the README figures).
catapult: setup
	$(VENV)/bin/implicit-bias run configs/catapult-demo.yaml --out results/catapult-demo
	$(VENV)/bin/implicit-bias report results/catapult-demo

# worksteal balances tests of very unequal length best: 258 s on 2 cores against 290 s
# for loadscope (loadgroup stopped grouping on pytest 9.2: pytest-xdist#1386)
test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal

test-slow: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck test

bench: setup
	$(VENV)/bin/implicit-bias bench

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
