"""`vlmad detect --executor ray`: the command-line side of :mod:`vlmad.distributed`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmad_runtime.errors import VlmadError


def detect_on_ray_cli(
    images: list[Path],
    class_name: str,
    out: Path,
    method: str,
    reference: list[Path] | None,
    reference_dir: Path | None,
    model: str | None,
    pretrained: str | None,
    checkpoint: Path | None,
    random_weights: bool,
    device: str,
    precision: str,
    batch_size: int,
    prompt_set: str | None,
    no_cache: bool,
    heads: Path | None,
    save_maps: bool,
    overlay: bool,
    deploy: Path | None,
    on_error: str,
    allow_untrained: bool,
    executor: str,
    workers: int,
    gpus_per_worker: float,
    ray_address: str | None,
    recursive: bool = False,
    force_deploy: bool = False,
    save_masks: bool = False,
) -> None:
    """Same options and outputs as local detect; the detector is built on each Ray actor, not here."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vlmad.cli.common import console
    from vlmad.cli.inputs import collect_images
    from vlmad.distributed import detect_on_ray, detector_builder
    from vlmad_runtime.deploy import load_deploy

    if executor != "ray":
        raise VlmadError(f"--executor must be local or ray, got {executor!r}")
    refs = [p.resolve() for p in collect_images(([reference_dir] if reference_dir else []) + list(reference or []))]
    if save_masks:
        raise VlmadError("--save-masks is not available with --executor ray", "use --executor local")
    kwargs: dict[str, Any] = dict(
        method=method,
        model=model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        random_weights=random_weights,
        device=device,
        precision=precision,
        prompt_set=prompt_set,
        no_cache=no_cache,
        heads=heads,
        batch_size=batch_size,
        extra={"allow_untrained": True} if allow_untrained else None,
    )
    deployment = checked_deployment(load_deploy(deploy), kwargs, class_name, refs, force_deploy) if deploy else None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("detect (ray)", total=None)
        counts = detect_on_ray(
            detector_builder(**kwargs),
            [str(i) for i in images],
            class_name,
            out,
            refs,
            save_maps=save_maps,
            overlay=overlay,
            batch_size=batch_size,
            deployment=deployment,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            ray_address=ray_address,
            on_error=on_error,
            progress=lambda n: bar.advance(task, n),
            recursive=recursive,
        )
    console.print(
        f"scored {counts['scored']} image(s), {counts['errors']} unreadable, {counts['skipped']} already "
        f"done -> {out / 'scores.csv'}"
    )
    if counts["non_finite"]:
        raise VlmadError(
            f"{counts['non_finite']} image(s) got a non-finite score (NaN/inf): no decision for them "
            "(error non_finite_score in scores.csv)",
            "the weights produce NaN/inf: check --checkpoint/--heads and --precision",
        )


def checked_deployment(
    deployment: Any, builder_kwargs: dict[str, Any], class_name: str, refs: list[Path], force: bool
) -> Any:
    """The deploy file after its fingerprint check against this detector (built here once: the
    actors build their own copies), exactly as local detect checks it; forced mismatches are refused here
    because Ray rows cannot carry the 'not calibrated' label."""
    from vlmad.cli.common import build_detector
    from vlmad.cli.detect_cmd import check_deploy

    detector = build_detector(**builder_kwargs)
    detector.setup(class_name)
    if refs:
        detector.fit(refs)
    if check_deploy(deployment, detector, class_name, refs, force):
        raise VlmadError(
            "--force-deploy is not available with --executor ray (rows cannot be labelled 'threshold not calibrated')",
            "use --executor local, or recalibrate for this detector",
        )
    return deployment
