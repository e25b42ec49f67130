"""AUPRO: area under the per-region-overlap curve up to a false-positive-rate limit.

Definition (MVTec AD, Bergmann et al.; the default ``variant="exact"``):

* regions = connected components of each ground-truth mask, **8-connected** by default. This is what
  MVTec's published evaluation code does (``scipy.ndimage.label`` with ``structure=np.ones((3, 3))``), what
  anomalib 2.7.0 does (``cv2.connectedComponents``, default connectivity 8) and what the research repos'
  ``skimage.measure.label`` does (full connectivity). ``connectivity=4`` is available for comparisons.
* at a threshold ``t`` (pixels with score >= t are predicted anomalous): FPR = predicted-anomalous normal
  pixels / all normal pixels of the class; PRO = mean over all regions of the class of the fraction of the
  region's pixels predicted anomalous;
* the curve through the points at every distinct score (plus the origin) is integrated with the trapezoid
  rule from FPR 0 to ``fpr_limit``, the last segment linearly interpolated at the limit, and divided by
  ``fpr_limit``.

How it is computed exactly without materialising the curve: the curve only moves right at normal scores, so
its area is a sum over normal scores ``v`` of ``(#normal == v) / n_normal * (PRO(> v) + PRO(>= v)) / 2``.
Exchanging the sums, every anomalous pixel ``p`` (weight ``w_p = 1 / area(region of p)``) contributes
``w_p`` times the number of normal scores below (and not above) its own score that lie in the integrated FPR
range, which two ``searchsorted`` calls into the sorted normal scores give. The single segment crossing the
limit is added separately. Cost: one sort of the normal scores, one argsort of the anomalous scores,
O(P log P) overall; memory ~ 4 bytes per normal pixel + 20 bytes per anomalous pixel (float32 maps) on top
of the inputs.

``variant="legacy200"`` reproduces the research repos' approximation (APRIL-GAN / AnomalyCLIP
``cal_pro_score``, itself from CFlow-AD): thresholds ``np.arange(min, max, (max - min) / 200)`` of the
class's maps, predicted anomalous means ``score > t``, PRO = mean over regions, FPR over normal pixels, keep
points with FPR < limit, min-max rescale those FPRs to [0, 1], trapezoid area (no division by the limit). It
exists only to compare with published tables and is never the default.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from vlmad_runtime.errors import UnknownNameError

from ._common import MetricInputError, UndefinedMetricError
from .ranking import RankSums, pixel_inputs, scan

__all__ = ["aupro", "AUPRO_VARIANTS"]

AUPRO_VARIANTS = ("exact", "legacy200")


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise MetricInputError(f"connectivity must be 4 or 8, got {connectivity!r}")


def stack_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    m, a = pixel_inputs(masks, maps)
    if m.ndim == 2:
        m, a = m[None], a[None]
    if m.ndim != 3:
        raise MetricInputError(
            f"AUPRO needs masks/maps of shape (N, H, W) or (H, W), got {tuple(m.shape)}",
            "squeeze the channel axis of (N, 1, H, W) inputs",
        )
    return m, a


def _undefined_checks(n_regions: int, n_normal: int) -> None:
    if n_regions == 0:
        raise UndefinedMetricError(
            "AUPRO is undefined: the ground-truth masks contain no anomalous region",
            "AUPRO needs at least one anomalous pixel in the class",
        )
    if n_normal == 0:
        raise UndefinedMetricError(
            "AUPRO is undefined: there is no normal pixel, so the false positive rate has no denominator",
            "AUPRO needs at least one normal pixel in the class",
        )


def _regions(masks: np.ndarray, maps: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Anomalous scores sorted ascending, their aligned weights 1/area(region), and the number of regions."""
    structure = _structure(connectivity)
    n_pos = int(np.count_nonzero(masks))
    scores = np.empty(n_pos, dtype=maps.dtype)
    weights = np.empty(n_pos, dtype=np.float64)
    offset = n_regions = 0
    for mask, amap in zip(masks, maps, strict=True):
        if not mask.any():
            continue
        labels, n = ndimage.label(mask, structure=structure)
        inv_area = np.zeros(n + 1, dtype=np.float64)
        inv_area[1:] = 1.0 / np.bincount(labels.ravel(), minlength=n + 1)[1:]
        k = int(np.count_nonzero(mask))
        scores[offset : offset + k] = amap[mask]
        weights[offset : offset + k] = inv_area[labels[mask]]
        offset += k
        n_regions += n
    order = np.argsort(scores)
    return scores[order], weights[order], n_regions


