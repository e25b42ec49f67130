"""Study tests: generated datasets (tests/conftest.py), one shared text cache, one torch thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(shared_text_cache):
    """Overrides the per-test cache: this package shares one (see tests/conftest.py)."""
    return shared_text_cache


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """2 shared cores: one intra-op thread for this package's tiny models; restored after it, so the
    real-architecture tests elsewhere keep all threads."""
    from vlmad.testing import single_torch_thread

    with single_torch_thread():
        yield
