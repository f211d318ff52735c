# One-command entry points. Each target does its own set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.forgetlab-installed
# torch is installed first and pinned: 2.13.0 is the CPU build that lies on this kind of
# machine's disk; letting pip resolve a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench lint clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgetlab demo --out runs/demo

test: $(STAMP) chromium
	FORGETLAB_REQUIRE_CHROMIUM=1 $(PY) -m pytest -q -p no:cacheprovider --durations=15

# Debian's chromium, for the test that renders the report headless (not a pip package; as root or with sudo)
chromium:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]' || echo "bench extra not installed: the ckatorch and representational-analysis rows will say so"
	$(PY) bench/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf runs .pytest_cache
