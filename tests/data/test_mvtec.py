"""MVTec AD reader: counts/labels/masks on generated data, and every layout error naming its path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vlmad.data import (
    ANOMALY_KINDS,
    MVTEC_CATEGORIES,
    DatasetReader,
    MVTecAD,
    check_sample,
    load_dataset,
    load_image,
    load_mask,
    make_dataset,
)
from vlmad_runtime.errors import DatasetLayoutError, UnknownNameError


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mvtec") / "ds"
    return make_dataset(out, "mvtec", ("carpet_texture", "bottle_object"), n_train=3, n_test_good=2, n_test_bad=5)


def _small(tmp_path: Path, **kw) -> Path:
    args = {"n_train": 2, "n_test_good": 1, "n_test_bad": 2, "size": 32} | kw
    return make_dataset(tmp_path / "ds", "mvtec", ("cat",), **args)


def _layout_error(root: Path, path_in_message: Path, category: str = "cat", split: str = "test") -> str:
    with pytest.raises(DatasetLayoutError) as info:
        MVTecAD(root).samples(category, split)
    assert str(path_in_message) in str(info.value), str(info.value)
    assert info.value.hint
    return str(info.value)


def test_official_categories():
    assert len(MVTEC_CATEGORIES) == 15
    assert {"bottle", "metal_nut", "zipper", "transistor"} <= set(MVTEC_CATEGORIES)
    assert list(MVTEC_CATEGORIES) == sorted(MVTEC_CATEGORIES)


def test_counts_labels_and_masks(mvtec_root):
    ds = MVTecAD(mvtec_root)
    assert isinstance(ds, DatasetReader)
    assert ds.name == "mvtec"
    assert ds.categories == ["bottle_object", "carpet_texture"]
    for cat in ds.categories:
        assert ds.has_masks(cat)
        train = ds.samples(cat, "train")
        assert len(train) == 3
        assert all(s.label == "normal" and s.split == "train" and s.mask_path is None for s in train)
        test = ds.samples(cat, "test")
        assert len(test) == 7
        good = [s for s in test if not s.is_anomalous]
        bad = [s for s in test if s.is_anomalous]
        assert len(good) == 2 and all(s.defect_type == "good" and s.mask_path is None for s in good)
        assert len(bad) == 5
        assert {s.defect_type for s in bad} == set(ANOMALY_KINDS)
        for s in bad:
            assert s.category == cat and s.split == "test"
            assert s.mask_path.name == f"{s.image_path.stem}_mask.png"
            assert s.mask_path.parent.name == s.defect_type
            check_sample(s)
            mask = load_mask(s.mask_path)
            assert mask.any() and mask.shape == np.asarray(load_image(s.image_path)).shape[:2]


def test_order_is_deterministic_normal_first(mvtec_root):
    ds = MVTecAD(mvtec_root)
    test = ds.samples("carpet_texture", "test")
    assert [s.is_anomalous for s in test] == sorted(s.is_anomalous for s in test)
    assert test == MVTecAD(mvtec_root).samples("carpet_texture", "test")
    defects = [s.defect_type for s in test if s.is_anomalous]
    assert defects == sorted(defects)


def test_category_subset_and_unknown_names(mvtec_root):
    assert MVTecAD(mvtec_root, ["carpet_texture"]).categories == ["carpet_texture"]
    assert MVTecAD(mvtec_root, "carpet_texture,bottle_object").categories == [
        "carpet_texture",
        "bottle_object",
    ]
    with pytest.raises(UnknownNameError) as info:
        MVTecAD(mvtec_root, ["carpet_texture", "screw"])
    assert "screw" in str(info.value) and "bottle_object" in info.value.hint
    ds = MVTecAD(mvtec_root, ["carpet_texture"])
    with pytest.raises(UnknownNameError):
        ds.samples("bottle_object", "test")
    with pytest.raises(UnknownNameError, match="split"):
        ds.samples("carpet_texture", "val")  # type: ignore[arg-type]


def test_load_dataset_and_unknown_kind(mvtec_root):
    ds = load_dataset("mvtec", mvtec_root, ["bottle_object"])
    assert isinstance(ds, MVTecAD) and ds.categories == ["bottle_object"]
    with pytest.raises(UnknownNameError) as info:
        load_dataset("mvtec3d", mvtec_root)
    assert "mvtec" in info.value.hint


def test_samples_returns_a_copy(mvtec_root):
    ds = MVTecAD(mvtec_root)
    ds.samples("carpet_texture", "train").clear()
    assert len(ds.samples("carpet_texture", "train")) == 3


def test_extensions_case_insensitive_and_hidden_files_skipped(tmp_path):
    root = _small(tmp_path)
    good = root / "cat" / "test" / "good"
    (good / "000.png").rename(good / "000.PNG")
    (good / "._000.png").write_bytes(b"macOS resource fork")
    (good / "notes.txt").write_text("not an image")
    test = MVTecAD(root).samples("cat", "test")
    names = [s.image_path.name for s in test if not s.is_anomalous]
    assert names == ["000.PNG"]


def test_test_only_copy_is_fine_but_train_request_fails(tmp_path):
    root = _small(tmp_path, n_train=0)
    ds = MVTecAD(root)
    assert len(ds.samples("cat", "test")) == 3
    msg = _layout_error(root, root / "cat" / "train", split="train")
    assert "does not exist" in msg


# --- layout errors ---


def test_root_missing(tmp_path):
    with pytest.raises(DatasetLayoutError) as info:
        MVTecAD(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and info.value.hint


def test_root_without_categories(tmp_path):
    (tmp_path / "random_folder").mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetLayoutError) as info:
        MVTecAD(tmp_path)
    assert str(tmp_path) in str(info.value) and "train/good" in info.value.hint


def test_root_pointing_at_a_category(tmp_path):
    root = _small(tmp_path)
    with pytest.raises(DatasetLayoutError) as info:
        MVTecAD(root / "cat")
    assert str(root / "cat") in str(info.value) and str(root) in info.value.hint


def test_empty_category_folder(tmp_path):
    root = _small(tmp_path)
    (root / "empty").mkdir()
    assert MVTecAD(root).categories == ["cat"]  # stray folders are not categories...
    with pytest.raises(DatasetLayoutError) as info:  # ...but asking for one explains why
        MVTecAD(root, ["empty"])
    assert str(root / "empty") in str(info.value)


def test_missing_ground_truth(tmp_path):
    root = _small(tmp_path)
    shutil.rmtree(root / "cat" / "ground_truth")
    _layout_error(root, root / "cat" / "ground_truth")


def test_anomalous_image_without_mask(tmp_path):
    root = _small(tmp_path)
    mask = next((root / "cat" / "ground_truth").rglob("*_mask.png"))
    mask.unlink()
    image = root / "cat" / "test" / mask.parent.name / mask.name.replace("_mask", "")
    msg = _layout_error(root, image)
    assert "no mask" in msg


def test_mask_without_image(tmp_path):
    root = _small(tmp_path)
    mask = next((root / "cat" / "ground_truth").rglob("*_mask.png"))
    image = root / "cat" / "test" / mask.parent.name / mask.name.replace("_mask", "")
    image.unlink()  # its defect folder had one image: now the whole ground-truth folder is orphaned
    msg = _layout_error(root, mask.parent)
    assert "have no images" in msg


def test_orphan_mask_next_to_valid_ones(tmp_path):
    root = _small(tmp_path, n_test_bad=1)
    gt = next((root / "cat" / "ground_truth").iterdir())
    shutil.copy(gt / "000_mask.png", gt / "007_mask.png")
    _layout_error(root, gt / "007_mask.png")


def test_ground_truth_for_missing_defect_folder(tmp_path):
    root = _small(tmp_path)
    extra = root / "cat" / "ground_truth" / "crack"
    extra.mkdir()
    shutil.copy(next((root / "cat" / "ground_truth").rglob("*_mask.png")), extra / "000_mask.png")
    _layout_error(root, extra)


def test_ambiguous_masks(tmp_path):
    root = _small(tmp_path, n_test_bad=1)
    gt = next((root / "cat" / "ground_truth").iterdir())
    shutil.copy(gt / "000_mask.png", gt / "000_mask.bmp")
    msg = _layout_error(root, root / "cat" / "test" / gt.name / "000.png")
    assert "several masks" in msg


def test_empty_split(tmp_path):
    root = _small(tmp_path)
    for f in (root / "cat" / "train" / "good").iterdir():
        f.unlink()
    msg = _layout_error(root, root / "cat" / "train" / "good", split="train")
    assert "no train images" in msg


def test_missing_test_folder(tmp_path):
    root = _small(tmp_path)
    shutil.rmtree(root / "cat" / "test")
    _layout_error(root, root / "cat" / "test")


def test_loose_image_in_test_folder(tmp_path):
    root = _small(tmp_path)
    shutil.copy(root / "cat" / "test" / "good" / "000.png", root / "cat" / "test" / "stray.png")
    _layout_error(root, root / "cat" / "test" / "stray.png")


def test_defect_folder_inside_train(tmp_path):
    root = _small(tmp_path)
    (root / "cat" / "train" / "scratch").mkdir()
    _layout_error(root, root / "cat" / "train", split="train")


def test_mask_size_mismatch_is_checked_lazily(tmp_path):
    from PIL import Image

    root = _small(tmp_path, n_test_bad=1)
    mask = next((root / "cat" / "ground_truth").rglob("*_mask.png"))
    Image.new("L", (16, 16)).save(mask)
    sample = [s for s in MVTecAD(root).samples("cat", "test") if s.is_anomalous][0]  # listing still works
    with pytest.raises(DatasetLayoutError) as info:
        check_sample(sample)
    assert str(mask) in str(info.value)
