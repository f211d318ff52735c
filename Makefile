# One-command entry points. Each target does its own set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.forgetlab-installed
# torch is installed first and pinned: 2.13.0 is the CPU build that lies on this kind of
# machine's disk; letting pip resolve a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgetlab demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf runs .pytest_cache
