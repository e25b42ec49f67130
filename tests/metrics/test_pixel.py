"""Pixel-level AUROC / AP / F1-max against scikit-learn, memory use, and the undefined-metric policy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from vlmad.metrics import (
    MetricInputError,
    UndefinedMetricError,
    compute_pixel_metrics,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    ranking,
)


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, p_anomalous: float = 0.5) -> np.ndarray:
    """Elliptic defects (1-3 per anomalous image), like MVTec ground truth."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if rng.random() >= p_anomalous:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(1, h / 6), rng.uniform(1, w / 6)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, h // 2, w // 2] = True  # at least one anomalous pixel
    masks[-1, 0, 0] = False  # at least one normal pixel
    return masks


def reference(masks: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    y, s = masks.ravel(), maps.ravel()
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {
        "pixel_auroc": roc_auc_score(y, s),
        "pixel_ap": average_precision_score(y, s),
        "pixel_f1_max": float(f1.max()),
    }


def maps_for(kind: str, rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    noise = rng.normal(size=masks.shape)
    if kind == "continuous32":
        return (noise + 1.5 * masks).astype(np.float32)
    if kind == "continuous64":
        return noise + 1.5 * masks
    if kind == "tied":  # 6 levels: massive ties inside and across the classes
        return np.clip(np.round(noise + masks), -2, 3).astype(np.float32)
    if kind == "softmax-like":  # saturated probabilities: many exact 1.0 and near-0 values in float32
        return (1 / (1 + np.exp(-(4 * noise + 8 * masks - 2)))).astype(np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["continuous32", "continuous64", "tied", "softmax-like"])
def test_matches_sklearn(kind: str) -> None:
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 6, 40, 48)
    maps = maps_for(kind, rng, masks)
    ref = reference(masks, maps)
    got = compute_pixel_metrics(masks, maps)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert pixel_auroc(masks, maps) == got["pixel_auroc"]
    assert pixel_ap(masks, maps) == got["pixel_ap"]
    assert pixel_f1_max(masks, maps) == got["pixel_f1_max"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 17])
def test_chunking_does_not_change_results(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of tied scores straddle chunk boundaries with tiny chunks; every total must be identical."""
    rng = np.random.default_rng(3)
    masks = blob_masks(rng, 3, 20, 20)
    maps = maps_for("tied", rng, masks)
    whole = ranking.pixel_sums(masks, maps)
    unchunked = compute_pixel_metrics(masks, maps)
    monkeypatch.setattr(ranking, "_CHUNK", chunk)
    parts = ranking.pixel_sums(masks, maps)
    assert (parts.u2, parts.n_pos, parts.n_neg) == (whole.u2, whole.n_pos, whole.n_neg)
    assert parts.ap_sum == pytest.approx(whole.ap_sum, rel=1e-12)
    assert parts.f1_max == pytest.approx(whole.f1_max, rel=1e-12)
    chunked = compute_pixel_metrics(masks, maps)
    # against an independent computation (scikit-learn on all pixels at once), not against itself
    for key, value in reference(masks, maps).items():
        assert chunked[key] == pytest.approx(value, abs=1e-9), key
    assert chunked == pytest.approx(unchunked, abs=1e-12)  # AUPRO included: computed before the patch


def test_any_shape_without_aupro() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((2, 1, 9, 11)) < 0.3
    maps = rng.random((2, 1, 9, 11))
    got = compute_pixel_metrics(masks, maps, aupro_variants=())
    assert set(got) == {"pixel_auroc", "pixel_ap", "pixel_f1_max"}
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    with pytest.raises(MetricInputError, match=r"\(N, H, W\)"):
        compute_pixel_metrics(masks, maps)  # AUPRO needs (N, H, W)


def test_mask_and_map_types_agree() -> None:
    rng = np.random.default_rng(1)
    masks = blob_masks(rng, 3, 16, 16)
    maps = maps_for("continuous32", rng, masks)
    ref = compute_pixel_metrics(masks, maps)
    for m, a in [
        (masks.astype(np.uint8), maps),
        (masks.astype(np.float32), maps),
        (masks.astype(np.int32), maps),
        (torch.from_numpy(masks), torch.from_numpy(maps)),
        (torch.from_numpy(masks).float(), torch.from_numpy(maps)),
    ]:
        assert compute_pixel_metrics(m, a) == pytest.approx(ref, abs=1e-12)
    bf16 = torch.from_numpy(maps).bfloat16()
    assert pixel_auroc(masks, bf16) == pytest.approx(
        roc_auc_score(masks.ravel(), bf16.float().numpy().ravel()), abs=1e-12
    )


def test_constant_maps() -> None:
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, 4, 16, 16)
    maps = np.full(masks.shape, 0.25, dtype=np.float32)
    p = masks.mean()
    got = compute_pixel_metrics(masks, maps)
    assert got["pixel_auroc"] == 0.5
    assert got["pixel_ap"] == pytest.approx(p)
    assert got["pixel_f1_max"] == pytest.approx(2 * p / (1 + p))
    assert got["aupro"] == pytest.approx(0.15)  # the diagonal from (0, 0) to (1, 1), averaged over [0, 0.3]


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_ap, pixel_f1_max, compute_pixel_metrics])
def test_all_masks_empty_is_undefined(metric) -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(UndefinedMetricError):
        metric(masks, np.random.default_rng(0).random(masks.shape))


def test_no_normal_pixel() -> None:
    masks = np.ones((2, 8, 8), dtype=bool)
    maps = np.random.default_rng(0).random(masks.shape)
    with pytest.raises(UndefinedMetricError, match="AUROC"):
        pixel_auroc(masks, maps)
    with pytest.raises(UndefinedMetricError):
        compute_pixel_metrics(masks, maps)
    assert pixel_ap(masks, maps) == 1.0


@pytest.mark.parametrize(
    ("masks", "maps", "match"),
    [
        (np.zeros((2, 8, 8)), np.zeros((2, 8, 9)), r"\(2, 8, 8\).*\(2, 8, 9\)"),
        (np.full((1, 4, 4), 0.5), np.zeros((1, 4, 4)), "binary"),
        (np.full((1, 4, 4), 3, dtype=np.uint8), np.zeros((1, 4, 4)), "binary"),
        (np.zeros((1, 4, 4)), np.full((1, 4, 4), np.nan), "NaN"),
    ],
)
def test_bad_inputs(masks, maps, match: str) -> None:
    with pytest.raises(MetricInputError, match=match):
        pixel_auroc(masks, maps)


def test_memory_is_a_few_bytes_per_pixel() -> None:
    """Working memory stays ~5 bytes/pixel for float32 maps (one float32 copy + one bool mask).

    A float64 copy of the maps (8 B/pixel) or an int64 argsort of all pixels (8 B/pixel) would fail this; at
    500 x 518 x 518 pixels the bound means ~1 GB on top of the inputs (the benchmark measures the real RSS).
    numpy reports its buffers to tracemalloc, so the traced peak is the metric's own allocations.
    """
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 16, 256, 256, p_anomalous=0.5)
    maps = maps_for("continuous32", rng, masks)
    n = masks.size
    tracemalloc.start()
    try:
        compute_pixel_metrics(masks, maps)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    anomalous = masks.mean()
    assert anomalous < 0.1
    assert peak / n < 5.5 + 40 * anomalous, f"{peak / n:.2f} bytes per pixel"
