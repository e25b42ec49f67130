"""Synthetic datasets: determinism, exact masks, every layout readable, and the make-dataset command."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.data import (
    ANOMALY_KINDS,
    LAYOUTS,
    MVTecAD,
    load_dataset,
    load_image,
    load_mask,
    make_dataset,
    normal_image,
    paste_anomaly,
)
from vlmad.data.synthetic import category_style
from vlmad_runtime.errors import UnknownNameError, VlmadError

READER = {"mvtec": "mvtec", "visa": "visa", "visa-converted": "visa", "folder": "folder"}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
@pytest.mark.parametrize("category", ["t_texture", "o_object", "g_grid"])
def test_paste_anomaly_mask_is_exactly_the_changed_pixels(kind, category):
    base = normal_image(category, 64, seed=3, index=1)
    before = base.copy()
    for trial in range(5):
        out, mask = paste_anomaly(base, np.random.default_rng(trial), kind)
        np.testing.assert_array_equal(base, before)  # input untouched
        assert out.shape == base.shape and out.dtype == np.uint8
        assert mask.shape == base.shape[:2] and mask.dtype == bool
        changed = (out != base).any(axis=2)
        np.testing.assert_array_equal(changed, mask)
        assert 0 < mask.sum() < 0.25 * mask.size


def test_paste_anomaly_grayscale_random_kind_and_region():
    base = np.full((48, 48), 128, np.uint8)
    region = np.zeros((48, 48), bool)
    region[30:40, 5:15] = True
    for seed in range(8):
        out, mask = paste_anomaly(base, np.random.default_rng(seed), kind="spot", region=region)
        assert out.shape == (48, 48)
        np.testing.assert_array_equal(out != base, mask)
        assert (mask & region).any()  # centred inside the allowed region
    rng = np.random.default_rng(0)
    areas = {int(paste_anomaly(base, rng)[1].sum()) for _ in range(20)}  # random kind, shape and place
    assert len(areas) > 5
    with pytest.raises(UnknownNameError):
        paste_anomaly(base, rng, kind="lasers")
    with pytest.raises(ValueError):
        paste_anomaly(base.astype(np.float32), rng)


def test_normal_images_vary_a_little_and_categories_differ():
    a, b = normal_image("x_texture", 64, index=0), normal_image("x_texture", 64, index=1)
    assert not np.array_equal(a, b)
    other = normal_image("y_texture", 64, index=0)
    diff_within = np.abs(a.astype(int) - b.astype(int)).mean()
    diff_across = np.abs(a.astype(int) - other.astype(int)).mean()
    assert diff_within < diff_across
    np.testing.assert_array_equal(a, normal_image("x_texture", 64, index=0))
    assert normal_image("x_texture", (40, 24)).shape == (24, 40, 3)
    assert {category_style(c) for c in ("a_texture", "b_object", "c_grid")} == {"texture", "object", "grid"}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = {"categories": ("a_texture",), "n_train": 2, "n_test_good": 1, "n_test_bad": 2, "size": 48}
    first = _digest(make_dataset(tmp_path / "a", "mvtec", seed=7, **kw))
    again = _digest(make_dataset(tmp_path / "b", "mvtec", seed=7, **kw))
    other = _digest(make_dataset(tmp_path / "c", "mvtec", seed=8, **kw))
    assert first == again
    assert first.keys() == other.keys() and first != other


@pytest.mark.parametrize("layout", ["mvtec", "folder"])
def test_saved_masks_match_the_changed_pixels_on_disk(tmp_path, layout):
    root = make_dataset(tmp_path / "ds", layout, ("p_object", "q_texture"), n_train=1, n_test_good=1, n_test_bad=4)
    ds = load_dataset(READER[layout], root)
    for cat in ds.categories:
        bad = [s for s in ds.samples(cat, "test") if s.is_anomalous]
        assert len(bad) == 4
        for s in bad:
            index = int(s.image_path.stem.split("_")[-1])
            base = normal_image(cat, 128, seed=0, index=index, group="test_bad")
            img = np.asarray(load_image(s.image_path))
            mask = load_mask(s.mask_path)
            np.testing.assert_array_equal(img[~mask], base[~mask])
            assert (img[mask] != base[mask]).any(axis=1).all()
            raw = np.asarray(Image.open(s.mask_path))
            assert set(np.unique(raw)) == {0, 255}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_back_with_right_counts(tmp_path, layout):
    cats = ("demo_texture", "demo_object", "demo_grid")
    root = make_dataset(tmp_path / layout, layout, cats, n_train=3, n_test_good=2, n_test_bad=5, size=64)
    ds = load_dataset(READER[layout], root)
    assert ds.categories == sorted(cats)
    for cat in cats:
        assert ds.has_masks(cat)
        assert len(ds.samples(cat, "train")) == 3
        test = ds.samples(cat, "test")
        assert sum(not s.is_anomalous for s in test) == 2
        assert sum(s.is_anomalous for s in test) == 5
        assert load_image(test[0].image_path).size == (64, 64)


def test_speed_three_categories_twenty_images(tmp_path):
    start = time.perf_counter()
    make_dataset(tmp_path / "ds", "mvtec", ("a", "b", "c"), n_train=10, n_test_good=5, n_test_bad=5)
    assert time.perf_counter() - start < 2.0


def test_argument_errors(tmp_path):
    with pytest.raises(UnknownNameError):
        make_dataset(tmp_path / "a", "coco")  # type: ignore[arg-type]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(VlmadError) as info:
        make_dataset(tmp_path / "full")
    assert str(tmp_path / "full") in str(info.value)
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
    for bad in ({"n_train": -1}, {"categories": ""}, {"categories": "../x"}, {"size": 4}, {"seed": -1}):
        with pytest.raises(VlmadError):
            make_dataset(tmp_path / "b", **bad)
    with pytest.raises(VlmadError, match="test split would be empty"):
        make_dataset(tmp_path / "c", n_test_good=0, n_test_bad=0)


def test_mvtec_file_names(tmp_path):
    root = make_dataset(tmp_path / "ds", "mvtec", ("c",), n_train=1, n_test_good=1, n_test_bad=1, size=32)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    assert files == [
        "c/ground_truth/scratch/000_mask.png",
        "c/test/good/000.png",
        "c/test/scratch/000.png",
        "c/train/good/000.png",
    ]
    assert MVTecAD(root).categories == ["c"]


def test_make_dataset_command(tmp_path, cli):
    out = tmp_path / "cli"
    args = ["make-dataset", str(out), "--layout", "visa", "--categories", "x,y_object", "--n-train", "2"]
    result = cli([*args, "--n-test-good", "1", "--n-test-bad", "3", "--size", "48"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "x: 2 train, 1 test good, 3 test anomalous" in result.output
    ds = load_dataset("visa", out)
    assert ds.categories == ["x", "y_object"] and ds.layout == "raw"
    bad = cli(["make-dataset", str(tmp_path / "z"), "--layout", "nope"])
    assert bad.exit_code != 0 and isinstance(bad.exception, UnknownNameError)
