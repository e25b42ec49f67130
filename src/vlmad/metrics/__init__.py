"""Evaluation metrics: image-level (AC) and pixel-level (AS) anomaly detection, one implementation for all.

Policy for undefined metrics (no anomalous sample, no normal sample, no anomalous region): raise
:class:`UndefinedMetricError` (a :class:`vlmad_runtime.errors.VlmadError` and a ``ValueError``); no metric returns
NaN. Inputs are numpy arrays or torch tensors; ground truth is bool or 0/1, scores are finite reals.
"""

from ._common import MetricInputError, UndefinedMetricError
from .aupro import AUPRO_VARIANTS, aupro
from .ranking import image_ap, image_auroc, image_f1_max, pixel_ap, pixel_auroc, pixel_f1_max
from .summary import IMAGE_METRICS, PIXEL_METRICS, compute_image_metrics, compute_pixel_metrics, macro_mean

__all__ = [
    "AUPRO_VARIANTS",
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "MetricInputError",
    "UndefinedMetricError",
    "aupro",
    "compute_image_metrics",
    "compute_pixel_metrics",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "macro_mean",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
]
