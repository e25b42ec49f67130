"""VisA reader, raw (split_csv) and converted (MVTec-like) layouts."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.data import (
    VISA_CATEGORIES,
    DatasetReader,
    VisA,
    check_sample,
    load_dataset,
    load_mask,
    make_dataset,
)
from vlmad_runtime.errors import DatasetLayoutError, UnknownNameError

CATS = ("candle_object", "fryum")


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("visa") / "raw", "visa", CATS, n_train=3, n_test_good=2, n_test_bad=4)


@pytest.fixture(scope="module")
def converted_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("visa") / "conv"
    return make_dataset(out, "visa-converted", CATS, n_train=3, n_test_good=2, n_test_bad=4)


def _small_raw(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "raw", "visa", ("obj",), n_train=1, n_test_good=1, n_test_bad=2, size=32)


def _rows(root: Path) -> list[list[str]]:
    with (root / "split_csv" / "1cls.csv").open(newline="") as fh:
        return list(csv.reader(fh))


def _write_rows(root: Path, rows: list[list[str]]) -> None:
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _csv_error(root: Path, *fragments: str, split: str = "test") -> str:
    with pytest.raises(DatasetLayoutError) as info:
        VisA(root).samples("obj", split)
    msg = str(info.value)
    for fragment in fragments:
        assert fragment in msg, msg
    assert info.value.hint
    return msg


def test_official_objects():
    assert len(VISA_CATEGORIES) == 12
    assert {"candle", "pcb4", "pipe_fryum", "macaroni2"} <= set(VISA_CATEGORIES)


@pytest.mark.parametrize("which", ["raw", "converted"])
def test_counts_labels_masks(raw_root, converted_root, which):
    root = raw_root if which == "raw" else converted_root
    ds = VisA(root)
    assert isinstance(ds, DatasetReader)
    assert ds.layout == which and ds.name == "visa"
    assert ds.categories == sorted(CATS)
    for cat in CATS:
        assert ds.has_masks(cat)
        train = ds.samples(cat, "train")
        assert len(train) == 3 and all(s.label == "normal" for s in train)
        test = ds.samples(cat, "test")
        bad = [s for s in test if s.is_anomalous]
        assert len(test) == 6 and len(bad) == 4
        assert {s.defect_type for s in test} == {"good", "bad"}
        for s in test:
            assert (s.mask_path is not None) == s.is_anomalous
        for s in bad:
            check_sample(s)
            raw = np.asarray(Image.open(s.mask_path))
            assert set(np.unique(raw)) <= {0, 1, 2, 3, 4} and raw.max() > 0  # label values, not 255
            np.testing.assert_array_equal(load_mask(s.mask_path), raw != 0)


def test_raw_paths_follow_visa_layout(raw_root):
    bad = [s for s in VisA(raw_root).samples("fryum", "test") if s.is_anomalous]
    assert bad[0].image_path == raw_root / "fryum" / "Data" / "Images" / "Anomaly" / "000.JPG"
    assert bad[0].mask_path == raw_root / "fryum" / "Data" / "Masks" / "Anomaly" / "000.png"


def test_converted_masks_have_no_suffix(converted_root):
    bad = [s for s in VisA(converted_root).samples("fryum", "test") if s.is_anomalous]
    assert bad[0].mask_path == converted_root / "fryum" / "ground_truth" / "bad" / f"{bad[0].image_path.stem}.png"


def test_forced_layout_and_load_dataset(raw_root, tmp_path):
    assert load_dataset("visa", raw_root).layout == "raw"
    with pytest.raises(DatasetLayoutError):
        VisA(raw_root, layout="converted")  # raw root has no train/test folders
    with pytest.raises(UnknownNameError):
        VisA(raw_root, layout="mvtec")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError) as info:
        VisA(raw_root, ["pcb1"])
    assert "fryum" in info.value.hint


# --- raw layout errors ---


def test_missing_csv_with_raw_object_folders(tmp_path):
    root = _small_raw(tmp_path)
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(DatasetLayoutError) as info:
        VisA(root)
    assert str(root / "split_csv" / "1cls.csv") in str(info.value)


def test_missing_csv_columns(tmp_path):
    root = _small_raw(tmp_path)
    rows = _rows(root)
    _write_rows(root, [row[:4] for row in rows])  # drop "mask"
    with pytest.raises(DatasetLayoutError) as info:
        VisA(root)
    assert str(root / "split_csv" / "1cls.csv") in str(info.value) and "mask" in str(info.value)


def test_empty_csv(tmp_path):
    root = _small_raw(tmp_path)
    _write_rows(root, [_rows(root)[0]])
    with pytest.raises(DatasetLayoutError, match="lists no images"):
        VisA(root)


def test_image_listed_but_missing(tmp_path):
    root = _small_raw(tmp_path)
    rel = _rows(root)[-1][3]
    (root / rel).unlink()
    _csv_error(root, str(root / rel), "line")


def test_mask_listed_but_missing(tmp_path):
    root = _small_raw(tmp_path)
    rel = _rows(root)[-1][4]
    (root / rel).unlink()
    _csv_error(root, str(root / rel))


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [(2, "defect", "label"), (1, "val", "split"), (4, "", "no mask")],
)
def test_bad_rows(tmp_path, column, value, fragment):
    root = _small_raw(tmp_path)
    rows = _rows(root)
    rows[-1][column] = value
    _write_rows(root, rows)
    with pytest.raises(DatasetLayoutError) as info:
        VisA(root)
    assert fragment in str(info.value) and str(root / "split_csv" / "1cls.csv") in str(info.value)


def test_normal_row_with_mask(tmp_path):
    root = _small_raw(tmp_path)
    rows = _rows(root)
    rows[1][4] = rows[-1][4]
    _write_rows(root, rows)
    with pytest.raises(DatasetLayoutError, match="normal image"):
        VisA(root)


def test_duplicate_row(tmp_path):
    root = _small_raw(tmp_path)
    rows = _rows(root)
    _write_rows(root, [*rows, rows[-1]])
    _csv_error(root, str(root / rows[-1][3]), "already listed")


def test_csv_with_bom_and_blank_lines(tmp_path):
    root = _small_raw(tmp_path)
    path = root / "split_csv" / "1cls.csv"
    path.write_text("\ufeff" + path.read_text() + "\n,,,,\n", encoding="utf-8")
    assert len(VisA(root).samples("obj", "test")) == 3


# --- converted layout errors ---


def _small_converted(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "conv", "visa-converted", ("obj",), n_train=1, n_test_good=1, n_test_bad=2, size=32)


def test_converted_missing_mask(tmp_path):
    root = _small_converted(tmp_path)
    (root / "obj" / "ground_truth" / "bad" / "001.png").unlink()
    _csv_error(root, str(root / "obj" / "test" / "bad" / "001.JPG"))


def test_converted_with_mvtec_style_mask_names_is_an_error(tmp_path):
    root = _small_converted(tmp_path)
    gt = root / "obj" / "ground_truth" / "bad"
    for mask in list(gt.iterdir()):
        mask.rename(gt / f"{mask.stem}_mask.png")
    _csv_error(root, "000", "no mask")


def test_converted_missing_ground_truth(tmp_path):
    root = _small_converted(tmp_path)
    shutil.rmtree(root / "obj" / "ground_truth")
    _csv_error(root, str(root / "obj" / "ground_truth"))


def test_nothing_visa_like(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetLayoutError) as info:
        VisA(tmp_path)
    assert str(tmp_path) in str(info.value) and "1cls.csv" in info.value.hint


def test_object_without_train_rows(tmp_path):
    root = _small_raw(tmp_path)
    _write_rows(root, [row for row in _rows(root) if row[1] != "train"])
    ds = VisA(root)
    assert len(ds.samples("obj", "test")) == 3
    _csv_error(root, str(root / "split_csv" / "1cls.csv"), "no train images", split="train")


# --- the split file must not choose files outside the dataset root (issue 15 item 10) ---


def _escape_cases(outside: Path) -> list[tuple[int, str, str]]:
    """(column, value, expected fragment): image column 3, mask column 4."""
    return [
        (3, str(outside), "is absolute"),
        (3, "../outside.png", "contains '..'"),
        (3, "obj/Data/../../../outside.png", "contains '..'"),
        (3, "obj\\..\\..\\outside.png", "contains '..'"),
        (3, "C:\\data\\outside.png", "is absolute"),
        (3, "C:outside.png", "is absolute"),
        (3, "\\\\server\\share\\outside.png", "is absolute"),
        (4, str(outside), "is absolute"),
        (4, "obj/../../outside.png", "contains '..'"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_csv_paths_outside_the_root_are_refused_with_the_line(tmp_path, case):
    """Before: an absolute path or '../' in 1cls.csv was read (here: a real image next to the dataset)."""
    root = _small_raw(tmp_path)
    outside = tmp_path / "outside.png"
    outside.write_bytes((root / _rows(root)[-1][3]).read_bytes())
    column, value, fragment = _escape_cases(outside)[case]
    rows = _rows(root)
    line = len(rows)  # the last row (an anomalous test image with a mask); line numbers count the header
    rows[-1][column] = value
    _write_rows(root, rows)
    with pytest.raises(DatasetLayoutError) as info:
        VisA(root)
    msg = str(info.value)
    assert f"1cls.csv, line {line}:" in msg and fragment in msg and repr(value) in msg
    assert "relative to the dataset root" in info.value.hint


def test_dots_inside_names_are_not_parent_references(tmp_path):
    root = _small_raw(tmp_path)
    rows = _rows(root)
    src = root / rows[-1][3]
    renamed = src.with_name("a..b" + src.suffix)
    src.rename(renamed)
    rows[-1][3] = str(renamed.relative_to(root))
    _write_rows(root, rows)
    assert renamed in [s.image_path for s in VisA(root).samples("obj", "test")]
