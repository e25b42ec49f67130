"""Input checking shared by every metric, and the two errors the metrics raise.

Metrics are the last step of every experiment, so a wrong input must fail loudly here rather than produce a
plausible-looking number: shapes are checked, masks must be binary, scores must be finite.

Undefined-metric policy (applies to every metric in :mod:`vlmad.metrics`): a metric whose formula would
divide by zero -- AUROC without both classes, AP / F1-max without a single anomalous sample, AUPRO without
an anomalous region or without a normal pixel -- raises :class:`UndefinedMetricError`. No metric ever
returns NaN. Callers that want to carry on (e.g. a benchmark grid) catch the error and record the class as
skipped.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from vlmad_runtime.errors import VlmadError

__all__ = ["MetricInputError", "UndefinedMetricError"]


class UndefinedMetricError(VlmadError, ValueError):
    """The metric has no value for these inputs (e.g. AUROC of a class with no anomalous sample)."""


class MetricInputError(VlmadError, ValueError):
    """Labels / masks / scores / maps have the wrong shape, type or values."""


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array without copying when possible (torch tensors are moved to the CPU)."""
    if "torch" in sys.modules:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.dtype in (torch.bfloat16, torch.float16):
                x = x.float()
            return x.cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise MetricInputError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.dtype == object:
        raise MetricInputError(f"{name} is not a numeric array (dtype object)", "pass a numpy array or a tensor")
    return arr


def as_binary(x: Any, name: str) -> np.ndarray:
    """Ground truth as bool; only bool or 0/1 values are accepted (a soft mask is an error, not a guess)."""
    arr = to_numpy(x, name)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise MetricInputError(
                f"{name} must be binary (bool or 0/1), found values in [{arr.min()}, {arr.max()}]",
                "binarise it first, e.g. mask > 0",
            )
        if arr.dtype.itemsize == 1:
            return arr.view(np.bool_)  # 0/1 bytes are valid bools: no copy
        return arr != 0
    if arr.dtype.kind == "f":
        if not np.all((arr == 0) | (arr == 1)):
            raise MetricInputError(
                f"{name} must be binary (bool or 0/1) but contains other values",
                "binarise soft masks first, e.g. mask > 0.5",
            )
        return arr != 0
    raise MetricInputError(f"{name} must be bool or 0/1 numbers, got dtype {arr.dtype}")


def as_scores(x: Any, name: str) -> np.ndarray:
    """Scores as float32 or float64 without changing any value (half precision is widened exactly)."""
    arr = to_numpy(x, name)
    if arr.dtype.kind == "f":
        if arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
        elif arr.dtype.itemsize > 8:
            raise MetricInputError(f"{name} has unsupported dtype {arr.dtype}", "use float32 or float64")
    elif arr.dtype.kind in "iub":
        arr = arr.astype(np.float64)
    else:
        raise MetricInputError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise MetricInputError(f"{name} contains NaN or infinite values", "check the model output for overflow")
    return arr


def check_pair(truth: np.ndarray, pred: np.ndarray, truth_name: str, pred_name: str) -> None:
    """Same shape and at least one element, else a message naming both shapes."""
    if truth.shape != pred.shape:
        raise MetricInputError(
            f"{truth_name} has shape {tuple(truth.shape)} but {pred_name} has shape {tuple(pred.shape)}",
            "they must match element for element (resize the maps to the mask resolution first)",
        )
    if truth.size == 0:
        raise MetricInputError(f"{truth_name} and {pred_name} are empty")
