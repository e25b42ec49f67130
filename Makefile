# vlmad — two commands do everything on a fresh machine:
#   make demo   set up .venv, generate a demo dataset, run WinCLIP zero-/few-shot, write a report with heatmaps
#   make test   set up .venv and the anomalib parity oracle (.venv-oracle), run the whole suite (slow tests too)
PYTHON ?= python3
VENV   := .venv
ORACLE := .venv-oracle
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: setup oracle-env browser demo test test-fast lint bench clean

setup: $(VENV)/.installed

# torch/torchvision first and unpinned: resolves to the build the machine provides (or the user's own)
$(VENV)/.installed: pyproject.toml runtime/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ./runtime
	$(PY) -m pip install -q -e '.[test,serve,ray]'
	touch $@

# the parity oracle: anomalib 2.7.0 pins open_clip_torch < 2.26.1, so it lives in its own environment
oracle-env: $(ORACLE)/.installed

$(ORACLE)/.installed:
	$(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/python -m pip install -q --upgrade pip
	$(ORACLE)/bin/python -m pip install -q torch torchvision
	$(ORACLE)/bin/python -m pip install -q 'anomalib[clip]==2.7.0' safetensors
	touch $@

# headless Chromium for the web-page test (Debian package; needs root to install, else the test says it skipped)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed (not root): the browser test will be skipped"

demo: setup
	@echo "vlmad demo: tries the pretrained weights; if they cannot be fetched it says so and, as asked here"
	@echo "with --fallback-random-weights, runs on random weights (every output stamped: scores are meaningless)."
	HF_HUB_OFFLINE=0 $(VENV)/bin/vlmad demo --out demo-out --fallback-random-weights

test: setup oracle-env browser
	VLMAD_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python VLMAD_REQUIRE_ORACLE=1 VLMAD_REQUIRE_RAY=1 $(PY) -m pytest

# the inner loop: slow tests skipped; the parity tests run when the oracle env exists (make oracle-env)
test-fast: setup
	VLMAD_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks runtime

bench: setup oracle-env
	VLMAD_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(PY) benchmarks/winclip_vs_anomalib.py

clean:
	rm -rf $(VENV) $(ORACLE) demo-out .pytest_cache
