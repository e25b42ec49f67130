"""`vlmad detect`: score images (and write heatmaps) with one detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmad.cli import app, on_interrupt
from vlmad.cli.common import (
    ArtefactOpt,
    BatchOpt,
    CheckpointOpt,
    ClassNameOpt,
    DeviceOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    PrecisionOpt,
    PretrainedOpt,
    PromptOpt,
    RandomOpt,
    artefact_kwargs,
    build_detector,
    console,
    progress,
)
from vlmad_runtime.errors import VlmadError


@app.command()
def detect(
    images: Annotated[list[str], typer.Argument(help="Image files, folders, quoted glob patterns ('parts/**/*.png')"
                                                " or .txt files listing one image path per line.")],
    class_name: ClassNameOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (scores.csv, maps/, overlays/).")],
    recursive: Annotated[bool, typer.Option("--recursive", "-R", help="Also score images in subfolders.")] = False,
    method: MethodOpt = None,
    reference: Annotated[
        list[Path] | None, typer.Option("--reference", "-r", help="Normal reference image (repeat for K-shot).")
    ] = None,
    reference_dir: Annotated[
        Path | None, typer.Option("--reference-dir", help="Directory of normal reference images (K-shot).")
    ] = None,
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
    overlay: Annotated[bool, typer.Option("--overlay", help="Write overlays/<stem>.png heatmaps.")] = False,
    deploy: Annotated[
        Path | None, typer.Option("--deploy", help="deploy.json with a calibrated threshold -> decisions.")
    ] = None,
    on_error: Annotated[str, typer.Option("--on-error", help="skip (record) or stop on unreadable images.")] = "skip",
    allow_untrained: Annotated[
        bool, typer.Option("--allow-untrained", help="Run without the method's required artefact, e.g. random "
                           "APRIL-GAN heads (smoke test only).")
    ] = False,
) -> None:
    """Score IMAGES for anomalies; writes OUT/scores.csv (path,score,...) and optional maps and overlays."""
    from vlmad.cli.inputs import collect_images
    from vlmad.jobs import run_detection
    from vlmad_runtime.deploy import load_deploy

    paths = collect_images(images, recursive=recursive)
    refs = collect_images(([reference_dir] if reference_dir else []) + list(reference or []))
    threshold = load_deploy(deploy)["threshold"] if deploy else None
    detector = build_detector(method, model, pretrained, checkpoint, random_weights, device, precision,
                              prompt_set, no_cache, heads, batch_size,
                              extra=artefact_kwargs(method, None, skip=True) if allow_untrained else None)
    with console.status(f"text embeddings for {class_name!r}"):
        detector.setup(class_name)
    if refs:
        with console.status(f"{len(refs)}-shot reference memory"):
            detector.fit(refs)
    on_interrupt(f"the images scored so far are kept in {out / 'scores.csv'}; rerunning the same command scores "
                 "them all again")
    with progress(len(paths), "detect") as advance:
        rows = run_detection(detector, paths, out, save_maps=save_maps, overlay=overlay, batch_size=batch_size,
                             on_error=on_error, threshold=threshold, progress=advance)
    failed = [r for r in rows if r.error]
    console.print(f"scored {len(rows) - len(failed)} image(s) -> {out / 'scores.csv'}")
    for r in failed:
        console.print(f"[yellow]skipped[/] {r.path}: {r.error}")
    if detector.info().random_weights:
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        console.print(f"[bold red]{RANDOM_WEIGHTS_STAMP}[/]")
    if len(failed) == len(rows):
        raise VlmadError(f"no image could be scored ({len(failed)} unreadable)",
                         "check the skipped files above; accepted formats: png, jpg, bmp, tif, webp")

