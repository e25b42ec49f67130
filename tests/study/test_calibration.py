"""Deployment thresholds: the quantile rule and its guarantee, F1-optimal thresholds, deploy.json I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmad.metrics import image_f1_max
from vlmad.study import (
    Deployment,
    deploy_record,
    f1_optimal_threshold,
    load_deploy,
    normal_quantile_threshold,
    rates_at,
    validate_deploy,
    write_deploy,
)
from vlmad_runtime.errors import VlmadError


def test_normal_quantile_threshold_and_its_bound():
    scores = np.random.default_rng(0).random(199)
    cal = normal_quantile_threshold(scores, 0.99)
    s = np.sort(scores)
    # k = ceil(0.99 * 200) = 198 normals below, threshold midway between the 198th and 199th score
    assert s[197] < cal.threshold < s[198] and cal.threshold == pytest.approx((s[197] + s[198]) / 2)
    assert cal.expected_false_alarm_rate == pytest.approx(2 / 200) and cal.expected_false_alarm_rate <= 0.01
    assert cal.details["empirical_false_alarm_rate"] == pytest.approx(1 / 199)
    assert cal.details["mode"] == "normal-quantile" and cal.details["n_images"] == 199 and "note" not in cal.details
    # exchangeable new normals exceed it at the promised rate (Monte Carlo over fresh calibration sets)
    rng = np.random.default_rng(1)
    hits = [float(rng.random()) >= normal_quantile_threshold(rng.random(199), 0.99).threshold for _ in range(3000)]
    assert np.mean(hits) == pytest.approx(0.01, abs=0.006)


def test_few_normals_are_reported_honestly():
    cal = normal_quantile_threshold([0.2, 0.5, 0.4], 0.99)
    assert cal.threshold > 0.5 and cal.expected_false_alarm_rate == pytest.approx(0.25)
    assert "at best 25.0 %" in cal.details["note"]
    with pytest.raises(VlmadError):
        normal_quantile_threshold([], 0.9)
    with pytest.raises(VlmadError, match="quantile"):
        normal_quantile_threshold([0.1], 1.0)


def test_f1_optimal_threshold_matches_the_f1_metric():
    rng = np.random.default_rng(3)
    labels = rng.random(60) < 0.4
    scores = rng.normal(labels.astype(float), 0.8)
    cal = f1_optimal_threshold(scores, labels)
    assert cal.details["f1"] == pytest.approx(image_f1_max(labels, scores))
    rates = rates_at(cal.threshold, scores, labels)
    assert rates["f1"] == pytest.approx(cal.details["f1"])
    assert cal.expected_false_alarm_rate == rates["false_alarm_rate"]
    sep = f1_optimal_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True])
    assert sep.threshold == pytest.approx(0.5) and sep.details["f1"] == 1.0 and sep.expected_false_alarm_rate == 0
    with pytest.raises(VlmadError, match="no anomalous"):
        f1_optimal_threshold([0.1, 0.2], [False, False])


def test_deploy_json_round_trip(tmp_path):
    cal = normal_quantile_threshold([0.1, 0.2, 0.3, 0.4], 0.5)
    record = deploy_record(
        cal,
        "winclip",
        "bottle",
        {"method": "winclip", "model": "m"},
        {"source": "test"},
        fingerprint={"method": "winclip", "model": "m", "class_name": "bottle"},
    )
    path = tmp_path / "d" / "deploy.json"
    assert write_deploy(path, record) is True
    assert write_deploy(path, {**record, "created": "2000-01-01T00:00:00+00:00"}) is False  # same content: kept
    dep = load_deploy(path)
    assert isinstance(dep, Deployment) and dep.threshold == cal.threshold and dep.class_name == "bottle"
    assert dep.decide(cal.threshold) == "anomalous" and dep.decide(cal.threshold - 1e-9) == "normal"
    data = json.loads(path.read_text())
    assert list(data)[:5] == ["format", "threshold", "method", "class_name", "expected_false_alarm_rate"]
    assert data["calibration"]["source"] == "test" and data["calibration"]["quantile"] == 0.5
    for broken in (
        {**data, "threshold": "x"},
        {k: v for k, v in data.items() if k != "detector"},
        {**data, "calibration": {"mode": "magic", "n_images": 3}},
        {**data, "expected_false_alarm_rate": 2.0},
        {**data, "threshold": True},
        {**data, "threshold": "0.5"},
        {**data, "format": 1},
        {**data, "fingerprint": {}},
    ):
        with pytest.raises(VlmadError):
            validate_deploy(broken)
