"""vlmad_runtime.deploy: strict numbers, old formats refused with a recalibrate hint, field-by-field matching;
vlmad_runtime.drawing: fixed scales, colour bar, masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmad_runtime.deploy import (
    FORMAT_VERSION,
    DeployMismatchError,
    fingerprint_differences,
    load_deploy,
    validate_deploy,
)
from vlmad_runtime.drawing import MapScale, QcItem, colorize, defect_mask, heatmap_with_bar, mask_contour, qc_panel
from vlmad_runtime.errors import VlmadError

FP = {
    "method": "winclip",
    "model": "m",
    "shots": 0,
    "reference_fingerprint": None,
    "class_name": "bottle",
    "precision": "fp32",
    "scales": [2, 3],
}


def record(**over) -> dict:
    base = {
        "format": FORMAT_VERSION,
        "threshold": 0.5,
        "method": "winclip",
        "class_name": "bottle",
        "expected_false_alarm_rate": 0.1,
        "calibration": {"mode": "normal-quantile", "n_images": 9},
        "fingerprint": dict(FP),
        "pixel": {"map_scale": [0.1, 0.9], "pixel_threshold": 0.7, "pixel_fp_rate": 0.01, "n_images": 9},
        "detector": {"method": "winclip"},
        "created": "2026-01-01T00:00:00+00:00",
        "vlmad_version": "0.2.0",
    }
    base.update(over)
    return base


@pytest.mark.parametrize("bad", [True, False, "0.5", None, [0.5], float("nan"), float("inf")])
def test_threshold_must_be_a_finite_json_number(bad):
    with pytest.raises(VlmadError, match="threshold") as err:
        validate_deploy(record(threshold=bad))
    assert err.value.hint


def test_bool_and_string_refused_from_a_file(tmp_path):
    for bad in ("true", '"0.5"'):
        text = json.dumps(record()).replace('"threshold": 0.5', f'"threshold": {bad}')
        (tmp_path / "d.json").write_text(text)
        with pytest.raises(VlmadError, match="must be a JSON number"):
            load_deploy(tmp_path / "d.json")
    (tmp_path / "d.json").write_text(json.dumps(record(threshold=1)))
    assert load_deploy(tmp_path / "d.json").threshold == 1.0  # an integer is a JSON number


@pytest.mark.parametrize(
    "old", [{"threshold": 0.7}, {k: v for k, v in record().items() if k != "format"}, record(format=1)]
)
def test_older_deploy_files_say_how_to_recalibrate(old):
    with pytest.raises(VlmadError, match="format") as err:
        validate_deploy(old)
    assert "vlmad calibrate" in err.value.hint


def test_pixel_block_validated():
    assert validate_deploy(record(pixel=None)).pixel is None
    dep = validate_deploy(record())
    assert dep.pixel.map_scale == (0.1, 0.9) and dep.pixel.pixel_threshold == 0.7
    for bad in (
        {"map_scale": [0.9, 0.1], "pixel_threshold": 0.5, "pixel_fp_rate": 0.01},
        {"map_scale": [0.1, 0.9], "pixel_threshold": "0.5", "pixel_fp_rate": 0.01},
        {"map_scale": [0.1], "pixel_threshold": 0.5, "pixel_fp_rate": 0.01},
    ):
        with pytest.raises(VlmadError, match="pixel"):
            validate_deploy(record(pixel=bad))


def test_every_differing_field_is_named_with_the_recalibrate_command():
    dep = validate_deploy(record())
    assert dep.check({**FP, "scales": (2, 3)}) == []  # tuple vs list: same JSON value
    running = {**FP, "shots": 4, "reference_fingerprint": "ab12", "precision": "int8", "heads": "h"}
    with pytest.raises(DeployMismatchError) as err:
        dep.check(running)
    assert [d[0] for d in err.value.differences] == ["precision", "reference_fingerprint", "shots", "heads"]
    for name in ("shots", "reference_fingerprint", "precision", "heads"):
        assert name in err.value.message
    assert "vlmad calibrate" in err.value.hint and "--force-deploy" in err.value.hint
    assert dep.check(running, force=True) == err.value.differences
    assert fingerprint_differences({"a": 1}, {"a": 1.0}) == []


def test_decide_never_turns_a_non_finite_score_into_a_decision():
    dep = validate_deploy(record())
    assert dep.decide(0.5) == "anomalous" and dep.decide(0.49) == "normal"
    with pytest.raises(VlmadError, match="non-finite"):
        dep.decide(float("nan"))


def test_fixed_scale_colours_do_not_depend_on_the_other_pixels():
    """Per-image min-max would paint a flat normal map's small bump red; a fixed scale keeps it cool."""
    calm = np.full((8, 8), 0.2, np.float32)
    calm[0, 0] = 0.25
    hot = np.full((8, 8), 0.2, np.float32)
    hot[0, 0] = 0.9
    assert colorize(calm)[0, 0].tolist() == colorize(hot)[0, 0].tolist()  # the per-image bug
    fixed_calm, fixed_hot = colorize(calm, 0.2, 0.9), colorize(hot, 0.2, 0.9)
    assert fixed_calm[1, 1].tolist() == fixed_hot[1, 1].tolist()
    assert fixed_calm[0, 0, 0] < fixed_hot[0, 0, 0] and fixed_hot[0, 0, 0] > 120  # red channel


def test_mask_contour_and_panels():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True
    edge = mask_contour(mask)
    assert edge.sum() == 2 * 4 + 2 * 5 - 4 and not edge[3, 4] and edge[2, 3]
    amap = np.zeros((16, 16), np.float32)
    amap[4:8, 4:8] = 1.0
    img = Image.new("RGB", (32, 32), (128, 128, 128))
    got = defect_mask(amap, 0.5, img.size)
    assert got.shape == (32, 32) and 0.05 < got.mean() < 0.12
    scale = MapScale(0.0, 1.0, "test")
    bar = heatmap_with_bar(img, amap, scale, threshold=0.5, mask=got)
    assert bar.width > img.width and bar.height == img.height
    panel = qc_panel(QcItem(img, amap, 0.8, "anomalous", 0.6, 0.5, gt_mask=got), scale, height=64)
    assert panel.width > 4 * 64  # original, heatmap + bar, predicted mask, ground truth
