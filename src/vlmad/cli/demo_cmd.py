"""`vlmad demo`: WinCLIP zero-/few-shot on a generated dataset, with a summary and heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmad.cli import app, on_interrupt
from vlmad.cli.common import ArchOpt, CheckpointOpt, DeviceOpt, PretrainedTagOpt, console


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("demo-out"),
    model: ArchOpt = "ViT-B-16-plus-240",
    pretrained: PretrainedTagOpt = "laion400m_e31",
    checkpoint: CheckpointOpt = None,
    fallback_random_weights: Annotated[
        bool,
        typer.Option(
            "--fallback-random-weights",
            help="If pretrained weights are unavailable, run on random weights (meaningless scores).",
        ),
    ] = False,
    shots: Annotated[int, typer.Option("--shots", min=0)] = 2,
    device: DeviceOpt = "cpu",
) -> None:
    """Generate a demo dataset, run WinCLIP zero-shot and K-shot, write scores, overlays and a summary."""
    from vlmad.demo import run_demo

    on_interrupt(
        f"what finished is kept in {out}; rerun the same command to run the demo again (the generated "
        "dataset is reused)"
    )
    res = run_demo(
        out,
        model=model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        fallback_random_weights=fallback_random_weights,
        shots=shots,
        device=device,
    )
    for name, m in res.metrics.items():
        console.print(
            f"{name}: image AUROC {m['image_auroc']:.3f}, pixel AUROC {m['pixel_auroc']:.3f}, "
            f"{m['s_per_image']:.2f} s/image"
        )
    console.print(f"summary: {res.summary_md} and {res.summary_html}")
    if res.random_weights:
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        console.print(f"[bold red]{RANDOM_WEIGHTS_STAMP}[/]")
