"""`vlmad-runtime serve BUNDLE` and `vlmad serve --bundle`: the same service on an exported bundle.

The bundle scores like the torch detector it came from (<= 1e-4 through the service's own decode and the
bundle's preprocessing), refuses reference sets with a 409 that says why, and checks a deploy file against the
fingerprint it recorded at export.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vlmad_runtime.deploy import FORMAT_VERSION, validate_deploy
from vlmad_runtime.serve.client import free_port, wait_until_ready

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart, httpx) is not installed")

TOL = 1e-4


def torch_score(det, data: bytes) -> float:
    """The exporting detector's score on the image file, through its own file pipeline."""
    with torch.inference_mode():
        return float(det.predict([Image.open(io.BytesIO(data)).convert("RGB")]).image_scores[0])


def test_bundle_service_scores_like_its_detector_and_refuses_references(make_bundle_app, tiny_bundle, serve_helpers):
    _, det = tiny_bundle
    png = serve_helpers.png(11, (96, 72))
    with serve_helpers.client(make_bundle_app()) as c:
        info = c.get("/v1/info").json()
        assert info["references_supported"] is False and info["class_name"] == "bottle"
        assert info["detector"]["shots"] == 2 and info["detector"]["bundle_format"] == "onnx"
        res = c.post("/v1/detect?heatmap=raw", files={"image": ("a.png", png, "image/png")})
        assert res.status_code == 200, res.text
        body = res.json()
        assert abs(body["score"] - torch_score(det, png)) <= TOL
        assert body["shots"] == 2 and body["heatmap"]["raw"]["shape"] == [det.image_size, det.image_size]
        up = c.post("/v1/references/good", files=[("images", ("g.png", png, "image/png"))])
        assert up.status_code == 409 and "baked into the bundle" in up.json()["error"]["message"]
        assert "--reference-dir" in up.json()["error"]["message"] + up.json()["error"]["hint"]
        few = c.post("/v1/detect?references=good", files={"image": ("a.png", png, "image/png")})
        assert few.status_code == 409 and few.json()["error"]["code"] == "references_not_supported"
        assert c.get("/v1/references").json() == {"sets": []}


def _serve(cmd: list, tmp_path, port: int) -> subprocess.Popen:
    log = open(tmp_path / f"serve-{port}.log", "w")  # noqa: SIM115 - closed with the process by the caller
    return subprocess.Popen(
        [*cmd, "--port", str(port), "--data-dir", str(tmp_path / "data")], stdout=log, stderr=subprocess.STDOUT
    )


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "vlmad_runtime.cli", "serve"], [sys.executable, "-m", "vlmad", "serve", "--bundle"]],
    ids=["vlmad-runtime serve", "vlmad serve --bundle"],
)
def test_both_commands_serve_the_bundle_over_http(command, tiny_bundle, serve_helpers, tmp_path):
    import httpx

    folder, det = tiny_bundle
    port = free_port()
    proc = _serve([*command, str(folder)], tmp_path, port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(url, 120, alive=lambda: proc.poll() is None), (
            tmp_path / f"serve-{port}.log"
        ).read_text()
        png = serve_helpers.png(12, (70, 90))
        body = httpx.post(url + "/v1/detect", files={"image": ("b.png", png, "image/png")}, timeout=30).json()
        assert abs(body["score"] - torch_score(det, png)) <= TOL
        assert httpx.get(url + "/", timeout=10).text.count("<script") >= 1  # the same page
    finally:
        proc.terminate()
        proc.wait(30)
    log = (tmp_path / f"serve-{port}.log").read_text()
    assert "class 'bottle'" in log and "Traceback" not in log


def test_bundle_serve_refuses_a_deploy_file_of_another_detector(tiny_bundle, tmp_path):
    """A deploy file is matched against the bundle's recorded fingerprint before the port opens."""
    folder, _ = tiny_bundle
    protocol = json.loads((folder / "manifest.json").read_text())["protocol"]
    record = {  # a zero-shot calibration of the same backbone: the bundle holds a 2-shot memory
        "format": FORMAT_VERSION,
        "threshold": 0.5,
        "method": protocol["method"],
        "class_name": "bottle",
        "expected_false_alarm_rate": 0.05,
        "calibration": {"mode": "normal-quantile", "n_images": 4},
        "fingerprint": {**protocol, "shots": 0, "reference_fingerprint": None},
        "pixel": None,
        "detector": {},
        "created": "2026-01-01T00:00:00+00:00",
        "vlmad_version": protocol["vlmad_version"],
    }
    validate_deploy(record)
    deploy = tmp_path / "deploy.json"
    deploy.write_text(json.dumps(record))
    res = subprocess.run(
        [sys.executable, "-m", "vlmad_runtime.cli", "serve", str(folder), "--deploy", str(deploy), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "shots" in res.stderr and "reference_fingerprint" in res.stderr
