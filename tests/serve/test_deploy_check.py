"""The service and deploy files: decisions only for the detector (and reference set) a deploy file was
calibrated on; calibrated heatmap scale, mask and contour on request."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from vlmad_runtime.deploy import NOT_CALIBRATED_NOTE, validate_deploy

pytest.importorskip("fastapi", reason="the serve extra is needed for the service tests")


def deployment_for(detector, class_name="bottle", reference_fp=None, **fp_changes):
    from vlmad.fingerprint import detector_fingerprint

    fp = {**detector_fingerprint(detector.info().as_dict(), class_name, reference_fp), **fp_changes}
    return validate_deploy(
        {
            "format": 2,
            "threshold": 0.0,
            "method": fp["method"],
            "class_name": class_name,
            "expected_false_alarm_rate": 0.1,
            "calibration": {"mode": "normal-quantile", "n_images": 9},
            "fingerprint": fp,
            "pixel": {"map_scale": [0.0, 0.5], "pixel_threshold": 0.2, "pixel_fp_rate": 0.01, "n_images": 9},
            "detector": detector.info().as_dict(),
            "created": "2026-01-01",
            "vlmad_version": "0.2.0",
        }
    )


def post(c, png: bytes, query: str = ""):
    r = c.post("/v1/detect" + query, files={"image": ("part.png", png, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def test_matching_deploy_decides_and_returns_mask_and_scale(make_app, make_detector, serve_helpers):
    det = make_detector()
    dep = deployment_for(det)
    with serve_helpers.client(make_app(detector=det, deployment=dep, threshold=dep.threshold)) as c:
        body = post(c, serve_helpers.png(4), "?heatmap=color&mask=true")
    assert body["calibrated"] is True and body["decision"] == "anomalous" and body["decision_note"] is None
    hm = body["heatmap"]
    assert hm["scale"]["lo"] == 0.0 and hm["scale"]["hi"] == 0.5 and hm["scale"]["pixel_threshold"] == 0.2
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(hm["mask_png_b64"])))) > 0
    assert mask.mean() == pytest.approx(hm["defect_area"])
    contour = np.asarray(Image.open(io.BytesIO(base64.b64decode(hm["contour_png_b64"]))))
    assert contour.shape[-1] == 4 and (contour[..., 3] > 0).sum() <= mask.sum()


@pytest.mark.parametrize(
    "change", [{"class_name": "screw"}, {"model": "other"}, {"precision": "int8"}, {"prompt_hash": "x"}, {"shots": 4}]
)
def test_mismatching_deploy_gives_no_decision_unless_forced(make_app, make_detector, serve_helpers, change):
    det = make_detector()
    dep = deployment_for(det, **change)
    field = next(iter(change))
    for force in (False, True):
        with serve_helpers.client(make_app(detector=det, deployment=dep, force_deploy=force)) as c:
            body = post(c, serve_helpers.png(4))
        assert body["calibrated"] is False and NOT_CALIBRATED_NOTE in body["decision_note"]
        assert field in body["decision_note"]
        assert (body["decision"] is not None) == force


def test_reference_set_must_be_the_calibrated_one(make_app, make_detector, serve_helpers):
    from vlmad.fingerprint import image_digest, reference_fingerprint

    det = make_detector()
    refs = [serve_helpers.png(10), serve_helpers.png(11)]
    ref_fp = reference_fingerprint(image_digest(Image.open(io.BytesIO(b))) for b in refs)
    det.fit([Image.open(io.BytesIO(b)).convert("RGB") for b in refs])
    dep = deployment_for(det, reference_fp=ref_fp)  # calibrated 2-shot on exactly these two images
    det.reset_references()
    with serve_helpers.client(make_app(detector=det, deployment=dep)) as c:
        for name, images in (("same", refs[::-1]), ("other", [refs[0], serve_helpers.png(12)])):
            r = c.post(
                f"/v1/references/{name}", files=[("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
            )
            assert r.status_code in (200, 201), r.text
        same = post(c, serve_helpers.png(4), "?references=same")
        other = post(c, serve_helpers.png(4), "?references=other")
        zero = post(c, serve_helpers.png(4))
    assert same["calibrated"] is True and same["decision"] is not None
    assert other["calibrated"] is False and other["decision"] is None
    assert "reference_fingerprint" in other["decision_note"] and "shots" not in other["decision_note"]
    assert zero["decision"] is None and "shots" in zero["decision_note"]
