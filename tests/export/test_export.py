"""Exported bundles against the torch detectors: parity per runtime x method x shots, bundle checks, CLIs, and
the runtime in a fresh virtualenv without torch.

Parity (<= 1e-4 max-abs, scores and maps) is measured on preprocessed batches, so only the graph is compared;
the CLI tests add the runtime's own preprocessing (PIL float resize) on files of other sizes.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmad.export.build import ExportRequest, export_bundle
from vlmad.methods import create_detector
from vlmad.testing import random_images
from vlmad_runtime.bundle import MANIFEST, BundleError, load_bundle
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.jobs import CSV_FIELDS

TOL = 1e-4
CASES = {"winclip": "vlmad-tiny-vit", "aprilgan": "vlmad-tiny-vit-4l", "anomalyclip": "vlmad-tiny-vit-4l"}


def make_detector(method: str, weights_file, shots: int, arch: str | None = None, image_size: int | None = None):
    arch = arch or CASES[method]
    kwargs = {"allow_untrained": True} if method in ("aprilgan", "anomalyclip") else {}
    if image_size:
        kwargs["image_size"] = image_size
    if weights_file is None:
        kwargs["random_weights"] = True
    else:
        kwargs["checkpoint"] = str(weights_file(arch))
    det = create_detector(method, model=arch, use_cache=False, **kwargs)
    det.setup("bottle")
    if shots:
        det.fit(det.backbone.preprocess_tensor(random_images(shots, det.image_size, seed=5)))
    return det


def batch_for(det, n: int = 3, seed: int = 1) -> torch.Tensor:
    return det.backbone.preprocess_tensor(random_images(n, det.image_size, seed=seed))


def assert_parity(det, folder: Path, fmt: str, batch: torch.Tensor) -> dict:
    manifest = export_bundle(det, ExportRequest(out=folder, format=fmt, verify=batch, class_name="bottle"))
    ref_s, ref_m = det.predict(batch).numpy()
    got_s, got_m = load_bundle(folder).run(batch.numpy())
    d_s, d_m = float(np.abs(got_s - ref_s).max()), float(np.abs(got_m - ref_m).max())
    print(f"parity {fmt:8s} {det.info().method:9s} shots={det.shots}: max|d score|={d_s:.2e} max|d map|={d_m:.2e}")
    assert got_m.shape == ref_m.shape and got_s.shape == ref_s.shape
    assert d_s <= TOL and d_m <= TOL
    assert manifest["verification"]["exact"] and manifest["verification"]["max_abs_map"] <= TOL
    return manifest


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("method", ["winclip", "aprilgan"])
def test_fp32_bundle_matches_torch(method, shots, fmt, tmp_path, weights_file):
    det = make_detector(method, weights_file, shots)
    manifest = assert_parity(det, tmp_path / "b", fmt, batch_for(det))
    assert manifest["detector"]["shots"] == shots
    # a batch size other than the traced one runs too (dynamic batch axis)
    one = batch_for(det, 1, seed=9)
    assert np.abs(load_bundle(tmp_path / "b").run(one.numpy())[1] - det.predict(one).numpy()[1]).max() <= TOL


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_anomalyclip_fp32_bundle_matches_torch(fmt, tmp_path, weights_file):
    """Zero-shot AnomalyCLIP (seeded prompts, DPAM from block 2, the reference's sigma 4): learned text baked in,
    DPAM and the Gaussian filter in the graph."""
    det = make_detector("anomalyclip", weights_file, 0)
    det.dpam_start = 2
    manifest = assert_parity(det, tmp_path / "b", fmt, batch_for(det))
    assert manifest["detector"]["method"] == "anomalyclip" and manifest["detector"]["sigma"] == 4.0
    one = batch_for(det, 1, seed=9)
    assert np.abs(load_bundle(tmp_path / "b").run(one.numpy())[1] - det.predict(one).numpy()[1]).max() <= TOL


def test_bundle_preprocesses_files_as_the_method_does(tmp_path, weights_file):
    """AnomalyCLIP (like APRIL-GAN) resizes the uint8 image with PIL; its bundle records that and the runtime
    follows it on image files, so file -> score equals the torch detector's (float resizing differs up to ~0.1)."""
    det = make_detector("anomalyclip", weights_file, 0)
    manifest = export_bundle(det, ExportRequest(out=tmp_path / "b", verify=batch_for(det), class_name="bottle"))
    assert manifest["preprocessing"]["resize"] == "pil-bicubic-uint8"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (70 + 9 * i, 90, 3), dtype=np.uint8)) for i in range(2)]
    bundle = load_bundle(tmp_path / "b")
    got = bundle.predict(images).numpy()
    ref = det.predict(images).numpy()
    assert max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)) <= TOL


