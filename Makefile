# One-command entry points. Each target does its own set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.forgetlab-installed
# torch is installed first and pinned: 2.13.0 is the CPU build that lies on this kind of
# machine's disk; letting pip resolve a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
UV := $(VENV)/bin/uv
# uv installs without compiling bytecode, and this kind of machine sets PYTHONDONTWRITEBYTECODE, so
# every Python process compiled torch's and transformers' sources again (an import took 24 s instead
# of 10 s; the demo's workers and the tests' subprocesses are many). The targets below let the first
# import write the .pyc files (into .venv and the git-ignored __pycache__ folders).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: setup demo test bench lint clean chromium original gold

setup: $(STAMP)

# uv (from PyPI) installs in seconds what pip takes a minute for. torch comes from pip's own
# find-links folder (PIP_FIND_LINKS, where this machine keeps its CPU wheel) when it holds one,
# else from pip as before; uv never resolves torch on its own (it ignores pip's config and would
# take PyPI's CUDA build). Without uv, pip installs everything.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q uv || true
	@set -e; links=$$(for d in $${PIP_FIND_LINKS:-$$(python3 -m pip config get global.find-links 2>/dev/null)}; do ls $$d/torch-2.13.0+cpu-*.whl 2>/dev/null; done | head -1); \
	if [ -x $(UV) ] && [ -n "$$links" ] && [ "$(TORCH)" = "torch==2.13.0" ]; then \
	  echo "torch from $$links"; $(UV) pip install -q --python $(PY) "$$links"; \
	else $(PY) -m pip install -q "$(TORCH)"; fi
	if [ -x $(UV) ]; then $(UV) pip install -q --python $(PY) -e '.[dev]'; else $(PY) -m pip install -q -e '.[dev]'; fi
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgetlab demo --out runs/demo

# Every test runs torch on one thread (tests/conftest.py), so the suite runs on two pytest-xdist workers, one
# per core; --dist loadfile keeps a module's tests (and its module-scoped fixtures, e.g. the toy demo run) on
# one worker. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(STAMP) chromium
	FORGETLAB_REQUIRE_CHROMIUM=1 $(PY) -m pytest -q -p no:cacheprovider --durations=15 \
	  $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# Debian's chromium, for the test that renders the report headless (not a pip package; as root or with sudo)
chromium:
	@command -v chromium >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# retrain the original model shipped with the package (what `forgetlab demo` uses when it fits)
original: $(STAMP)
	$(VENV)/bin/forgetlab synth --out runs/original/data
	$(VENV)/bin/forgetlab finetune --data runs/original/data --out src/forgetlab/assets/original-llava

# retrain the gold (retain-only) model shipped with the package: the original's recipe without forget_10
gold: $(STAMP)
	$(VENV)/bin/forgetlab synth --out runs/original/data
	echo '{"exclude_forget": 10}' > runs/original/gold.json
	$(VENV)/bin/forgetlab finetune --data runs/original/data --out src/forgetlab/assets/gold-llava-forget10 \
	  --config runs/original/gold.json

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]' || echo "bench extra not installed: the ckatorch and representational-analysis rows will say so"
	$(PY) bench/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf runs .pytest_cache
