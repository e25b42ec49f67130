"""AUROC, average precision and F1-max from one sort of the scores (image and pixel level).

Why not scikit-learn for pixels: a full class (500 maps of 518x518 = 134M pixels) would be copied to float64
and argsorted with int64 indices by sklearn (> 4 GB). Here the anomalous and the normal scores are copied
once in their own dtype and sorted separately (numpy's SIMD sort, no index array), and every curve quantity
is read off the two sorted arrays with ``searchsorted``:

* for a distinct anomalous score ``v``: ``tp(v) = #anomalous >= v`` (its rank in the sorted anomalous
  scores) and ``fp(v) = #normal >= v``;
* AUROC is the Mann-Whitney statistic, ties counting one half -- exactly the trapezoidal ROC area that
  sklearn reports, but accumulated in integers;
* AP = sum over anomalous samples of the precision at their score (sklearn's step-wise sum: recall only
  moves at anomalous scores);
* F1-max = max over thresholds of ``2PR/(P+R) = 2 tp / (n_anomalous + tp + fp)``. A threshold between
  anomalous scores has the same ``tp`` but no fewer ``fp`` than the next anomalous score below it, so the
  maximum is attained at an anomalous score and only those are evaluated. The point with ``P + R = 0``
  (``tp = 0``, thresholds above every anomalous score) has F1 = 0 by definition (the limit of the harmonic
  mean); it can never be the maximum because at least one anomalous sample exists (otherwise the metric is
  undefined, see :mod:`._common`).

The threshold convention is "score >= t is predicted anomalous", as in sklearn and MVTec's evaluation code.
Work is done in chunks of distinct anomalous scores so temporaries stay small whatever the class size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import MetricInputError, UndefinedMetricError, as_binary, as_scores, check_pair

__all__ = [
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
]

# anomalous scores processed per step: bounds the per-step int64/float64 temporaries to ~100 MB
_CHUNK = 1 << 20


@dataclass
class RankSums:
    """Sufficient statistics of one ranking: everything AUROC / AP / F1-max (and exact AUPRO) need."""

    n_pos: int
    n_neg: int
    u2: int = 0  # 2 x Mann-Whitney U: sum over (anomalous, normal) pairs of 2 [s_a > s_n] + [s_a == s_n]
    ap_sum: float = 0.0  # sum over anomalous samples of precision at their own score
    f1_max: float = 0.0
    # exact AUPRO only (see aupro.py): weighted counts of normal scores above the FPR-limit cut
    pro_sum: float = 0.0
    w_gt_cut: float = 0.0
    w_ge_cut: float = 0.0

    def auroc(self, what: str) -> float:
        if self.n_pos == 0 or self.n_neg == 0:
            raise UndefinedMetricError(
                f"{what} AUROC is undefined: {self._composition()}",
                "AUROC needs at least one anomalous and one normal sample",
            )
        return self.u2 / (2.0 * self.n_pos * self.n_neg)

    def ap(self, what: str) -> float:
        if self.n_pos == 0:
            raise UndefinedMetricError(
                f"{what} AP is undefined: {self._composition()}", "AP needs at least one anomalous sample"
            )
        return self.ap_sum / self.n_pos

    def f1(self, what: str) -> float:
        if self.n_pos == 0:
            raise UndefinedMetricError(
                f"{what} F1-max is undefined: {self._composition()}",
                "F1-max needs at least one anomalous sample",
            )
        return self.f1_max

    def _composition(self) -> str:
        return f"{self.n_pos} anomalous and {self.n_neg} normal samples"


def scan(
    pos: np.ndarray,
    neg: np.ndarray,
    weights: np.ndarray | None = None,
    cut: Any = None,
    cut_hi: int = 0,
    chunk: int | None = None,
) -> RankSums:
    """One pass over the sorted anomalous scores ``pos`` against the sorted normal scores ``neg``.

    ``weights`` (aligned with ``pos``) and ``cut`` / ``cut_hi`` are only used by exact AUPRO: with
    ``cut_hi`` = number of normal scores ``<= cut``, it accumulates ``sum_p w_p (#normal in (cut, s_p) +
    #normal in (cut, s_p])`` and the weight of anomalous scores ``> cut`` and ``>= cut``.
    """
    chunk = chunk or _CHUNK
    n_pos, n_neg = int(pos.size), int(neg.size)
    sums = RankSums(n_pos, n_neg)
    if n_pos == 0:
        return sums
    if neg.dtype != pos.dtype:  # searchsorted must compare in one dtype to stay exact
        raise AssertionError("pos and neg must share a dtype")
    start = 0
    while start < n_pos:
        stop = min(start + chunk, n_pos)
        if stop < n_pos:  # end the chunk on a run boundary so every distinct score is seen once
            boundary = int(np.searchsorted(pos, pos[stop], "left"))
            stop = boundary if boundary > start else int(np.searchsorted(pos, pos[start], "right"))
        seg = pos[start:stop]
        is_new = np.empty(seg.size, dtype=bool)
        is_new[0] = True
        np.not_equal(seg[1:], seg[:-1], out=is_new[1:])
        first = np.flatnonzero(is_new)
        values = seg[first]
        counts = np.diff(first, append=seg.size)
        tp = n_pos - (start + first)  # anomalous scores >= value
        lt = np.searchsorted(neg, values, "left")  # normal scores < value
        le = np.searchsorted(neg, values, "right")  # normal scores <= value
        fp = n_neg - lt
        sums.u2 += int(np.dot(counts, lt + le))
        sums.ap_sum += float(np.dot(counts, tp / (tp + fp)))
        sums.f1_max = max(sums.f1_max, float(np.max(2.0 * tp / (n_pos + tp + fp))))
        if weights is not None:
            w = np.add.reduceat(weights[start:stop], first)
            above = np.maximum(lt - cut_hi, 0) + np.maximum(le - cut_hi, 0)
            sums.pro_sum += float(np.dot(w, above))
            if cut is not None:
                sums.w_gt_cut += float(w[values > cut].sum())
                sums.w_ge_cut += float(w[values >= cut].sum())
        start = stop
    return sums


def split_sorted(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anomalous and normal scores, each copied once (scores' dtype) and sorted ascending in place."""
    pos = scores[truth]
    pos.sort()
    neg = scores[~truth]
    neg.sort()
    return pos, neg


def _image_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = as_binary(labels, "labels")
    s = as_scores(scores, "scores")
    check_pair(y, s, "labels", "scores")
    if y.ndim != 1:
        raise MetricInputError(
            f"image-level labels/scores must be 1-D (one per image), got shape {tuple(y.shape)}",
            "for anomaly maps use the pixel_* metrics",
        )
    return y, s


def pixel_inputs(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(masks bool, maps float)`` of equal shape; any number of dimensions."""
    m = as_binary(masks, "masks")
    a = as_scores(maps, "maps")
    check_pair(m, a, "masks", "maps")
    return m, a


def image_sums(labels: Any, scores: Any) -> RankSums:
    y, s = _image_inputs(labels, scores)
    return scan(*split_sorted(y, s))


def pixel_sums(masks: Any, maps: Any) -> RankSums:
    m, a = pixel_inputs(masks, maps)
    return scan(*split_sorted(m, a))


def image_auroc(labels: Any, scores: Any) -> float:
    """Image-level AUROC (equals ``sklearn.metrics.roc_auc_score``, ties counting one half)."""
    return image_sums(labels, scores).auroc("image")


def image_ap(labels: Any, scores: Any) -> float:
    """Image-level average precision (equals ``sklearn.metrics.average_precision_score``)."""
    return image_sums(labels, scores).ap("image")


def image_f1_max(labels: Any, scores: Any) -> float:
    """Image-level F1-max: best F1 over all thresholds of the PR curve (F1 = 0 where P + R = 0)."""
    return image_sums(labels, scores).f1("image")


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel-level AUROC over all pixels of the class; exact, memory ~ one copy of the maps."""
    return pixel_sums(masks, maps).auroc("pixel")


def pixel_ap(masks: Any, maps: Any) -> float:
    """Pixel-level average precision over all pixels of the class (sklearn's definition, exact)."""
    return pixel_sums(masks, maps).ap("pixel")


def pixel_f1_max(masks: Any, maps: Any) -> float:
    """Pixel-level F1-max over all pixels of the class (F1 = 0 where P + R = 0)."""
    return pixel_sums(masks, maps).f1("pixel")
