"""`vlmad detect --bundle`: the same job as `vlmad-runtime detect`, from the vlmad command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmad_runtime.errors import VlmadError


def detect_with_bundle(
    bundle_dir: Path,
    class_name: str,
    paths: list[Path],
    out: Path,
    save_maps: bool,
    overlay: bool,
    batch_size: int,
    on_error: str,
    deployment: Any,
    given: list[Any],
) -> None:
    """Score ``paths`` with a bundle; model options are refused (the bundle fixes model, class and memory)."""
    from vlmad.cli.common import console
    from vlmad_runtime.bundle import load_bundle
    from vlmad_runtime.jobs import DetectionOptions, run_detection

    if any(given):
        raise VlmadError(
            "--bundle fixes the model, class name and references; other model options conflict",
            "drop --class-name/--reference/--model/--pretrained/--checkpoint/--heads, or --bundle",
        )
    bundle = load_bundle(bundle_dir, batch_size=batch_size)
    if class_name != bundle.manifest.get("class_name"):
        raise VlmadError(
            f"bundle {bundle_dir} was exported for class {bundle.manifest.get('class_name')!r}, not {class_name!r}",
            "pass the bundle of this product, or its class name",
        )
    opts = DetectionOptions(
        save_maps=save_maps,
        overlay=overlay,
        batch_size=batch_size,
        on_error=on_error,
        deployment=deployment if deployment is not None else bundle.deployment(),
    )
    rows = run_detection(bundle, paths, out, opts)
    failed = [r for r in rows if r.error]
    console.print(f"scored {len(rows) - len(failed)} image(s) with bundle {bundle_dir} -> {out / 'scores.csv'}")
    for r in failed:
        console.print(f"[yellow]skipped[/] {r.path}: {r.error}")