REAL = {"winclip": ("ViT-B-16-plus-240", None), "aprilgan": ("ViT-L-14-336", 518)}


@pytest.mark.slow
@pytest.mark.parametrize("shots", [0, 2])
@pytest.mark.parametrize("method", ["winclip", "aprilgan"])
def test_fp32_bundles_match_torch_on_the_real_architectures(method, shots, tmp_path):
    """ViT-B-16-plus-240 at 240 (WinCLIP) and ViT-L-14-336 at 518 (APRIL-GAN), random init, both runtimes."""
    arch, size = REAL[method]
    det = make_detector(method, None, shots, arch=arch, image_size=size)
    batch = batch_for(det, 2)
    for fmt in ("onnx", "openvino"):
        assert_parity(det, tmp_path / fmt, fmt, batch)


@pytest.fixture(scope="module")
def onnx_bundle(weights_file, tmp_path_factory):
    det = make_detector("winclip", weights_file, 2)
    folder = tmp_path_factory.mktemp("bundles") / "winclip2"
    export_bundle(
        det,
        ExportRequest(out=folder, verify=batch_for(det), class_name="bottle"),
    )
    return folder


def copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_manifest_records_what_the_runtime_needs(onnx_bundle):
    m = json.loads((onnx_bundle / MANIFEST).read_text())
    assert set(m["files"]) == {"model.onnx"}
    assert m["preprocessing"]["image_size"] == 64 and len(m["preprocessing"]["mean"]) == 3
    assert m["preprocessing"]["resize"] == "bicubic-antialias"  # WinCLIP's float resize
    assert m["decision"] == {} and load_bundle(onnx_bundle).deployment() is None
    assert [o["name"] for o in m["outputs"]] == ["scores", "maps"]
    assert m["detector"]["shots"] == 2 and m["class_name"] == "bottle"


