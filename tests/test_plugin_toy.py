"""A third method as a plugin, in this one file: a toy detector registered through the public spec API, with its
own option (``gain``) and a trivial artefact (a JSON offset file), runs through `vlmad detect`, `vlmad benchmark`,
a quick `vlmad study` with an ablation axis, `vlmad calibrate` and `vlmad serve` (a real uvicorn process) with no
change anywhere else in vlmad (docs/adding-a-method.md walks through the same steps).

The toy scores how far each pixel is from the image's own mean colour (zero-shot) or from the mean reference
image (few-shot), times ``gain``, plus the artefact's offset: meaningless as a detector, enough to be checked.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from vlmad.methods.base import Detector, DetectorInfo, Prediction
from vlmad.methods.inputs import to_model_input
from vlmad.methods.registry import get_spec, register_method, unregister_method
from vlmad.methods.spec import ArtefactSpec, MethodSpec, OptionSpec
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.version import __version__

NAME = "toy-diff"
TINY = ["--model", "vlmad-tiny-vit", "--random-weights"]


class ToyDetector(Detector):
    """Colour distance to a mean (image or references), scaled by ``gain``, shifted by the artefact's offset."""

    name = NAME

    def __init__(self, backbone: Any, gain: float = 1.0, offset_file: str | None = None, batch_size: int = 8) -> None:
        self.backbone = backbone
        self.gain = float(gain)
        self.offset = float(json.loads(Path(offset_file).read_text())["offset"]) if offset_file else 0.0
        self.batch_size = int(batch_size)
        self.class_name: str | None = None
        self._mean: torch.Tensor | None = None
        self._k = 0

    def setup(self, class_name: str) -> None:
        self.class_name = class_name

    def fit(self, reference_images) -> None:
        refs = to_model_input(reference_images, self.backbone)
        self._mean, self._k = refs.mean(dim=0, keepdim=True), int(refs.shape[0])

    def reset_references(self) -> None:
        self._mean, self._k = None, 0

    def export_references(self) -> dict[str, Any]:
        return {"mean": self._mean, "k": self._k}

    def load_references(self, state: dict[str, Any]) -> None:
        self._mean, self._k = state["mean"], int(state["k"])

    @property
    def shots(self) -> int:
        return self._k

    @property
    def image_size(self) -> int:
        return int(self.backbone.image_size)

    def predict(self, images) -> Prediction:
        x = to_model_input(images, self.backbone)
        base = self._mean if self._mean is not None else x.mean(dim=(2, 3), keepdim=True)
        maps = self.gain * (x - base).abs().mean(dim=1) + self.offset
        return Prediction(maps.flatten(1).amax(dim=1).float(), maps.float())

    def info(self) -> DetectorInfo:
        return DetectorInfo(
            method=NAME,
            model=self.backbone.arch,
            weights_id=self.backbone.source.weights_id,
            image_size=self.image_size,
            prompt_set="none",
            shots=self._k,
            random_weights=self.backbone.source.is_random,
            extra={"gain": self.gain, "offset": self.offset},
        )


TOY = MethodSpec(
    name=NAME,
    factory=ToyDetector,
    summary="toy plugin: colour distance to the mean image",
    default_model="vlmad-tiny-vit",
    options=(
        OptionSpec("gain", float, 1.0, "scale of the distance map"),
        OptionSpec("batch_size", int, 8, "images per forward pass"),
    ),
    artefact=ArtefactSpec(kind="offset", option="offset_file", help="JSON file {offset: float}", fixes_backbone=False),
    study_axes=("resolution",),
)


def register() -> MethodSpec:
    """What a plugin package does on import (or declares as a `vlmad.methods` entry point)."""
    return register_method(TOY, replace=True)


@pytest.fixture(autouse=True)
def toy_registered():
    register()
    yield TOY
    unregister_method(NAME)


@pytest.fixture
def offset_file(tmp_path) -> Path:
    path = tmp_path / "offset.json"
    path.write_text(json.dumps({"offset": 0.25}))
    return path


def _cli(*args: Any):
    import vlmad.cli.commands  # noqa: F401  (every command registered)
    from vlmad.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def test_spec_api_checks_options_before_loading(tmp_path):
    assert get_spec(NAME) is TOY
    with pytest.raises(VlmadError, match="has no option 'gian'.*did you mean 'gain'") as err:
        get_spec(NAME).build(model="no-such-architecture", gian=2.0)  # fails before any model lookup
    assert "gain" in err.value.hint and "offset_file" in err.value.hint
    with pytest.raises(VlmadError, match="gain='x'"):
        get_spec(NAME).check_options({"gain": "x"})
    with pytest.raises(VlmadError, match="already registered"):
        register_method(MethodSpec(name=NAME, factory=ToyDetector))


