"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest

from vlmad.data import make_dataset


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory):
    """A generated MVTec-layout dataset with 9 test images (6 with masks) per category: enough to train on."""
    return make_dataset(
        tmp_path_factory.mktemp("gen") / "mvtec_like",
        layout="mvtec",
        categories="demo_texture,demo_object",
        n_train=4,
        n_test_good=3,
        n_test_bad=6,
        size=64,
    )
