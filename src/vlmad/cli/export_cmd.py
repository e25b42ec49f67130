"""`vlmad export`: a detector (same options as `vlmad detect`) -> a verified ONNX/OpenVINO bundle folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmad.cli import app, on_interrupt
from vlmad.cli.common import (
    AllowUntrainedOpt,
    CheckpointOpt,
    ClassNameOpt,
    HeadsOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    PretrainedOpt,
    PromptOpt,
    RandomOpt,
    ReferenceDirOpt,
    ReferenceOpt,
    build_detector,
    console,
)

#: images compared between torch and the runtime at export when none are given (deterministic, synthetic)
DEFAULT_VERIFY_IMAGES = 4


@app.command("export")
def export(
    class_name: ClassNameOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to create (must not exist or be empty).")],
    method: MethodOpt = None,
    reference: ReferenceOpt = None,
    reference_dir: ReferenceDirOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    random_weights: RandomOpt = False,
    prompt_set: PromptOpt = None,
    no_cache: NoCacheOpt = False,
    heads: HeadsOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx (onnxruntime) or openvino.")] = "onnx",
    precision: Annotated[
        str, typer.Option("--precision", help="fp32 (exact), fp16 or int8 (OpenVINO; gap measured at export).")
    ] = "fp32",
    calibration_dir: Annotated[
        Path | None, typer.Option("--calibration-dir", help="Normal images: int8 calibration and export check.")
    ] = None,
    deploy: Annotated[
        Path | None, typer.Option("--deploy", help="deploy.json: threshold (and map scale) stored in the bundle.")
    ] = None,
    allow_untrained: AllowUntrainedOpt = False,
) -> None:
    """Export a ready detector (text and few-shot memory baked in) to OUT, checked against torch at export."""
    from vlmad.cli.detect_cmd import check_deploy
    from vlmad.export.build import ExportRequest, export_bundle
    from vlmad.fingerprint import references_fingerprint
    from vlmad.jobs import expand_images
    from vlmad.methods.inputs import to_model_input
    from vlmad.testing import random_images
    from vlmad_runtime.deploy import load_deploy

    refs = expand_images(([reference_dir] if reference_dir else []) + list(reference or []))
    calib = expand_images([calibration_dir]) if calibration_dir else []
    deployment = load_deploy(deploy) if deploy else None
    detector = build_detector(
        method,
        model,
        pretrained,
        checkpoint,
        random_weights,
        "cpu",
        "fp32",
        prompt_set,
        no_cache,
        heads,
        extra={"allow_untrained": True} if allow_untrained else None,
    )
    with console.status(f"text embeddings for {class_name!r}"):
        detector.setup(class_name)
    if refs:
        with console.status(f"{len(refs)}-shot reference memory"):
            detector.fit(refs)
    check_deploy(deployment, detector, class_name, refs, force=False)  # refuses another detector's threshold
    on_interrupt(f"the bundle in {out} is incomplete: delete it and rerun the same command (export does not resume)")
    bb = detector.backbone
    calibration = to_model_input(calib, bb) if calib else None
    verify = (
        calibration[:8]
        if calibration is not None
        else (
            to_model_input(refs[:8], bb)
            if refs
            else bb.preprocess_tensor(random_images(DEFAULT_VERIFY_IMAGES, bb.image_size))
        )
    )
    req = ExportRequest(
        out=out,
        format=fmt,
        precision=precision,
        verify=verify,
        calibration=calibration,
        deploy=deployment,
        class_name=class_name,
        reference_fingerprint=references_fingerprint(refs),
    )
    with console.status(f"exporting {fmt} {precision} and checking it against torch"):
        manifest = export_bundle(detector, req)
    ver = manifest["verification"]
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    console.print(
        f"bundle -> {out} ({size:.1f} MiB); on {ver['images']} image(s) vs torch fp32: max|d score| "
        f"{ver['max_abs_score']:.2e}, max|d map| {ver['max_abs_map']:.2e}, map rank corr "
        f"{ver['map_rank_correlation']:.6f}" + ("" if ver["exact"] else " (not exact: measured gap)")
    )
