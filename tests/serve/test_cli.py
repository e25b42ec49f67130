"""`vlmad serve` as a user starts it: a real uvicorn process on a loopback port."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from vlmad_runtime.serve.client import free_port, wait_until_ready

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart, httpx) is not installed")

# works whether or not vlmad.cli.commands already imports the serve command module
LAUNCH = "import vlmad.cli.serve_cmd; from vlmad.cli import main; main()"


def vlmad(*args, env_extra=None, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# a deploy file of another detector (class screw; no other field of the tiny detector recorded)
OTHER_DETECTOR = json.dumps(
    {
        "format": 2,
        "threshold": 0.25,
        "method": "winclip",
        "class_name": "screw",
        "expected_false_alarm_rate": 0.01,
        "calibration": {"mode": "normal-quantile", "n_images": 99},
        "fingerprint": {"class_name": "screw"},
        "pixel": None,
        "detector": {},
        "created": "2026-01-01",
        "vlmad_version": "0.2.0",
    }
)


def test_serve_cli_end_to_end_with_env_api_key_and_deploy(tmp_path):
    import httpx

    deploy = tmp_path / "deploy.json"
    deploy.write_text(OTHER_DETECTOR)
    port = free_port()
    proc = vlmad(
        "serve",
        "--class-name",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--random-weights",
        "--deploy",
        deploy,
        "--force-deploy",
        "--port",
        port,
        "--data-dir",
        tmp_path / "data",
        "--max-batch-size",
        "4",
        "--max-wait-ms",
        "5",
        "--log-level",
        "warning",
        env_extra={"VLMAD_API_KEY": "k-123"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_ready(url, 120, alive=lambda: proc.poll() is None):
            out, err = proc.communicate(timeout=10) if proc.poll() is not None else ("", "")
            raise AssertionError(f"server did not start (rc={proc.poll()}):\n{err[-3000:]}")
        assert httpx.get(url + "/v1/info").status_code == 401
        info = httpx.get(url + "/v1/info", headers={"X-API-Key": "k-123"}).json()
        assert info["threshold"] == 0.25 and info["random_weights"] is True
        assert info["batching"] == {"max_batch_size": 4, "max_wait_ms": 5.0}
        assert any("class 'screw'" in w for w in info["warnings"])
        buf = io.BytesIO()
        Image.new("RGB", (50, 40), (120, 80, 40)).save(buf, "PNG")
        res = httpx.post(
            url + "/v1/detect",
            files={"image": ("a.png", buf.getvalue(), "image/png")},
            headers={"Authorization": "Bearer k-123"},
            timeout=30,
        )
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["decision"] in ("anomalous", "normal") and body["warning"].startswith("random weights")
        assert body["calibrated"] is False and "threshold not calibrated for this detector" in body["decision_note"]
        assert "server" not in {k.lower() for k in res.headers}  # no server banner
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert "calibrated for class 'screw'" in err and "random weights - scores are meaningless" in err
    assert "k-123" not in out + err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"method": "winclip"}', "deploy format none"),
        ('{"threshold": 0.5, "format": 2}', "lacks"),
        ("OTHER", "calibrated for another detector"),
        ("{oops", "is not valid JSON"),
    ],
)
def test_serve_cli_refuses_a_bad_deploy_file(tmp_path, content, message):
    deploy = tmp_path / "deploy.json"
    deploy.write_text(OTHER_DETECTOR if content == "OTHER" else content)
    proc = vlmad(
        "serve",
        "--class-name",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--random-weights",
        "--deploy",
        deploy,
        "--port",
        free_port(),
        "--data-dir",
        tmp_path / "data",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert message in err and "hint:" in err and "Traceback" not in err


def test_serve_cli_checks_the_port_before_loading_the_model(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        # an unknown model would fail the load: the port error must come first, so no model is loaded
        proc = vlmad(
            "serve",
            "--class-name",
            "bottle",
            "--model",
            "no-such-model",
            "--random-weights",
            "--port",
            port,
            "--data-dir",
            tmp_path / "data",
        )
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert "no-such-model" not in err and "Traceback" not in err and "startup complete" not in err.lower()