def exact_pixel_stats(
    masks: np.ndarray, maps: np.ndarray, fpr_limit: float, connectivity: int
) -> tuple[RankSums, float]:
    """Exact AUPRO plus the rank sums of the same sort (pixel AUROC / AP / F1-max come for free)."""
    pos, weights, n_regions = _regions(masks, maps, connectivity)
    neg = maps[~masks]
    neg.sort()
    n_neg = int(neg.size)
    _undefined_checks(n_regions, n_neg)

    # the cut: the largest normal score whose inclusion pushes the FPR above the limit (None if it never does)
    q = math.floor(fpr_limit * n_neg) + 1
    cut, lo, hi = None, 0, 0
    if q <= n_neg:
        cut = neg[n_neg - q]
        lo = int(np.searchsorted(neg, cut, "left"))
        hi = int(np.searchsorted(neg, cut, "right"))
    sums = scan(pos, neg, weights=weights, cut=cut, cut_hi=hi)
    area = sums.pro_sum / (2.0 * n_regions * n_neg)  # all segments entirely below the limit
    if cut is not None:  # the segment that crosses the limit, interpolated linearly
        f0, f1 = (n_neg - hi) / n_neg, (n_neg - lo) / n_neg
        p0, p1 = sums.w_gt_cut / n_regions, sums.w_ge_cut / n_regions
        run = min(max(fpr_limit - f0, 0.0), f1 - f0)
        p_lim = p0 + (p1 - p0) * run / (f1 - f0)
        area += run * (p0 + p_lim) / 2.0
    return sums, float(area / fpr_limit)


def _aupro_legacy(
    masks: np.ndarray, maps: np.ndarray, fpr_limit: float, connectivity: int, max_step: int = 200
) -> float:
    low, high = maps.min(), maps.max()  # numpy scalars in the maps' dtype, as in the reference code
    if low == high:
        raise UndefinedMetricError(
            "legacy200 AUPRO is undefined for constant maps (the reference code's threshold step is zero)",
            "use variant='exact', which is defined for constant maps",
        )
    thresholds = np.arange(low, high, (high - low) / max_step)
    n_t = thresholds.size
    structure = _structure(connectivity)
    # per pixel: k = number of thresholds strictly below its score, i.e. it is "> t_j" exactly for j < k
    normal_hist = np.zeros(n_t + 1, dtype=np.int64)
    region_hist = np.zeros(n_t + 1, dtype=np.float64)
    n_regions = n_normal = 0
    for mask, amap in zip(masks, maps, strict=True):
        normal = amap[~mask]
        n_normal += normal.size
        normal_hist += np.bincount(np.searchsorted(thresholds, normal, "left"), minlength=n_t + 1)
        if mask.any():
            labels, n = ndimage.label(mask, structure=structure)
            inv_area = np.zeros(n + 1, dtype=np.float64)
            inv_area[1:] = 1.0 / np.bincount(labels.ravel(), minlength=n + 1)[1:]
            k = np.searchsorted(thresholds, amap[mask], "left")
            region_hist += np.bincount(k, weights=inv_area[labels[mask]], minlength=n_t + 1)
            n_regions += n
    _undefined_checks(n_regions, n_normal)
    above_normal = np.cumsum(normal_hist[::-1])[::-1][1:]  # index j: pixels with k > j
    above_region = np.cumsum(region_hist[::-1])[::-1][1:]
    fprs = above_normal / n_normal
    pros = above_region / n_regions
    keep = fprs < fpr_limit
    fprs, pros = fprs[keep], pros[keep]
    if fprs.size < 2 or fprs.max() == fprs.min():
        raise UndefinedMetricError(
            f"legacy200 AUPRO is undefined here: {fprs.size} threshold(s) with FPR < {fpr_limit} and no "
            "spread of FPR among them (the reference code's min-max rescaling divides by zero)",
            "use variant='exact'",
        )
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    # FPR falls as the threshold rises: integrate over increasing FPR
    fprs, pros = fprs[::-1], pros[::-1]
    return float(np.sum(np.diff(fprs) * (pros[1:] + pros[:-1]) / 2.0))


def aupro(
    masks: Any,
    maps: Any,
    fpr_limit: float = 0.3,
    variant: str = "exact",
    *,
    connectivity: int = 8,
) -> float:
    """AUPRO of one class: masks (N, H, W) bool or 0/1, maps (N, H, W) float (numpy or torch).

    ``variant="exact"`` (default) is MVTec AD's definition evaluated at every distinct score;
    ``"legacy200"`` is the research repos' 200-threshold approximation (see the module docstring). Raises
    :class:`UndefinedMetricError` without an anomalous region or without a normal pixel.
    """
    limit = check_aupro_args(fpr_limit, (variant,), connectivity)
    m, a = stack_maps(masks, maps)
    if variant == "exact":
        return exact_pixel_stats(m, a, limit, connectivity)[1]
    return _aupro_legacy(m, a, limit, connectivity)


def check_aupro_args(fpr_limit: Any, variants: tuple[str, ...], connectivity: int) -> float:
    """Validate the cheap arguments before any heavy work; returns the limit as a float."""
    try:
        limit = float(fpr_limit)
    except (TypeError, ValueError):
        limit = math.nan
    if not 0.0 < limit <= 1.0:
        raise MetricInputError(f"fpr_limit must be in (0, 1], got {fpr_limit!r}")
    for variant in variants:
        if variant not in AUPRO_VARIANTS:
            raise UnknownNameError(f"unknown AUPRO variant {variant!r}", f"choose one of {', '.join(AUPRO_VARIANTS)}")
    _structure(connectivity)
    return limit
