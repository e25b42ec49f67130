"""Tiny generated datasets (MVTec and VisA layouts), one shared text cache, one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmad.data import make_dataset

TINY = ["--model", "vlmad-tiny-vit", "--random-weights"]


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("study-data") / "mvtec", layout="mvtec",
                        categories="demo_texture,demo_object", n_train=4, n_test_good=3, n_test_bad=3, size=64)


@pytest.fixture(scope="session")
def visa_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("study-data") / "visa", layout="visa",
                        categories="demo_grid,demo_object", n_train=4, n_test_good=3, n_test_bad=3, size=64)


_SHARED_CACHE: Path | None = None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """One text-embedding cache for the whole package (the tiny model embeds the same prompts every time)."""
    global _SHARED_CACHE
    if _SHARED_CACHE is None:
        _SHARED_CACHE = tmp_path_factory.mktemp("vlmad-cache-study")
    monkeypatch.setenv("VLMAD_CACHE_DIR", str(_SHARED_CACHE))


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """2 shared cores: one intra-op thread keeps tiny models fast (see tests/bench/conftest.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