def test_detect_with_artefact(tmp_path, mvtec_root, offset_file):
    good = mvtec_root / "demo_object" / "test" / "good"
    _cli(
        "detect",
        good,
        "--method",
        NAME,
        "--class-name",
        "demo_object",
        "--out",
        tmp_path / "o",
        "--artefact",
        offset_file,
        *TINY,
    )
    with open(tmp_path / "o" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(float(r["score"]) >= 0.25 for r in rows)  # the artefact's offset is applied


def test_benchmark_with_own_option_and_a_typo(tmp_path, mvtec_root, offset_file):
    from vlmad.bench import load_results

    out = tmp_path / "bench"
    _cli(
        "benchmark",
        "--dataset",
        "mvtec",
        "--root",
        mvtec_root,
        "--out",
        out,
        "--methods",
        NAME,
        "--categories",
        "demo_object",
        "--shots",
        "0,1",
        "--set",
        f"{NAME}.gain=2.0",
        "--set",
        f"{NAME}.offset_file={offset_file}",
        "--no-flops",
        "--quiet",
        *TINY,
    )
    rows = [r for r in load_results(out) if r["status"] == "ok"]
    assert {r["shots"] for r in rows} == {0, 1}
    assert all(r["detector"]["gain"] == 2.0 and r["detector"]["offset"] == 0.25 for r in rows)
    assert all(r["code_fingerprint"].startswith(__version__) for r in rows)
    import vlmad.cli.commands  # noqa: F401
    from vlmad.cli import app

    res = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--dataset",
            "mvtec",
            "--root",
            str(mvtec_root),
            "--out",
            str(tmp_path / "typo"),
            "--methods",
            NAME,
            "--set",
            f"{NAME}.gian=2",
            *TINY,
        ],
    )
    assert res.exit_code != 0 and "gian" in str(res.exception)


def test_study_with_an_ablation_axis(tmp_path, mvtec_root, offset_file):
    from vlmad.bench import load_results

    spec = tmp_path / "toy.yaml"
    spec.write_text(
        f"name: toy\ndatasets: [mvtec]\nmethods: [{{method: {NAME}, options: {{offset_file: "
        f"{offset_file}}}}}]\nshots: [0]\nablations:\n  resolution: {{values: [default, 32]}}\n"
        "calibration: {mode: normal-quantile, quantile: 0.9, max_images: 4}\nreport: {gallery: false}\n"
    )
    out = tmp_path / "study"
    _cli(
        "study",
        spec,
        "--root",
        f"mvtec={mvtec_root}",
        "--out",
        out,
        "--categories",
        "demo_object",
        "--no-flops",
        "--num-workers",
        "0",
        "--quiet",
        *TINY,
    )
    rows = [r for r in load_results(out) if r["status"] == "ok"]
    sizes = sorted(r["detector"]["image_size"] for r in rows)
    assert sizes == [32, 64]  # the default (tiny model: 64 px) and the ablation variant
    assert (out / "report.html").is_file()


def test_calibrate_then_serve(tmp_path, mvtec_root, offset_file):
    good = mvtec_root / "demo_object" / "train" / "good"
    deploy = tmp_path / "deploy.json"
    _cli(
        "calibrate",
        "--method",
        NAME,
        "--class-name",
        "demo_object",
        "--normal-dir",
        good,
        "--quantile",
        "0.5",
        "--artefact",
        offset_file,
        "--out",
        deploy,
        *TINY,
    )
    record = json.loads(deploy.read_text())
    assert record["method"] == NAME and record["detector"]["offset"] == 0.25
    _serve(tmp_path, deploy, offset_file, sorted(good.glob("*.png")))


def _serve(tmp_path: Path, deploy: Path, offset_file: Path, refs: list[Path]) -> None:
    """`vlmad serve --method toy-diff` as a real process (the plugin registered the way a plugin package does)."""
    import httpx

    from vlmad_runtime.serve.client import free_port, wait_until_ready

    pytest.importorskip("fastapi")
    launch = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_plugin_toy as t; "
        "t.register(); import vlmad.cli.serve_cmd; from vlmad.cli import main; main()"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            launch,
            "serve",
            "--method",
            NAME,
            "--class-name",
            "demo_object",
            "--artefact",
            str(offset_file),
            "--deploy",
            str(deploy),
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--log-level",
            "warning",
            *TINY,
        ],
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_ready(url, 120, alive=lambda: proc.poll() is None), "server did not start"
        assert httpx.get(url + "/v1/info").json()["detector"]["method"] == NAME
        files = [("images", (p.name, p.read_bytes(), "image/png")) for p in refs[:2]]
        assert httpx.post(url + "/v1/references/good", files=files, timeout=60).status_code in (200, 201)
        image = refs[-1].read_bytes()
        for params in ({}, {"references": "good"}):
            res = httpx.post(
                url + "/v1/detect",
                params=params,
                timeout=60,
                files={"image": ("x.png", io.BytesIO(image).getvalue(), "image/png")},
            )
            assert res.status_code == 200, res.text + _stop_and_log(proc)
            body = res.json()
            assert body["score"] >= 0.25  # the artefact's offset
            # the deploy threshold was calibrated zero-shot: it decides zero-shot requests only
            assert (body["decision"] in ("anomalous", "normal")) == (not params), body
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err, err[-3000:]


def test_discovered_through_an_entry_point(tmp_path):
    """An installed plugin declares `[vlmad.methods] toy-diff = module:SPEC`; `vlmad models` lists it."""
    site = tmp_path / "site"
    dist = site / "vlmad_toy-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vlmad-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[vlmad.methods]\n{NAME} = test_plugin_toy:TOY\n")
    path = os.pathsep.join([str(site), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-m", "vlmad", "models"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=path, COLUMNS="200"),
    )
    assert res.returncode == 0, res.stderr
    assert NAME in res.stdout and "toy plugin" not in res.stderr


def _stop_and_log(proc: subprocess.Popen) -> str:
    """The server's log tail, for an assertion message."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=30)[1][-4000:]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1][-4000:]