def test_tampered_or_incomplete_bundles_are_refused(onnx_bundle, tmp_path):
    bad = copy_bundle(onnx_bundle, tmp_path / "tampered")
    data = bytearray((bad / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)
    missing = copy_bundle(onnx_bundle, tmp_path / "missing")
    (missing / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(missing)
    no_manifest = copy_bundle(onnx_bundle, tmp_path / "nomanifest")
    (no_manifest / MANIFEST).unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(no_manifest)
    newer = copy_bundle(onnx_bundle, tmp_path / "newer")
    m = json.loads((newer / MANIFEST).read_text())
    m["bundle_format"] = 99
    (newer / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer"):
        load_bundle(newer)
    m["bundle_format"], m["runtime_requires"] = 1, ">=99.0.0"
    (newer / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="needs vlmad-runtime >= 99.0.0"):
        load_bundle(newer)


def test_export_refuses_bad_requests_and_fails_loudly_above_tolerance(weights_file, tmp_path):
    det = make_detector("winclip", weights_file, 0)
    with pytest.raises(VlmadError, match="made by OpenVINO"):
        export_bundle(det, ExportRequest(out=tmp_path / "a", format="onnx", precision="int8"))
    with pytest.raises(VlmadError, match="calibration images"):
        export_bundle(det, ExportRequest(out=tmp_path / "b", format="openvino", precision="int8"))
    with pytest.raises(VlmadError, match="differs from torch"):
        export_bundle(det, ExportRequest(out=tmp_path / "c", verify=batch_for(det), tolerance=-1.0))
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.*"))


def test_an_existing_trace_is_reused_and_still_verified(weights_file, tmp_path):
    """``ExportRequest.traced`` (one trace shared by a detector's onnx/openvino/int8 bundles) is the graph that
    gets converted: the same detector's trace passes verification, another detector's trace is refused."""
    det, other = make_detector("winclip", weights_file, 0), make_detector("winclip", weights_file, 2)
    batch = batch_for(det)
    export_bundle(det, ExportRequest(out=tmp_path / "onnx", format="onnx", verify=batch, class_name="bottle"))
    export_bundle(other, ExportRequest(out=tmp_path / "other", format="onnx", verify=batch, class_name="bottle"))
    reused = ExportRequest(out=tmp_path / "ov", format="openvino", verify=batch, traced=tmp_path / "onnx/model.onnx")
    assert export_bundle(det, reused)["verification"]["max_abs_map"] <= TOL
    wrong = ExportRequest(out=tmp_path / "bad", format="openvino", verify=batch, traced=tmp_path / "other/model.onnx")
    with pytest.raises(VlmadError, match="differs from torch"):
        export_bundle(det, wrong)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_gap_is_measured_not_claimed_exact(precision, weights_file, tmp_path):
    det = make_detector("winclip", weights_file, 0)
    calib = batch_for(det, 4, seed=3)
    m = export_bundle(
        det, ExportRequest(out=tmp_path / "b", format="openvino", precision=precision, verify=calib, calibration=calib)
    )
    ver = m["verification"]
    print(precision, ver)
    assert ver["exact"] is False and ver["tolerance"] is None
    assert 0 < ver["max_abs_map"] < 0.2 and ver["map_rank_correlation"] > 0.9
    assert (tmp_path / "b" / "model.bin").stat().st_size > 0


# ------------------------------------------------------------------------------------------------- CLIs
def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(folder / f"img_{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def scores(out: Path) -> dict[str, float]:
    with open(out / "scores.csv", newline="") as fh:
        return {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def cli_export(weights_file, tmp_path_factory):
    """`vlmad export` of a 2-shot WinCLIP, plus `vlmad detect` on the same files (the reference)."""
    root = tmp_path_factory.mktemp("cli")
    imgs = write_images(root / "imgs", [(64, 64), (100, 80), (50, 70)], seed=1)
    refs = write_images(root / "refs", [(64, 64), (90, 90)], seed=2)
    common = [
        "--class-name",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--checkpoint",
        weights_file("vlmad-tiny-vit"),
        "--reference-dir",
        root / "refs",
    ]
    run([sys.executable, "-m", "vlmad", "export", *common, "--out", root / "bundle"])
    run([sys.executable, "-m", "vlmad", "detect", *imgs, *common, "--out", root / "torch", "--save-maps"])
    return root, imgs, refs


def test_detect_with_bundle_matches_detect(cli_export):
    root, imgs, _ = cli_export
    run(
        [
            sys.executable,
            "-m",
            "vlmad",
            "detect",
            *imgs,
            "--bundle",
            root / "bundle",
            "-c",
            "bottle",
            "--out",
            root / "viab",
            "--save-maps",
        ]
    )
    run(
        [
            sys.executable,
            "-m",
            "vlmad_runtime.cli",
            "detect",
            root / "bundle",
            *imgs,
            "--out",
            root / "rt",
            "--save-maps",
        ]
    )
    ref = scores(root / "torch")
    for out in ("viab", "rt"):
        got = scores(root / out)
        assert got.keys() == ref.keys()
        assert max(abs(got[k] - ref[k]) for k in ref) <= TOL
        for name in ("img_0", "img_1", "img_2"):
            diff = np.abs(
                np.load(root / out / "maps" / f"{name}.npy") - np.load(root / "torch" / "maps" / f"{name}.npy")
            )
            assert diff.max() <= TOL
    for out in ("torch", "rt"):  # the same columns whatever ran the job
        with open(root / out / "scores.csv", newline="") as fh:
            assert next(csv.reader(fh)) == CSV_FIELDS


def test_runtime_cli_errors_are_short_and_clear(cli_export, tmp_path):
    root, imgs, _ = cli_export
    res = subprocess.run(
        [sys.executable, "-m", "vlmad_runtime.cli", "detect", tmp_path / "nope", *imgs, "--out", tmp_path / "o"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    both = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmad",
            "detect",
            *imgs,
            "--bundle",
            root / "bundle",
            "-c",
            "bottle",
            "--model",
            "vlmad-tiny-vit",
            "--out",
            tmp_path,
        ],
        capture_output=True,
        text=True,
    )
    assert both.returncode == 2 and "--bundle fixes the model" in both.stderr


# ------------------------------------------------------------------------------------ without torch
RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def test_runtime_sources_import_neither_torch_nor_vlmad():
    """Static check over every runtime module, type-checking-only imports aside (the venv test below proves it at
    run time for detect)."""
    for path in (RUNTIME / "src" / "vlmad_runtime").rglob("*.py"):
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in {"torch", "vlmad", "open_clip"}, f"{path.name} imports {name}"


def read(out: Path) -> dict[str, tuple[float, str, str, str]]:
    with open(out / "scores.csv", newline="") as fh:
        return {
            Path(r["path"]).name: (float(r["score"]), r["decision"], r["width"], r["height"])
            for r in csv.DictReader(fh)
        }


@pytest.mark.slow
def test_fresh_venv_without_torch_runs_a_bundle_like_vlmad_detect(tmp_path, weights_file):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{RUNTIME}[onnx,serve]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    print("fresh venv: `import torch` ->", no_torch.stderr.strip().splitlines()[-1])

    imgs = write_images(tmp_path / "imgs", [(64, 64), (120, 90), (40, 56)], seed=4)
    write_images(tmp_path / "refs", [(64, 64), (80, 80)], seed=5)
    common = [
        "--class-name",
        "bottle",
        "--model",
        "vlmad-tiny-vit",
        "--checkpoint",
        weights_file("vlmad-tiny-vit"),
        "--reference-dir",
        tmp_path / "refs",
    ]
    normals = write_images(tmp_path / "normals", [(64, 64), (70, 70), (64, 80), (90, 64)], seed=6)
    deploy = tmp_path / "deploy.json"
    run(
        [
            sys.executable,
            "-m",
            "vlmad",
            "calibrate",
            *common,
            "--normal-dir",
            normals[0].parent,
            "--quantile",
            "0.5",
            "--out",
            deploy,
        ]
    )
    run([sys.executable, "-m", "vlmad", "export", *common, "--deploy", deploy, "--out", tmp_path / "bundle"])
    run([sys.executable, "-m", "vlmad", "detect", *imgs, *common, "--deploy", deploy, "--out", tmp_path / "torch"])
    assert (tmp_path / "bundle" / "deploy.json").is_file()
    res = subprocess.run(
        [
            str(env_dir / "bin" / "vlmad-runtime"),
            "detect",
            str(tmp_path / "bundle"),
            *map(str, imgs),
            "--out",
            str(tmp_path / "rt"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ref, got = read(tmp_path / "torch"), read(tmp_path / "rt")
    assert got.keys() == ref.keys()
    for name in ref:
        print(f"{name}: vlmad detect {ref[name][0]:.7f}  vlmad-runtime detect {got[name][0]:.7f}")
        assert abs(got[name][0] - ref[name][0]) <= TOL
        assert got[name][1:] == ref[name][1:]  # decision from the bundle's deploy.json, original size
    assert {v[1] for v in got.values()} <= {"normal", "anomalous"} and all(v[1] for v in got.values())
    serve_one_image(env_dir / "bin" / "vlmad-runtime", tmp_path, env, imgs[0], ref[imgs[0].name])


def serve_one_image(exe: Path, tmp_path: Path, env: dict, image: Path, expected: tuple) -> None:
    """`vlmad-runtime serve` from the torch-free venv on a loopback port: one POST scores like `vlmad detect`."""
    import httpx

    from vlmad_runtime.serve.client import free_port, wait_until_ready

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(exe), "serve", str(tmp_path / "bundle"), "--port", str(port), "--data-dir", str(tmp_path / "data")],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_ready(url, 120, alive=lambda: proc.poll() is None), log.read_text()
        body = httpx.post(url + "/v1/detect", files={"image": (image.name, image.read_bytes())}, timeout=60).json()
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{image.name}: vlmad detect {expected[0]:.7f}  vlmad-runtime serve {body['score']:.7f}")
    assert abs(body["score"] - expected[0]) <= TOL
    assert body["decision"] == expected[1] and body["calibrated"] is True  # the bundle's deploy.json, checked
    assert "Traceback" not in log.read_text()


def test_runtime_refuses_a_deploy_file_calibrated_for_another_detector(cli_export, weights_file, tmp_path):
    """The bundle holds a 2-shot detector; a zero-shot deploy file must be refused on the line PC too, naming the
    differing fields (the manifest records the exporting detector's fingerprint)."""
    root, imgs, _ = cli_export
    deploy = tmp_path / "zero_shot.json"
    common = ["-c", "bottle", "--model", "vlmad-tiny-vit", "--checkpoint", weights_file("vlmad-tiny-vit")]
    run([sys.executable, "-m", "vlmad", "calibrate", *common, "--normal-dir", root / "imgs", "--out", deploy])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmad_runtime.cli",
            "detect",
            root / "bundle",
            *imgs,
            "--deploy",
            deploy,
            "--out",
            tmp_path / "o",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "shots" in res.stderr and "reference_fingerprint" in res.stderr
    assert not (tmp_path / "o" / "scores.csv").exists()
