"""`vlmad export`: a ready detector -> a verified bundle folder (graph + manifest), see docs/export.md.

The graph is traced once to ONNX (the OpenVINO model is converted from that same file, so both formats share one
trace). Before the bundle is moved into place, the runtime that will serve it (:mod:`vlmad_runtime.bundle`) runs
it on a few images and its outputs are compared with the torch detector's; fp32 bundles above ``tolerance`` are
refused, fp16/int8 gaps are measured and recorded (never claimed exact).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmad.fingerprint import detector_fingerprint
from vlmad_runtime.bundle import BUNDLE_FORMAT, FORMATS, MANIFEST, RESIZE_PIL_UINT8, Bundle, sha256_file
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.version import __version__

PRECISIONS = ("fp32", "fp16", "int8")
#: max-abs difference (scores and maps) allowed between an fp32 bundle and torch fp32
FP32_TOLERANCE = 1e-4
OPSET = 17


@dataclass
class ExportRequest:
    """What to export and how; ``verify`` is a preprocessed (N, 3, S, S) batch compared at export time,
    ``calibration`` the preprocessed normal images int8 quantisation is calibrated on."""

    out: Path
    format: str = "onnx"
    precision: str = "fp32"
    verify: torch.Tensor | None = None
    calibration: torch.Tensor | None = None
    deploy: Any = None  # a checked vlmad_runtime.deploy.Deployment: stored as deploy.json in the bundle
    class_name: str | None = None
    reference_fingerprint: str | None = None  # order-free digest of the few-shot references (vlmad.fingerprint)
    tolerance: float = FP32_TOLERANCE
    #: an ONNX file already traced from this detector's graph (e.g. another bundle's model.onnx): reused instead of
    #: tracing again, so one detector's onnx/openvino/int8 bundles share one trace (a trace of a ViT takes minutes);
    #: the verification below still compares the result with the torch detector
    traced: Path | None = None


def check_request(req: ExportRequest) -> None:
    """Refuse combinations that cannot give a faithful bundle, before anything heavy runs."""
    if req.format not in FORMATS:
        raise VlmadError(f"unknown export format {req.format!r}", f"choose one of {', '.join(FORMATS)}")
    if req.precision not in PRECISIONS:
        raise VlmadError(f"unknown export precision {req.precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    if req.precision != "fp32" and req.format != "openvino":
        raise VlmadError(f"--precision {req.precision} is made by OpenVINO", "use --format openvino (or fp32)")
    if req.precision == "int8" and (req.calibration is None or req.calibration.shape[0] == 0):
        raise VlmadError(
            "int8 quantisation needs calibration images",
            "pass --calibration-dir with normal images of the product (a few dozen)",
        )
    if req.out.exists() and any(req.out.iterdir()):
        raise VlmadError(f"{req.out} exists and is not empty", "choose a new --out folder or remove it")


def trace_onnx(graph: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace ``graph`` to ONNX with a dynamic batch axis (input ``images``; outputs ``scores``, ``maps``)."""
    axes = {"images": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["scores", "maps"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def to_openvino(onnx_path: Path, folder: Path, precision: str, calibration: torch.Tensor | None) -> None:
    """ONNX -> model.xml/.bin; fp16 compresses weights, int8 is NNCF post-training quantisation (transformer
    preset) on the calibration images."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        import nncf

        items = [calibration[i : i + 1].numpy() for i in range(calibration.shape[0])]
        model = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
    ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=precision == "fp16")


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (ties broken by order; enough to compare rankings of continuous scores)."""
    if a.size < 2:
        return 1.0
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def measure_gap(bundle: Bundle, detector, batch: torch.Tensor) -> dict[str, Any]:
    """Runtime vs torch fp32 on ``batch``: max-abs of scores and maps, rank correlation of the maps."""
    pred = detector.predict(batch)
    ref_s, ref_m = pred.numpy()
    got_s, got_m = bundle.run(batch.numpy())
    return {
        "images": int(batch.shape[0]),
        "max_abs_score": float(np.abs(got_s - ref_s).max()),
        "max_abs_map": float(np.abs(got_m - ref_m).max()),
        "map_rank_correlation": _rank_correlation(got_m.ravel(), ref_m.ravel()),
        "score_rank_correlation": _rank_correlation(got_s, ref_s),
    }


def resize_rule(detector) -> str:
    """The runtime's resize for this detector's files: the method's declared preprocessing (vlmad.backbones.
    preprocessing) — PIL bicubic on the uint8 image (APRIL-GAN, AnomalyCLIP) or the float antialiased one."""
    name = getattr(getattr(detector, "preprocessing", None), "name", None)
    return RESIZE_PIL_UINT8 if name == "pil-bicubic" else "bicubic-antialias"


def build_manifest(detector, req: ExportRequest) -> dict[str, Any]:
    """Everything but files and verification: preprocessing, outputs, protocol, decision values."""
    bb = detector.backbone
    size = int(detector.image_size)
    dep = req.deploy
    decision: dict[str, Any] = {}
    if dep is not None:
        decision["threshold"] = dep.threshold
        if dep.pixel is not None:
            decision.update(pixel_threshold=dep.pixel.pixel_threshold, map_scale=list(dep.pixel.map_scale))
    # the exporting detector's fingerprint, as deploy files record it: the runtime checks a --deploy file against it
    protocol = detector_fingerprint(detector.info().as_dict(), str(req.class_name), req.reference_fingerprint)
    return {
        "bundle_format": BUNDLE_FORMAT,
        "vlmad_version": __version__,
        "runtime_requires": f">={__version__}",
        "format": req.format,
        "precision": req.precision,
        "class_name": req.class_name,
        "detector": detector.info().as_dict(),
        "backbone_fingerprint": bb.fingerprint,
        "protocol": protocol,
        "preprocessing": {
            "image_size": size,
            "resize": resize_rule(detector),
            "value_range": [0.0, 1.0],
            "mean": list(bb.mean),
            "std": list(bb.std),
            "layout": "NCHW",
            "color": "RGB",
        },
        "inputs": [{"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32"}],
        "outputs": [
            {"name": "scores", "shape": ["batch"], "dtype": "float32"},
            {"name": "maps", "shape": ["batch", size, size], "dtype": "float32"},
        ],
        "decision": decision,
    }


def export_bundle(detector, req: ExportRequest) -> dict[str, Any]:
    """Write a verified bundle of a ready ``detector`` (setup, and fit for few-shot, done) to ``req.out``."""
    check_request(req)
    if not callable(getattr(detector, "export_module", None)):
        raise VlmadError(
            f"{detector.info().method} has no export graph yet (no export_module())",
            "export one of the methods that provide export_module(); see docs/export.md",
        )
    size = int(detector.image_size)
    verify = req.verify if req.verify is not None and req.verify.shape[0] else torch.zeros(1, 3, size, size)
    graph = detector.export_module()
    req.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{req.out.name}.", dir=req.out.parent))
    try:
        folder = work / "bundle"
        folder.mkdir()
        onnx_path = (folder if req.format == "onnx" else work) / "model.onnx"
        if req.traced is not None:
            shutil.copyfile(req.traced, onnx_path)
        else:
            trace_onnx(graph, verify[:1].float(), onnx_path)
        if req.format == "openvino":
            to_openvino(onnx_path, folder, req.precision, req.calibration)
        if req.deploy is not None:  # the runtime reads it with the same deploy reader as `vlmad detect`
            (folder / "deploy.json").write_text(json.dumps(req.deploy.record, indent=2) + "\n")
        manifest = build_manifest(detector, req)
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(folder.iterdir())}
        _write_manifest(folder, manifest)
        gap = measure_gap(Bundle(folder), detector, verify.float())
        gap.update(exact=req.precision == "fp32", tolerance=req.tolerance if req.precision == "fp32" else None)
        manifest["verification"] = gap
        _write_manifest(folder, manifest)
        if req.precision == "fp32" and max(gap["max_abs_score"], gap["max_abs_map"]) > req.tolerance:
            raise VlmadError(
                f"the exported graph differs from torch by {max(gap['max_abs_score'], gap['max_abs_map']):.3g} "
                f"(> {req.tolerance:g}); the bundle was not written",
                "report this with the model name; try the other --format meanwhile",
            )
        req.out.parent.mkdir(parents=True, exist_ok=True)
        if req.out.exists():
            req.out.rmdir()
        folder.rename(req.out)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
