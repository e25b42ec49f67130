"""AUPRO: exact variant vs a brute-force curve, vs anomalib 2.7.0, the legacy200 variant, and edge cases."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import auc

from vlmad.metrics import (
    MetricInputError,
    UndefinedMetricError,
    aupro,
    compute_pixel_metrics,
    ranking,
)
from vlmad_runtime.errors import UnknownNameError

EIGHT = np.ones((3, 3), dtype=bool)
FOUR = ndimage.generate_binary_structure(2, 1)


def regions_of(masks: np.ndarray, structure: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(image index, boolean region mask) for every connected component of every mask."""
    out = []
    for i, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=structure)
        out += [(i, labels == k) for k in range(1, n + 1)]
    return out


def brute_force_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float, structure=EIGHT) -> float:
    """MVTec's definition spelled out: FPR and PRO at every distinct score, integrate, interpolate."""
    regions = regions_of(masks, structure)
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:  # descending thresholds -> non-decreasing FPR
        fpr = np.count_nonzero(normal >= t) / normal.size
        pro = np.mean([np.count_nonzero(maps[i][region] >= t) / region.sum() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(points[:-1], points[1:], strict=True):
        if f1 <= fpr_limit:
            area += (f1 - f0) * (p0 + p1) / 2
        else:
            if f0 < fpr_limit:
                p_lim = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
                area += (fpr_limit - f0) * (p0 + p_lim) / 2
            break
    return area / fpr_limit


def straightforward_legacy200(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """The research repos' 200-step procedure, one threshold at a time (8-connected regions, score > t)."""
    regions = regions_of(masks, EIGHT)
    low, high = maps.min(), maps.max()
    fprs, pros = [], []
    for t in np.arange(low, high, (high - low) / 200):
        predicted = maps > t
        pros.append(np.mean([predicted[i][region].sum() / region.sum() for i, region in regions]))
        fprs.append(np.logical_and(~masks, predicted).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < fpr_limit
    fprs = fprs[keep]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[keep])


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, p_anomalous: float = 0.6) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        if i > 0 and rng.random() >= p_anomalous:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.5, h / 5), rng.uniform(0.5, w / 5)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, h // 2, w // 2] = True
    return masks


def make_case(kind: str, seed: int, n: int = 4, h: int = 14, w: int = 15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, n, h, w)
    noise = rng.normal(size=masks.shape)
    # region-dependent signal so that regions differ in how well they are found
    labels, _ = ndimage.label(masks.reshape(-1, w))
    strength = rng.uniform(0, 2, size=labels.max() + 1)[labels].reshape(masks.shape)
    if kind == "continuous":
        return masks, (noise + strength * masks).astype(np.float32)
    if kind == "continuous64":
        return masks, noise + strength * masks
    if kind == "tied":
        return masks, np.round(noise + strength * masks).astype(np.float32)
    if kind == "binary-scores":
        return masks, (noise + strength * masks > 0.5).astype(np.float32)
    raise AssertionError(kind)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("kind", ["continuous", "continuous64", "tied", "binary-scores"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_brute_force(kind: str, seed: int, fpr_limit: float) -> None:
    masks, maps = make_case(kind, seed)
    expected = brute_force_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_fpr_landing_exactly_on_the_limit() -> None:
    """10 normal pixels with distinct scores: FPR takes the value 0.3 exactly, no interpolation needed."""
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, :2, :3] = True  # 6 anomalous pixels, 10 normal
    maps = np.zeros((1, 4, 4))
    maps[0][~masks[0]] = np.arange(10) / 10
    maps[0][masks[0]] = [0.95, 0.85, 0.75, 0.65, 0.05, 0.0]
    for limit in [0.3, 0.29, 0.31, 0.1, 1.0]:
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(brute_force_aupro(masks, maps, limit), abs=1e-12)


def test_connectivity() -> None:
    """Two diagonal-touching squares: one region with 8-connectivity (default), two with 4."""
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = masks[0, 3:6, 3:6] = True
    maps = np.random.default_rng(4).random(masks.shape)
    maps[0, 1:3, 1:3] += 0.8  # the small square is found, the big one is not
    assert ndimage.label(masks[0], structure=EIGHT)[1] == 1
    assert ndimage.label(masks[0], structure=FOUR)[1] == 2
    eight, four = aupro(masks, maps), aupro(masks, maps, connectivity=4)
    assert eight == pytest.approx(brute_force_aupro(masks, maps, 0.3, EIGHT), abs=1e-12)
    assert four == pytest.approx(brute_force_aupro(masks, maps, 0.3, FOUR), abs=1e-12)
    assert abs(eight - four) > 0.05


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_chunking_does_not_change_aupro(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    masks, maps = make_case("tied", 3)
    whole = aupro(masks, maps)
    monkeypatch.setattr(ranking, "_CHUNK", chunk)
    assert aupro(masks, maps) == pytest.approx(whole, abs=1e-12)


def test_known_values() -> None:
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 4:, :] = True
    perfect = masks + np.random.default_rng(0).random(masks.shape) * 0.5
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert aupro(masks, -perfect) == pytest.approx(0.0)
    constant = np.zeros(masks.shape, dtype=np.float32)
    for limit in [0.3, 0.7]:  # one step from (0, 0) to (1, 1): area limit^2 / 2, normalised by the limit
        assert aupro(masks, constant, fpr_limit=limit) == pytest.approx(limit / 2)


def test_single_image_and_torch_inputs() -> None:
    masks, maps = make_case("continuous", 5, n=1)
    ref = aupro(masks, maps)
    assert aupro(masks[0], maps[0]) == ref
    assert aupro(torch.from_numpy(masks), torch.from_numpy(maps)) == ref
    assert aupro(masks.astype(np.uint8), maps) == ref


def test_compute_pixel_metrics_shares_the_sort() -> None:
    masks, maps = make_case("tied", 6, n=5, h=20, w=20)
    got = compute_pixel_metrics(masks, maps, fpr_limit=0.2, aupro_variants=("exact", "legacy200"))
    assert got["aupro"] == aupro(masks, maps, fpr_limit=0.2)
    assert got["aupro_legacy200"] == aupro(masks, maps, fpr_limit=0.2, variant="legacy200")
    only_legacy = compute_pixel_metrics(masks, maps, aupro_variants=("legacy200",))
    assert "aupro" not in only_legacy and "aupro_legacy200" in only_legacy
    assert only_legacy["pixel_auroc"] == got["pixel_auroc"]


@pytest.mark.parametrize("kind", ["continuous", "continuous64", "tied"])
@pytest.mark.parametrize("seed", [0, 1])
def test_legacy200_matches_straightforward(kind: str, seed: int) -> None:
    masks, maps = make_case(kind, seed, n=5, h=16, w=16)
    expected = straightforward_legacy200(masks, maps)
    assert aupro(masks, maps, variant="legacy200") == pytest.approx(expected, abs=1e-12)


def test_legacy200_differs_from_exact() -> None:
    """The approximation is not the metric: one outlying score coarsens its 200 thresholds, and the min-max
    rescaling stretches whatever FPR range the few surviving points cover to [0, 1]."""
    masks, maps = make_case("continuous", 8, n=6, h=24, w=24)
    close = abs(aupro(masks, maps) - aupro(masks, maps, variant="legacy200"))
    maps[0, 0, 0] = 60.0  # one hot pixel
    exact, legacy = aupro(masks, maps), aupro(masks, maps, variant="legacy200")
    assert abs(exact - legacy) > 0.02 > close


# ------------------------------------------------------------------ edge cases and input checks


@pytest.mark.parametrize("variant", ["exact", "legacy200"])
def test_no_region_is_undefined(variant: str) -> None:
    masks = np.zeros((3, 8, 8), dtype=bool)
    with pytest.raises(UndefinedMetricError, match="no anomalous region"):
        aupro(masks, np.random.default_rng(0).random(masks.shape), variant=variant)


@pytest.mark.parametrize("variant", ["exact", "legacy200"])
def test_no_normal_pixel_is_undefined(variant: str) -> None:
    masks = np.ones((2, 4, 4), dtype=bool)
    with pytest.raises(UndefinedMetricError, match="normal pixel"):
        aupro(masks, np.random.default_rng(0).random(masks.shape), variant=variant)


def test_legacy200_undefined_cases() -> None:
    masks, maps = make_case("continuous", 0)
    with pytest.raises(UndefinedMetricError, match="constant"):
        aupro(masks, np.zeros_like(maps), variant="legacy200")
    binary = (maps > 0).astype(np.float32)  # every threshold gives the same FPR
    with pytest.raises(UndefinedMetricError, match="spread"):
        aupro(masks, binary, variant="legacy200")
    assert 0.0 <= aupro(masks, binary) <= 1.0  # the exact variant is defined for both


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fpr_limit": 0.0}, MetricInputError, "fpr_limit"),
        ({"fpr_limit": 1.5}, MetricInputError, "fpr_limit"),
        ({"fpr_limit": float("nan")}, MetricInputError, "fpr_limit"),
        ({"fpr_limit": "0.3x"}, MetricInputError, "fpr_limit"),
        ({"variant": "binned"}, UnknownNameError, "binned"),
        ({"connectivity": 6}, MetricInputError, "connectivity"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    masks, maps = make_case("continuous", 0)
    with pytest.raises(error, match=match):
        aupro(masks, maps, **kwargs)


def test_bad_shapes() -> None:
    masks, maps = make_case("continuous", 0)
    with pytest.raises(MetricInputError, match="shape"):
        aupro(masks, maps[:, :-1])
    with pytest.raises(MetricInputError, match=r"\(N, H, W\)"):
        aupro(masks[:, None], maps[:, None])


# ------------------------------------------------------------------ anomalib 2.7.0 oracle

ORACLE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from anomalib.metrics.aupro import _AUPRO
    from skimage import measure
    from sklearn.metrics import auc

    def legacy_with_skimage(masks, maps, limit):
        # the research repos' loop, with skimage's default (full) connectivity for the regions
        regions = [(i, r.coords) for i, m in enumerate(masks) for r in measure.regionprops(measure.label(m))]
        low, high = maps.min(), maps.max()
        fprs, pros = [], []
        for t in np.arange(low, high, (high - low) / 200):
            predicted = maps > t
            pros.append(np.mean([predicted[i][c[:, 0], c[:, 1]].sum() / len(c) for i, c in regions]))
            fprs.append(np.logical_and(masks == 0, predicted).sum() / (masks == 0).sum())
        fprs, pros = np.array(fprs), np.array(pros)
        keep = fprs < limit
        f = fprs[keep]
        f = (f - f.min()) / (f.max() - f.min())
        return float(auc(f, pros[keep]))

    out = {}
    for case in json.loads(sys.argv[1]):
        masks = np.load(case["masks"])
        maps = np.load(case["maps"])
        metric = _AUPRO(fpr_limit=case["fpr_limit"])
        metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
        out[case["name"]] = {
            "anomalib": float(metric.compute()),
            "legacy_skimage": legacy_with_skimage(masks.astype(np.uint8), maps, case["fpr_limit"]),
        }
    print(json.dumps(out))
    """
)


def oracle_cases() -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    cases = {}
    for seed in range(3):
        masks, maps = make_case("continuous", seed, n=6, h=48, w=40)
        cases[f"continuous-{seed}"] = (masks, maps, 0.3)
    masks, maps = make_case("tied", 11, n=6, h=48, w=40)
    cases["tied"] = (masks, maps, 0.3)
    masks, maps = make_case("continuous", 12, n=8, h=64, w=64)
    cases["limit-0.1"] = (masks, maps, 0.1)
    # diagonal-touching defects: anomalib's cv2 labelling must agree with vlmad's 8-connectivity default
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, 4:8, 4:8] = masks[0, 8:14, 8:14] = masks[1, 20:22, 3:9] = True
    maps = np.random.default_rng(9).random(masks.shape).astype(np.float32)
    maps[0, 4:8, 4:8] += 0.7
    cases["diagonal"] = (masks, maps, 0.3)
    return cases


@pytest.mark.oracle
def test_matches_anomalib_aupro(oracle_python: str, tmp_path: Path) -> None:
    """vlmad's exact AUPRO equals anomalib 2.7.0's ``AUPRO`` (its ``_AUPRO`` core, identical computation).

    anomalib 2.7.0 follows MVTec's definition as vlmad does: one global sort, the last point of every run of
    tied scores, FPR over all normal pixels of the class, PRO averaged over all 8-connected regions (cv2),
    linear interpolation at the limit and normalisation by it. The only difference is arithmetic: anomalib
    casts the maps to float32 and keeps the curve and its trapezoid in float32, so agreement is ~1e-8
    (measured; 1e-6 asserted) rather than 1e-12 (the cases use float32 maps so that both see the same ties).
    Where the definitions part: anomalib returns 0.0 when there is no region or no normal pixel, vlmad raises
    UndefinedMetricError (never a silent number).
    The research repos' legacy loop is also run with skimage's default labelling to pin down its connectivity.
    """
    cases = oracle_cases()
    spec = []
    for name, (masks, maps, limit) in cases.items():
        np.save(tmp_path / f"{name}-masks.npy", masks)
        np.save(tmp_path / f"{name}-maps.npy", maps)
        spec.append(
            {
                "name": name,
                "masks": str(tmp_path / f"{name}-masks.npy"),
                "maps": str(tmp_path / f"{name}-maps.npy"),
                "fpr_limit": limit,
            }
        )
    script = tmp_path / "oracle_aupro.py"
    script.write_text(ORACLE_SCRIPT)
    proc = subprocess.run([oracle_python, str(script), json.dumps(spec)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (masks, maps, limit) in cases.items():
        ours = aupro(masks, maps, fpr_limit=limit)
        assert ours == pytest.approx(results[name]["anomalib"], abs=1e-6), name
        if name != "diagonal":
            legacy = aupro(masks, maps, fpr_limit=limit, variant="legacy200")
            assert legacy == pytest.approx(results[name]["legacy_skimage"], abs=1e-9), name
    # on the diagonal case 4-connectivity would disagree with anomalib: the default is the right one
    masks, maps, _ = cases["diagonal"]
    assert abs(aupro(masks, maps, connectivity=4) - results["diagonal"]["anomalib"]) > 1e-3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
