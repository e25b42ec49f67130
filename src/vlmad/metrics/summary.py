"""Per-class metric dictionaries and the macro average over classes.

Every number in a vlmad table comes from these two functions, so the names of the keys are the names used in
reports: ``image_auroc``, ``image_ap``, ``image_f1_max``, ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``,
``aupro`` (exact) and ``aupro_legacy200`` (only when asked for; never under the name ``aupro``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._common import MetricInputError, UndefinedMetricError
from .aupro import _aupro_legacy, check_aupro_args, exact_pixel_stats, stack_maps
from .ranking import image_sums, pixel_inputs, scan, split_sorted

__all__ = ["IMAGE_METRICS", "PIXEL_METRICS", "compute_image_metrics", "compute_pixel_metrics", "macro_mean"]

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def compute_image_metrics(labels: Any, scores: Any) -> dict[str, float]:
    """Image AUROC, AP and F1-max of one class from one sort; raises UndefinedMetricError like each metric."""
    sums = image_sums(labels, scores)
    return {
        "image_auroc": sums.auroc("image"),
        "image_ap": sums.ap("image"),
        "image_f1_max": sums.f1("image"),
    }


def compute_pixel_metrics(
    masks: Any,
    maps: Any,
    fpr_limit: float = 0.3,
    aupro_variants: Sequence[str] = ("exact",),
    *,
    connectivity: int = 8,
) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max and AUPRO of one class, sharing one sort of the maps.

    ``aupro_variants`` selects ``"exact"`` (key ``aupro``) and/or ``"legacy200"`` (key ``aupro_legacy200``);
    an empty sequence skips AUPRO (then masks/maps may have any shape).
    """
    variants = tuple(aupro_variants)
    if isinstance(aupro_variants, str):
        raise MetricInputError("aupro_variants must be a sequence of names, e.g. ('exact',)")
    limit = check_aupro_args(fpr_limit, variants, connectivity)
    out: dict[str, float] = {}
    m, a = stack_maps(masks, maps) if variants else pixel_inputs(masks, maps)
    if "exact" in variants:
        sums, out["aupro"] = exact_pixel_stats(m, a, limit, connectivity)
    else:
        sums = scan(*split_sorted(m, a))
    metrics = {
        "pixel_auroc": sums.auroc("pixel"),
        "pixel_ap": sums.ap("pixel"),
        "pixel_f1_max": sums.f1("pixel"),
    }
    if "legacy200" in variants:
        out["aupro_legacy200"] = _aupro_legacy(m, a, limit, connectivity)
    return {**metrics, **out}


def macro_mean(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean over classes of every metric (the benchmarks' protocol: each class counts once).

    Every class must report the same metrics: averaging a metric over a subset of classes would silently
    change what the number means, so a missing key (or a NaN value) is an error naming the class.
    """
    if not per_class:
        raise MetricInputError("macro_mean needs at least one class")
    names = list(per_class)
    keys = list(per_class[names[0]])
    for name in names:
        if set(per_class[name]) != set(keys):
            raise MetricInputError(
                f"class {name!r} reports metrics {sorted(per_class[name])} but class {names[0]!r} reports "
                f"{sorted(keys)}",
                "compute the same metrics for every class before averaging",
            )
        for key, value in per_class[name].items():
            if not math.isfinite(float(value)):
                raise UndefinedMetricError(f"{key} of class {name!r} is {value}; cannot average it")
    return {key: math.fsum(float(per_class[name][key]) for name in names) / len(names) for key in keys}
