"""`vlmad detect`: score images (and write heatmaps) with one detector."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vlmad.cli import app, on_interrupt
from vlmad.cli.common import (
    AllowUntrainedOpt,
    ArtefactOpt,
    BatchOpt,
    CheckpointOpt,
    ClassNameOpt,
    DeployOpt,
    DeviceOpt,
    ForceDeployOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    OnErrorOpt,
    PrecisionOpt,
    PretrainedOpt,
    PromptOpt,
    RandomOpt,
    ReferenceDirOpt,
    ReferenceOpt,
    artefact_kwargs,
    build_detector,
    console,
    progress,
)
from vlmad.cli.executor_opts import RayAddressOpt
from vlmad_runtime.deploy import NOT_CALIBRATED_NOTE
from vlmad_runtime.errors import VlmadError

if TYPE_CHECKING:
    from vlmad.jobs import DetectionRow
    from vlmad.methods.base import Detector
    from vlmad_runtime.deploy import Deployment

NON_FINITE = "non_finite_score"  # vlmad.jobs.NON_FINITE (not imported here: keeps `vlmad --help` torch-free)


@app.command()
def detect(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders, quoted glob patterns ('parts/**/*.png')"
            " or .txt files listing one image path per line."
        ),
    ],
    class_name: ClassNameOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (scores.csv, maps/, overlays/).")],
    recursive: Annotated[bool, typer.Option("--recursive", "-R", help="Also score images in subfolders.")] = False,
    method: MethodOpt = None,
    reference: ReferenceOpt = None,
    reference_dir: ReferenceDirOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    random_weights: RandomOpt = False,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = 8,
    prompt_set: PromptOpt = None,
    no_cache: NoCacheOpt = False,
    heads: ArtefactOpt = None,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="Write maps/<stem>.npy (float32).")] = False,
    overlay: Annotated[
        bool,
        typer.Option(
            "--overlay",
            help="Write overlays/<stem>.png QC panels: original, heatmap with colour bar (calibrated scale "
            "with --deploy, else one scale per run), predicted mask, score, decision.",
        ),
    ] = False,
    save_masks: Annotated[
        bool,
        typer.Option(
            "--save-masks",
            help="Write masks/<stem>.png binary defect masks (needs --deploy with a pixel threshold); "
            "scores.csv gets defect_area.",
        ),
    ] = False,
    deploy: DeployOpt = None,
    force_deploy: ForceDeployOpt = False,
    on_error: OnErrorOpt = "skip",
    allow_untrained: AllowUntrainedOpt = False,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            help="local, or ray: a Ray Data pipeline over an actor pool (large sets; list files are "
            "streamed; a rerun resumes).",
        ),
    ] = "local",
    workers: Annotated[int, typer.Option("--workers", min=1, help="With --executor ray: detector actors.")] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option("--gpus-per-worker", min=0, help="With --executor ray: GPUs per detector actor.")
    ] = 0.0,
    ray_address: RayAddressOpt = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="Run an exported bundle (`vlmad export`; its class must be --class-name)."),
    ] = None,
) -> None:
    """Score IMAGES for anomalies; writes OUT/scores.csv (path,score,...) and optional maps and overlays."""
    options = dict(locals())  # the parsed options by name, forwarded to the Ray path and the detector builder
    if executor != "local":
        from vlmad.cli.ray_detect import detect_on_ray_cli

        options.pop("bundle")
        return detect_on_ray_cli(**options)
    from vlmad.cli.inputs import collect_images
    from vlmad.jobs import DetectionOptions, run_detection
    from vlmad_runtime.deploy import load_deploy

    paths = collect_images(images, recursive=recursive)
    refs = collect_images(([reference_dir] if reference_dir else []) + list(reference or []))
    deployment = load_deploy(deploy) if deploy else None
    if bundle is not None:
        from vlmad.export.run import detect_with_bundle

        job = dict(
            save_maps=save_maps, overlay=overlay, batch_size=batch_size, on_error=on_error, deployment=deployment
        )
        return detect_with_bundle(
            bundle, class_name, paths, out, given=[refs, model, pretrained, checkpoint, heads], **job
        )
    detector = ready_detector(options, refs)
    opts = DetectionOptions(
        save_maps=save_maps,
        overlay=overlay,
        save_masks=save_masks,
        batch_size=batch_size,
        on_error=on_error,
        deployment=deployment,
        forced=check_deploy(deployment, detector, class_name, refs, force_deploy),
    )
    on_interrupt(
        f"the images scored so far are kept in {out / 'scores.csv'}; rerunning the same command scores them all again"
    )
    with progress(len(paths), "detect") as advance:
        rows = run_detection(detector, paths, out, opts, progress=advance)
    finish_detection(rows, out, detector.info().random_weights)


#: the `vlmad detect` options that choose and build the detector (the arguments of ``build_detector``)
DETECTOR_OPTIONS = (
    "method",
    "model",
    "pretrained",
    "checkpoint",
    "random_weights",
    "device",
    "precision",
    "prompt_set",
    "no_cache",
    "heads",
    "batch_size",
)


def ready_detector(options: dict[str, Any], refs: list[Path]) -> Detector:
    """The detector of the parsed options, set up for the class and fitted on the references (if any)."""
    extra = artefact_kwargs(options["method"], None, skip=True) if options["allow_untrained"] else None
    detector = build_detector(**{k: options[k] for k in DETECTOR_OPTIONS}, extra=extra)
    class_name = options["class_name"]
    with console.status(f"text embeddings for {class_name!r}"):
        detector.setup(class_name)
    if refs:
        with console.status(f"{len(refs)}-shot reference memory"):
            detector.fit(refs)
    return detector


def finish_detection(rows: list[DetectionRow], out: Path, random_weights: bool) -> None:
    """Print the summary (and the random-weights stamp); a run where no image got a usable score fails."""
    failed = report_rows(rows, out)
    if random_weights:
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        console.print(f"[bold red]{RANDOM_WEIGHTS_STAMP}[/]")
    if any(r.error == NON_FINITE for r in rows):
        raise VlmadError(
            f"{sum(r.error == NON_FINITE for r in rows)} image(s) got a non-finite score (NaN/inf): "
            "no decision for them (error non_finite_score in scores.csv)",
            "the weights produce NaN/inf: check --checkpoint/--heads and --precision",
        )
    if len(failed) == len(rows):
        raise VlmadError(
            f"no image could be scored ({len(failed)} unreadable)",
            "check the skipped files above; accepted formats: png, jpg, bmp, tif, webp",
        )


def check_deploy(
    deployment: Deployment | None, detector: Detector, class_name: str, refs: list[Path], force: bool
) -> bool:
    """Compare the deploy file's fingerprint with this detector's; refuse a mismatch unless ``force``.

    Returns True when a mismatch was forced through (rows are then labelled)."""
    from vlmad.fingerprint import detector_fingerprint, references_fingerprint

    if deployment is None:
        if force:
            raise VlmadError("--force-deploy without --deploy", "pass --deploy deploy.json")
        return False
    running = detector_fingerprint(detector.info().as_dict(), class_name, references_fingerprint(refs))
    diffs = deployment.check(running, force=force)
    for name, recorded, now in diffs:
        console.print(f"[bold yellow]--force-deploy:[/] {name} calibrated {recorded!r}, running {now!r}")
    if diffs:
        console.print(f"[bold yellow]every decision is labelled '{NOT_CALIBRATED_NOTE}'[/]")
    return bool(diffs)


def report_rows(rows: list[DetectionRow], out: Path) -> list[DetectionRow]:
    """Print the summary, the heatmap scale in use and the rows without a result; returns those rows."""
    import json

    scale = json.loads((out / "run.json").read_text()).get("heatmap_scale")
    if scale:
        console.print(f"overlays: heatmap scale [{scale['lo']:.4g}, {scale['hi']:.4g}], {scale['source']}")
    failed = [r for r in rows if r.error]
    console.print(f"scored {len(rows) - len(failed)} image(s) -> {out / 'scores.csv'}")
    for r in failed:
        console.print(f"[yellow]{'no decision' if r.error == NON_FINITE else 'skipped'}[/] {r.path}: {r.error}")
    return failed
