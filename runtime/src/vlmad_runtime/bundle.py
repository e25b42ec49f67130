"""Exported bundles: load, check and run them without torch (see docs/export.md).

A bundle is a folder written by `vlmad export`: the model graph (``model.onnx``, or ``model.xml`` + ``model.bin``
for OpenVINO) and ``manifest.json``, which records how images are preprocessed, what the graph outputs, the
detector's protocol, the calibrated decision values and the sha256 of every file. :func:`load_bundle` refuses a
bundle whose files are missing or differ from the manifest (a half-copied or edited model would otherwise score
silently wrong), or that was written for a newer bundle format than this runtime reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmad_runtime.errors import VlmadError
from vlmad_runtime.version import __version__

MANIFEST = "manifest.json"
#: bumped when the manifest or graph contract changes incompatibly
BUNDLE_FORMAT = 1
FORMATS = ("onnx", "openvino")
GRAPH_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
_REQUIRED = ("bundle_format", "format", "precision", "files", "preprocessing", "outputs", "detector")
_HINT = "re-export the bundle with `vlmad export`, or copy the whole bundle folder again"


class BundleError(VlmadError):
    """A bundle folder that cannot be used as it is (missing, incomplete, tampered, too new)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (graphs are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of ``folder``, with the keys this runtime needs present and a format it can read."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"bundle folder {folder} does not exist", "pass the folder written by `vlmad export`")
    if not path.is_file():
        raise BundleError(f"{folder} has no {MANIFEST}: not a bundle, or an incomplete copy", _HINT)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read {path}: {err}", _HINT) from None
    missing = [k for k in _REQUIRED if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}", _HINT)
    fmt = int(manifest["bundle_format"])
    if fmt > BUNDLE_FORMAT:
        raise BundleError(
            f"bundle format {fmt} is newer than this vlmad-runtime {__version__} reads ({BUNDLE_FORMAT})",
            f"upgrade vlmad-runtime to {manifest.get('vlmad_version', 'the exporting version')} or newer",
        )
    needed = str(manifest.get("runtime_requires", "")).removeprefix(">=")
    if needed and _version_tuple(needed) > _version_tuple(__version__):
        raise BundleError(
            f"this bundle needs vlmad-runtime >= {needed}; this is {__version__}",
            f"pip install 'vlmad-runtime>={needed}'",
        )
    if manifest["format"] not in FORMATS:
        raise BundleError(f"unknown graph format {manifest['format']!r} in {path}", _HINT)
    return manifest


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:3])
    except ValueError:
        raise BundleError(f"unreadable version {text!r} in the manifest", _HINT) from None


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every graph file listed, present and with its recorded sha256."""
    files: dict[str, str] = manifest["files"]
    for name in GRAPH_FILES[manifest["format"]]:
        if name not in files:
            raise BundleError(f"the manifest of {folder} does not list {name}", _HINT)
    for name, digest in files.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"the manifest of {folder} names a file outside the bundle: {name}", _HINT)
        if not path.is_file():
            raise BundleError(f"bundle {folder} is incomplete: {name} is missing", _HINT)
        if sha256_file(path) != digest:
            raise BundleError(
                f"bundle {folder}: {name} does not match its sha256 in the manifest (modified or damaged)", _HINT
            )


#: manifest ``preprocessing.resize`` of bundles whose method resizes the uint8 image with PIL (see preprocess)
RESIZE_PIL_UINT8 = "pil-bicubic-uint8"


def preprocess(images: Sequence[Image.Image], spec: dict[str, Any]) -> np.ndarray:
    """RGB images -> the graph input (B, 3, S, S) float32: bicubic antialiased resize of the [0, 1] image per
    channel (PIL's float resampling, what the exporting model's antialiased bicubic also computes), then mean/std.
    ``resize`` = :data:`RESIZE_PIL_UINT8` (methods whose reference resizes the uint8 image with PIL, e.g. APRIL-GAN,
    AnomalyCLIP): PIL bicubic on the uint8 RGB image, then ``/ 255`` — the two differ by up to ~0.1 after mean/std."""
    size = int(spec["image_size"])
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        if spec.get("resize") == RESIZE_PIL_UINT8:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            out[i] = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
            continue
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
        for c in range(3):
            chan = arr[..., c]
            if chan.shape != (size, size):
                chan = np.asarray(Image.fromarray(chan, "F").resize((size, size), Image.Resampling.BICUBIC))
            out[i, c] = chan
    return (out - mean) / std


@dataclass
class BundleInfo:
    """The exporting detector's protocol (what `vlmad detect` records in run.json), plus the bundle's own facts."""

    fields: dict[str, Any]

    @property
    def random_weights(self) -> bool:
        return bool(self.fields.get("random_weights"))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass
class BundlePrediction:
    """Scores (B,) and maps (B, S, S), numpy float32; ``numpy()`` mirrors the torch Prediction's."""

    image_scores: np.ndarray
    anomaly_maps: np.ndarray

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.image_scores, self.anomaly_maps

    def __len__(self) -> int:
        return int(self.image_scores.shape[0])


