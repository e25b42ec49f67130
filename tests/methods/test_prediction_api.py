"""The Python API as the README shows it: `vlmad.create_detector` is visible, predictions say which input each
row is and, with a deploy file, carry decisions."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import vlmad
from vlmad.methods.base import Prediction, input_ids
from vlmad_runtime.deploy import DeployMismatchError
from vlmad_runtime.errors import VlmadError


def test_the_lazy_api_is_visible():
    for name in ("create_detector", "Prediction", "Detector", "available_methods", "__version__"):
        assert name in dir(vlmad)


def test_inputs_of_every_kind_are_identified(tmp_path):
    path = tmp_path / "part.png"
    Image.new("RGB", (8, 8)).save(path)
    opened = Image.open(path)
    assert input_ids([path, str(path), opened, Image.new("RGB", (4, 4))]) == [
        str(path),
        str(path),
        str(path),
        "<image 3>",
    ]
    assert input_ids(path) == [str(path)] and input_ids(torch.zeros(2, 3, 8, 8)) is None


@pytest.mark.parametrize("method", ["winclip", "aprilgan"])
def test_predictions_carry_inputs_and_decisions_from_a_deploy_file(tmp_path, method, weights_file):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(paths[-1])
    extra = {"allow_untrained": True} if method == "aprilgan" else {}
    det = vlmad.create_detector(method, model="vlmad-tiny-vit", checkpoint=str(weights_file("vlmad-tiny-vit")), **extra)
    det.setup("bottle")
    pred = det.predict(paths)
    assert pred.inputs == [str(p) for p in paths] and pred.decisions is None
    middle = float(pred.image_scores.sort().values[1])
    deploy = tmp_path / "deploy.json"
    from vlmad.fingerprint import detector_fingerprint

    info = det.info().as_dict()
    deploy.write_text(
        json.dumps(
            {  # deploy format 2 (vlmad_runtime.deploy), as `vlmad calibrate` writes it
                "format": 2,
                "threshold": middle,
                "method": info["method"],
                "class_name": "bottle",
                "expected_false_alarm_rate": None,
                "calibration": {"mode": "f1-optimal", "n_images": 3},
                "fingerprint": detector_fingerprint(info, "bottle", None),
                "pixel": None,
                "detector": info,
                "created": "2026-01-01",
                "vlmad_version": "0.2.0",
            }
        )
    )
    with pytest.raises(VlmadError, match="bound to the detector"):
        pred.decide(deploy)  # a deploy file is checked against the detector: it must be given
    assert pred.decide(deploy, detector=det) is pred and pred.threshold == middle
    expect = ["anomalous" if s >= middle else "normal" for s in pred.image_scores.tolist()]
    assert pred.decisions == expect and expect.count("anomalous") == 2
    det.fit(paths[:2])  # now a 2-shot detector: the zero-shot deploy file no longer fits it
    with pytest.raises(DeployMismatchError) as err:
        det.predict(paths).decide(deploy, detector=det, references=paths[:2])
    assert "shots" in str(err.value) and "reference_fingerprint" in str(err.value)
    assert det.predict(torch.zeros(1, 3, det.image_size, det.image_size)).inputs is None


def test_prediction_stays_positional_for_subclasses():
    p = Prediction(torch.zeros(2), torch.zeros(2, 4, 4))
    assert p.inputs is None and p.decide(0.0).decisions == ["anomalous", "anomalous"]


def test_non_finite_scores_get_no_decision():
    p = Prediction(torch.tensor([0.2, float("nan"), float("inf"), 0.9]), torch.zeros(4, 4, 4))
    assert p.decide(0.5).decisions == ["normal", "", "", "anomalous"]
