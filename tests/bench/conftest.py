"""Small generated datasets and a tiny random-weights WinCLIP for the harness tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmad.data import make_dataset

TINY = {"model": "vlmad-tiny-vit", "random_weights": True}


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("data") / "mvtec",
        layout="mvtec",
        categories="demo_texture,demo_object",
        n_train=3,
        n_test_good=3,
        n_test_bad=3,
        size=64,
    )


@pytest.fixture(scope="session")
def visa_root(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("data") / "visa",
        layout="visa",
        categories="demo_texture,demo_object",
        n_train=3,
        n_test_good=3,
        n_test_bad=3,
        size=64,
    )


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


@pytest.fixture(autouse=True)
def _isolated_cache(shared_text_cache):
    """The harness tests share one text cache (the tiny random model embeds the same prompts every time) to keep
    the suite fast; cache behaviour itself is tested in tests/backbones."""
    return shared_text_cache


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    """2 shared cores: one intra-op thread for this package's tiny models; restored after it, so the
    real-architecture tests elsewhere keep all threads."""
    from vlmad.testing import single_torch_thread

    with single_torch_thread():
        yield
