"""Study tests: generated datasets (tests/conftest.py), one shared text cache, one torch thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(shared_text_cache):
    """Overrides the per-test cache: this package shares one (see tests/conftest.py)."""
    return shared_text_cache


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """2 shared cores: one intra-op thread keeps the tiny models fast (two spin against other jobs); restored
    after this package, so the real-architecture tests elsewhere keep all threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
