"""Harness tests: small generated datasets (3 normal train images: a 4-shot row is refused) and a tiny
random-weights WinCLIP. The shared text cache and the one torch thread come from tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = {"model": "vlmad-tiny-vit", "random_weights": True}


@pytest.fixture(scope="session")
def mvtec_root(small_dataset) -> Path:
    return small_dataset("mvtec", "demo_texture,demo_object", n_train=3)


@pytest.fixture(scope="session")
def visa_root(small_dataset) -> Path:
    return small_dataset("visa", "demo_texture,demo_object", n_train=3)


@pytest.fixture
def tiny_spec():
    from vlmad.bench import method_spec

    return method_spec("winclip", **TINY)


@pytest.fixture
def make_config(tmp_path, tiny_spec):
    """BenchmarkConfig factory with small defaults (one dataset, tiny random model)."""
    from vlmad.bench import BenchmarkConfig, DatasetSpec

    def make(root: Path, kind: str = "mvtec", out: Path | None = None, **kw):
        kw.setdefault("methods", [tiny_spec])
        kw.setdefault("batch_size", 4)
        kw.setdefault("flops", False)
        return BenchmarkConfig(
            out=out or tmp_path / "run", datasets=[DatasetSpec(kind, root, kw.pop("categories", None))], **kw
        )

    return make
