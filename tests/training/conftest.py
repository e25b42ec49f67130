"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dataset_root(small_dataset):
    """A generated MVTec-layout dataset with 9 test images (6 with masks) per category: enough to train on."""
    return small_dataset("mvtec", "demo_texture,demo_object", n_test_bad=6)


@pytest.fixture
def deterministic_runs(dataset_root, tmp_path):
    """``check(train, backbone, config)``: two epochs twice with the feature cache and once without; asserts what
    holds for every trainer (the same seed gives the same losses; without the cache the backbone runs more often
    and the losses change only by rounding) and returns the two cached runs for the method's own comparison."""
    from vlmad.data import load_dataset

    def check(train, backbone, config):
        reader = load_dataset("mvtec", dataset_root)
        a, b, nocache = (
            train(reader, tmp_path / name, backbone=backbone, config=config(epochs=2, cache_gb=gb))
            for name, gb in (("a", 4.0), ("b", 4.0), ("nocache", 0.0))
        )
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        assert nocache.history[-1]["backbone_images"] > a.history[-1]["backbone_images"]
        for ha, hn in zip(a.history, nocache.history, strict=True):
            assert ha["train_loss"] == pytest.approx(hn["train_loss"], rel=1e-5)
        return a, b

    return check


def assert_same_predictions(backbone, detectors) -> None:
    """The detectors (e.g. one loading the saved artefact, one holding the trained part) predict identically."""
    import torch

    x = backbone.preprocess_tensor(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    preds = []
    for det in detectors:
        det.setup("demo_object")
        preds.append(det.predict(x))
    assert torch.equal(preds[0].anomaly_maps, preds[1].anomaly_maps)
    assert torch.equal(preds[0].image_scores, preds[1].image_scores)


@pytest.fixture
def same_predictions():
    """:func:`assert_same_predictions` (a fixture: test modules do not import conftest)."""
    return assert_same_predictions
