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
# pip's own progress stays visible: torch alone is several GB on a machine with CUDA wheels
$(VENV)/.installed: pyproject.toml runtime/pyproject.toml
	@echo "[setup 1/5] creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	@echo "[setup 2/5] upgrading pip"
	$(PY) -m pip install -q --upgrade pip
	@echo "[setup 3/5] installing torch + torchvision (the big download: progress below)"
	$(PY) -m pip install --progress-bar on torch torchvision
	@echo "[setup 4/5] installing vlmad-runtime"
	$(PY) -m pip install --progress-bar on -e './runtime[onnx,openvino,serve]'
	@echo "[setup 5/5] installing vlmad with its test, serve, ray and export extras"
	$(PY) -m pip install --progress-bar on -e '.[test,serve,ray,export]'
	@echo "[setup] done: $(VENV)"
	touch $@

# the parity oracle: anomalib 2.7.0 pins open_clip_torch < 2.26.1, so it lives in its own environment
oracle-env: $(ORACLE)/.installed

$(ORACLE)/.installed:
	@echo "[oracle 1/3] creating $(ORACLE) (anomalib 2.7.0, the parity reference)"
	$(PYTHON) -m venv $(ORACLE)
	$(ORACLE)/bin/python -m pip install -q --upgrade pip
	@echo "[oracle 2/3] installing torch + torchvision"
	$(ORACLE)/bin/python -m pip install --progress-bar on torch torchvision
	@echo "[oracle 3/3] installing anomalib[clip]==2.7.0"
	$(ORACLE)/bin/python -m pip install --progress-bar on 'anomalib[clip]==2.7.0' safetensors
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
	$(VENV)/bin/ruff format --check src tests benchmarks runtime

bench: setup oracle-env
	VLMAD_ORACLE_PYTHON=$(abspath $(ORACLE))/bin/python $(PY) benchmarks/winclip_vs_anomalib.py

clean:
	rm -rf $(VENV) $(ORACLE) demo-out .pytest_cache
