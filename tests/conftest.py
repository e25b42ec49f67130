"""Shared test set-up: offline hub, a private cache dir, tiny open_clip configs, and the parity oracle."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# hub calls must fail fast on build machines (no network); set before open_clip/huggingface_hub import
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own text-embedding cache so results never depend on test order."""
    monkeypatch.setenv("VLMAD_CACHE_DIR", str(tmp_path_factory.mktemp("vlmad-cache")))


@pytest.fixture(scope="session")
def oracle_python() -> str:
    """Python of the anomalib 2.7.0 environment (see Makefile `oracle-env`).

    Under `make test`/CI the variable is always set and a missing oracle is a failure, not a skip
    (VLMAD_REQUIRE_ORACLE=1).
    """
    path = os.environ.get("VLMAD_ORACLE_PYTHON")
    if path and Path(path).exists():
        return path
    if os.environ.get("VLMAD_REQUIRE_ORACLE") == "1":
        pytest.fail(f"VLMAD_REQUIRE_ORACLE=1 but the oracle python {path!r} does not exist; run `make oracle-env`")
    pytest.skip("anomalib oracle environment not configured (set VLMAD_ORACLE_PYTHON or use `make test`)")


def pytest_report_header(config):
    return f"oracle python: {os.environ.get('VLMAD_ORACLE_PYTHON') or shutil.which('none') or 'not set'}"