class Bundle:
    """A checked bundle and its graph compiled for CPU: ``predict(images)`` like a detector's."""

    def __init__(self, folder: str | Path, threads: int | None = None, batch_size: int = 8) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        verify_files(self.folder, self.manifest)
        self.format = self.manifest["format"]
        self.batch_size = max(1, int(batch_size))
        self._run = (
            _openvino_runner(self.folder, threads) if self.format == "openvino" else _onnx_runner(self.folder, threads)
        )

    @property
    def image_size(self) -> int:
        return int(self.manifest["preprocessing"]["image_size"])

    @property
    def decision(self) -> dict[str, Any]:
        """threshold / pixel_threshold / map_scale recorded at export (empty without --deploy)."""
        return dict(self.manifest.get("decision") or {})

    def deployment(self):
        """The deploy file exported with the bundle (checked by sha256 like the graph), or None."""
        from vlmad_runtime.deploy import load_deploy

        path = self.folder / "deploy.json"
        return load_deploy(path) if "deploy.json" in self.manifest["files"] else None

    def check_deployment(self, deployment, force: bool = False) -> list[tuple[str, Any, Any]]:
        """A deploy file given on the line PC must have been calibrated for the detector inside the bundle: its
        fingerprint is compared with the one the bundle recorded at export (every differing field named; with
        ``force`` the differences are returned instead of raised)."""
        protocol = self.manifest.get("protocol")
        if not protocol:
            raise BundleError(
                f"{self.folder}: the bundle records no detector fingerprint, so {deployment.where} cannot "
                "be checked against it",
                "re-export the bundle with this vlmad version",
            )
        return deployment.check(protocol, force=force)

    def info(self) -> BundleInfo:
        fields = dict(self.manifest["detector"])
        fields.update(bundle=str(self.folder), bundle_format=self.format, bundle_precision=self.manifest["precision"])
        return BundleInfo(fields)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed (B, 3, S, S) float32 -> (scores (B,), maps (B, S, S)), in chunks of ``batch_size``."""
        scores, maps = [], []
        for start in range(0, batch.shape[0], self.batch_size):
            s, m = self._run(np.ascontiguousarray(batch[start : start + self.batch_size], dtype=np.float32))
            scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
            maps.append(np.asarray(m, dtype=np.float32))
        if not scores:
            return np.empty(0, np.float32), np.empty((0, self.image_size, self.image_size), np.float32)
        return np.concatenate(scores), np.concatenate(maps)

    def predict(self, images: Sequence[Image.Image] | np.ndarray) -> BundlePrediction:
        """PIL images (preprocessed as the manifest says) or an already preprocessed array."""
        batch = images if isinstance(images, np.ndarray) else preprocess(images, self.manifest["preprocessing"])
        return BundlePrediction(*self.run(batch))


def _onnx_runner(folder: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise BundleError(
            "this bundle is an ONNX graph but onnxruntime is not installed", "pip install 'vlmad-runtime[onnx]'"
        ) from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray):
        return session.run(["scores", "maps"], {"images": batch})

    return run


def _openvino_runner(folder: Path, threads: int | None):
    try:
        import openvino as ov
    except ImportError:
        raise BundleError(
            "this bundle is an OpenVINO graph but openvino is not installed", "pip install 'vlmad-runtime[openvino]'"
        ) from None
    # fp32 bundles must run in f32: on CPUs with bf16 units OpenVINO would otherwise pick bf16 by default
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)
    request = compiled.create_infer_request()
    outputs = [compiled.output("scores"), compiled.output("maps")]

    def run(batch: np.ndarray):
        result = request.infer({0: batch})
        return result[outputs[0]].copy(), result[outputs[1]].copy()

    return run


def load_bundle(folder: str | Path, threads: int | None = None, batch_size: int = 8) -> Bundle:
    """Check ``folder`` against its manifest and compile its graph (onnxruntime or OpenVINO, CPU)."""
    return Bundle(folder, threads=threads, batch_size=batch_size)
