"""Generic folder dataset (users' own products)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.data import DatasetReader, FolderDataset, check_sample, load_dataset, make_dataset
from vlmad_runtime.errors import DatasetLayoutError, UnknownNameError


def _generated(tmp_path: Path, cats=("widget", "gadget_object"), **kw) -> Path:
    args = {"n_train": 2, "n_test_good": 2, "n_test_bad": 3, "size": 32} | kw
    return make_dataset(tmp_path / "ds", "folder", cats, **args)


def _img(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def _error(ds_or_root, *fragments: str, category: str | None = None, split: str = "test") -> None:
    with pytest.raises(DatasetLayoutError) as info:
        ds = FolderDataset(ds_or_root) if isinstance(ds_or_root, Path) else ds_or_root
        ds.samples(category or ds.categories[0], split)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert info.value.hint


def test_generated_multi_category(tmp_path):
    root = _generated(tmp_path)
    ds = load_dataset("folder", root)
    assert isinstance(ds, FolderDataset) and isinstance(ds, DatasetReader)
    assert ds.name == "folder" and ds.categories == ["gadget_object", "widget"]
    for cat in ds.categories:
        assert ds.has_masks(cat)
        assert len(ds.samples(cat, "train")) == 2
        test = ds.samples(cat, "test")
        bad = [s for s in test if s.is_anomalous]
        assert len(test) == 5 and len(bad) == 3
        assert [s.defect_type for s in test] == ["good", "good", "bad", "bad", "bad"]
        # the generator alternates <stem>.png and <stem>_mask.png: both forms are matched
        assert {s.mask_path.name for s in bad} == {"bad_000.png", "bad_001_mask.png", "bad_002.png"}
        for s in bad:
            check_sample(s)
    with pytest.raises(DatasetLayoutError, match="several categories"):
        ds.has_masks()


def test_single_category_root_name_and_rename(tmp_path):
    root = _generated(tmp_path) / "widget"
    ds = FolderDataset(root)
    assert ds.categories == ["widget"]
    assert ds.has_masks()
    assert all(s.category == "widget" for s in ds.samples("widget", "test"))
    renamed = FolderDataset(root, category="my_part")
    assert renamed.categories == ["my_part"]
    assert {s.category for s in renamed.samples("my_part", "test")} == {"my_part"}
    with pytest.raises(UnknownNameError):
        FolderDataset(root, categories=["other"])


def test_without_masks_pixel_metrics_are_off(tmp_path):
    root = _generated(tmp_path) / "widget"
    shutil.rmtree(root / "masks")
    ds = FolderDataset(root)
    assert ds.has_masks() is False
    bad = [s for s in ds.samples("widget", "test") if s.is_anomalous]
    assert len(bad) == 3 and all(s.mask_path is None for s in bad)


def test_good_bad_synonyms(tmp_path):
    root = tmp_path / "part"
    _img(root / "good" / "a.png")
    _img(root / "bad" / "b.jpg", 200)
    _img(root / "train" / "good" / "r.png")
    ds = FolderDataset(root)
    assert [(s.image_path.name, s.label) for s in ds.samples("part", "test")] == [
        ("a.png", "normal"),
        ("b.jpg", "anomalous"),
    ]
    assert [s.image_path.name for s in ds.samples("part", "train")] == ["r.png"]
    assert ds.has_masks() is False


def test_no_train_folder_means_no_references(tmp_path):
    root = _generated(tmp_path, cats=("widget",), n_train=0) / "widget"
    ds = FolderDataset(root)
    assert len(ds.samples("widget", "test")) == 5
    _error(ds, str(root / "train" / "normal"), split="train")


def test_both_synonyms_present_is_ambiguous(tmp_path):
    root = tmp_path / "part"
    _img(root / "normal" / "a.png")
    _img(root / "good" / "b.png")
    _error(root, str(root / "normal"), str(root / "good"))


def test_anomalous_without_mask_when_masks_exist(tmp_path):
    root = _generated(tmp_path, cats=("widget",)) / "widget"
    (root / "masks" / "bad_001_mask.png").unlink()
    _error(root, str(root / "anomalous" / "bad_001.png"), "no mask")


def test_orphan_mask(tmp_path):
    root = _generated(tmp_path, cats=("widget",)) / "widget"
    shutil.copy(root / "masks" / "bad_000.png", root / "masks" / "typo_000.png")
    _error(root, str(root / "masks" / "typo_000.png"))


def test_mask_for_normal_image_is_tolerated(tmp_path):
    root = _generated(tmp_path, cats=("widget",)) / "widget"
    _img(root / "masks" / "good_000_mask.png")
    ds = FolderDataset(root)
    normal = [s for s in ds.samples("widget", "test") if not s.is_anomalous]
    assert len(normal) == 2 and all(s.mask_path is None for s in normal)


def test_nested_folders_are_refused(tmp_path):
    root = tmp_path / "part"
    _img(root / "normal" / "a.png")
    _img(root / "anomalous" / "scratch" / "b.png")
    _error(root, str(root / "anomalous" / "scratch"))


def test_empty_test_split(tmp_path):
    root = tmp_path / "part"
    (root / "normal").mkdir(parents=True)
    (root / "anomalous").mkdir()
    _error(root, str(root), "no test images")


def test_root_without_product_folders(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetLayoutError) as info:
        FolderDataset(tmp_path)
    assert str(tmp_path) in str(info.value) and "normal/" in info.value.hint
    with pytest.raises(DatasetLayoutError):
        FolderDataset(tmp_path / "missing")


def test_empty_train_folder(tmp_path):
    root = tmp_path / "part"
    _img(root / "normal" / "a.png")
    (root / "train" / "normal").mkdir(parents=True)
    _error(root, str(root / "train" / "normal"), "no train images", split="train")
