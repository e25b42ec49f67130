"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dataset_root(small_dataset):
    """A generated MVTec-layout dataset with 9 test images (6 with masks) per category: enough to train on."""
    return small_dataset("mvtec", "demo_texture,demo_object", n_test_bad=6)
