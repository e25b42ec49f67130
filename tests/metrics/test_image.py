"""Image-level metrics against scikit-learn, plus the undefined-metric policy and input checking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from vlmad.metrics import (
    IMAGE_METRICS,
    MetricInputError,
    UndefinedMetricError,
    compute_image_metrics,
    image_ap,
    image_auroc,
    image_f1_max,
    macro_mean,
)
from vlmad_runtime.errors import VlmadError


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """F1-max from sklearn's PR curve, F1 := 0 where precision + recall = 0 (vlmad's documented choice)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1234)
    out = []
    for n, prevalence in [(2, 0.5), (7, 0.3), (50, 0.2), (301, 0.5), (1000, 0.05)]:
        labels = rng.random(n) < prevalence
        labels[0], labels[-1] = True, False  # both classes present
        out.append((f"random-{n}", labels, rng.normal(size=n) + labels))
        out.append((f"tied-{n}", labels, np.round(rng.random(n) * 3) / 3 + 0.25 * labels))  # 4-5 levels
    labels = rng.random(400) < 0.4
    out.append(("two-levels", labels, (rng.random(400) < 0.5 + 0.3 * labels).astype(np.float64)))
    out.append(("perfect", labels, labels * 2.0 + rng.random(400)))
    out.append(("inverted", labels, -(labels * 2.0) + rng.random(400)))
    return out


@pytest.mark.parametrize(("name", "labels", "scores"), cases(), ids=[c[0] for c in cases()])
def test_matches_sklearn(name: str, labels: np.ndarray, scores: np.ndarray) -> None:
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert image_f1_max(labels, scores) == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-9)
    got = compute_image_metrics(labels, scores)
    assert tuple(got) == IMAGE_METRICS
    assert got["image_auroc"] == image_auroc(labels, scores)


def test_float32_ties_are_compared_in_float32() -> None:
    """Scores equal in float32 must tie (no widening that separates them, no rounding that merges others)."""
    labels = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    scores = np.array([0.1, 0.1, 0.3, 0.2, 0.3, 0.7], dtype=np.float32)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_constant_scores_are_defined() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0])
    scores = np.full(8, 0.42)
    p = labels.mean()
    assert image_auroc(labels, scores) == 0.5
    assert image_ap(labels, scores) == pytest.approx(p)
    assert image_f1_max(labels, scores) == pytest.approx(2 * p / (1 + p))


def test_input_types_agree() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(64) < 0.5
    scores = rng.random(64).astype(np.float32)
    ref = compute_image_metrics(labels, scores)
    variants = [
        (labels.astype(np.int64), scores),
        (labels.astype(np.float32), scores),
        (labels.astype(np.uint8), scores.astype(np.float64)),
        (torch.from_numpy(labels), torch.from_numpy(scores)),
        (torch.from_numpy(labels).long(), torch.from_numpy(scores).requires_grad_()),
        (labels.tolist(), scores.tolist()),
    ]
    for y, s in variants:
        got = compute_image_metrics(y, s)
        for key, value in ref.items():
            assert got[key] == pytest.approx(value, abs=1e-12), key
    # half precision is widened exactly, so it equals the float32 result on the float16-rounded scores
    half = torch.from_numpy(scores).half()
    assert image_auroc(labels, half) == pytest.approx(roc_auc_score(labels, half.float().numpy()), abs=1e-12)


@pytest.mark.parametrize("metric", [image_auroc, image_ap, image_f1_max, compute_image_metrics])
def test_no_anomalous_image_is_undefined(metric) -> None:
    with pytest.raises(UndefinedMetricError) as info:
        metric(np.zeros(5, dtype=bool), np.arange(5.0))
    assert isinstance(info.value, VlmadError) and info.value.hint
    assert "0 anomalous" in str(info.value)


def test_no_normal_image() -> None:
    labels, scores = np.ones(4, dtype=bool), np.array([0.1, 0.5, 0.5, 0.9])
    with pytest.raises(UndefinedMetricError, match="AUROC"):
        image_auroc(labels, scores)
    with pytest.raises(UndefinedMetricError):
        compute_image_metrics(labels, scores)
    # AP and F1-max do not divide by the number of normal samples: every threshold has precision 1
    assert image_ap(labels, scores) == 1.0
    assert image_f1_max(labels, scores) == 1.0


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        (np.zeros(3), np.zeros(4), "shape"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "1-D"),
        (np.array([0, 1, 2]), np.zeros(3), "binary"),
        (np.array([0.0, 0.5, 1.0]), np.zeros(3), "binary"),
        (np.array([0, 1, 1]), np.array([0.1, np.nan, 0.3]), "NaN"),
        (np.array([0, 1, 1]), np.array([0.1, np.inf, 0.3]), "infinite"),
        (np.array([0, 1]), np.array(["a", "b"]), "dtype"),
        (np.zeros(0), np.zeros(0), "empty"),
    ],
)
def test_bad_inputs(labels, scores, match: str) -> None:
    with pytest.raises(MetricInputError, match=match):
        image_auroc(labels, scores)


def test_macro_mean() -> None:
    per_class = {
        "bottle": {"image_auroc": 0.9, "aupro": 0.5},
        "cable": {"aupro": 0.7, "image_auroc": 0.6},
    }
    assert macro_mean(per_class) == pytest.approx({"image_auroc": 0.75, "aupro": 0.6})
    with pytest.raises(MetricInputError, match="cable"):
        macro_mean({"bottle": {"image_auroc": 0.9}, "cable": {"aupro": 0.7}})
    with pytest.raises(UndefinedMetricError, match="bottle"):
        macro_mean({"bottle": {"image_auroc": math.nan}})
    with pytest.raises(MetricInputError):
        macro_mean({})
