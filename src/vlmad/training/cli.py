"""The `vlmad train aprilgan` command (mounted by :mod:`vlmad.cli.train_cmd` from the method spec's
``train_cli``): train APRIL-GAN's projection heads on a dataset with masks or on synthetic anomalies.

A CLI module that lives next to its training code (layer 5 in docs/architecture.md); it imports torch only
inside the command.

Writes one heads file per epoch (``epoch_NNN.safetensors`` + ``.json`` sidecar with the held-out metrics) and
``train_log.json``; pass the chosen epoch's file to detectors with ``--heads`` / ``heads=PATH``.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _parse_stages(text: str | None) -> tuple[int, ...] | None:
    if text is None or not text.strip():
        return None
    from vlmad_runtime.errors import VlmadError

    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise VlmadError(f"cannot parse stages {text!r}", "give 1-based block indices, e.g. 6,12,18,24") from None


def train_aprilgan_command(
    root_arg: Path | None = typer.Argument(None, help="Dataset folder (same as --root).", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the per-epoch heads (new or empty)."),
    root: Path | None = typer.Option(None, "--root", help="Dataset folder to train on."),
    kind: str = typer.Option("mvtec", "--dataset", "-d", help="Dataset kind: mvtec, visa or folder."),
    kind_alias: str | None = typer.Option(None, "--kind", hidden=True, help="Old name of --dataset."),
    categories: str | None = typer.Option(None, "--categories", help="Comma-separated subset (default: all)."),
    regime: str = typer.Option(
        "cross-dataset",
        "--regime",
        help="cross-dataset: the test split with masks (paper protocol; evaluate on another dataset). "
        "synthetic: normal train images with pasted anomalies.",
    ),
    epochs: int = typer.Option(15, "--epochs", help="Paper: 15 on VisA (-> MVTec AD), 3 on MVTec AD (-> VisA)."),
    seed: int = typer.Option(111, "--seed", help="Head init, shuffling, mosaics, held-out split, synthetic defects."),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (betas 0.5, 0.999)."),
    mosaic_rate: float | None = typer.Option(
        None,
        "--mosaic-rate",
        help="Probability of a 4-image mosaic (default: 0.2 for MVTec AD cross-dataset, else 0).",
    ),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Held-out source images per category."),
    synthetic_per_image: int = typer.Option(1, "--synthetic-per-image", help="Defect variants per normal image."),
    stages: str | None = typer.Option(None, "--stages", help="Blocks to tap, e.g. 6,12,18,24 (default: n/4..n)."),
    cache_gb: float = typer.Option(4.0, "--cache-gb", help="Memory for cached frozen-backbone features."),
    cache_half: bool = typer.Option(False, "--cache-half", help="Cache features in fp16 (half the memory)."),
    prompt_set: str = typer.Option("aprilgan", "--prompt-set", help="Prompt set name or YAML/JSON file."),
    class_names: str = typer.Option(
        "raw", "--class-names", help="raw ('metal_nut', the reference's, default) or display ('metal nut')."
    ),
    model: str | None = typer.Option(None, "--model", help="open_clip architecture (default ViT-L-14-336)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Hub tag (default openai for ViT-L-14-336)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Local backbone weights instead of a tag."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Random backbone (smoke tests only)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Model input side (default 518)."),
    quick_gelu: bool | None = typer.Option(
        None,
        "--quick-gelu/--no-quick-gelu",
        help="Default off for APRIL-GAN's ViT-L-14-336 at 518 px, as the reference (which builds the model "
        "without QuickGELU); --quick-gelu is the named alternative.",
    ),
    device: str = typer.Option("cpu", "--device"),
    precision: str = typer.Option("fp32", "--precision"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow a non-empty --out folder."),
) -> None:
    """Train APRIL-GAN projection heads (frozen backbone; focal + dice; one checkpoint per epoch)."""
    from vlmad.data import load_dataset
    from vlmad.training.aprilgan import TrainConfig, train_aprilgan
    from vlmad_runtime.errors import VlmadError

    if (root is None) == (root_arg is None):
        raise VlmadError("give the dataset folder once", "e.g. vlmad train aprilgan --root /data/visa --dataset visa")
    data_root = root or root_arg
    kind = kind_alias or kind

    bb: dict = {"device": device, "precision": precision}
    for key, value in (
        ("model", model),
        ("pretrained", pretrained),
        ("image_size", image_size),
        ("quick_gelu", quick_gelu),
    ):
        if value is not None:
            bb[key] = value
    if checkpoint is not None:
        bb["checkpoint"] = str(checkpoint)
    if random_weights:
        bb["random_weights"] = True
    config = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        mosaic_rate=mosaic_rate,
        val_fraction=val_fraction,
        synthetic_per_image=synthetic_per_image,
        stages=_parse_stages(stages),
        prompt_set=prompt_set,
        class_name_style=class_names,
        cache_gb=cache_gb,
        cache_half=cache_half,
    )
    reader = load_dataset(kind, data_root, categories)

    def report(rec: dict) -> None:
        def fmt(v):
            return "n/a" if v is None else f"{v:.4f}"

        typer.echo(
            f"epoch {rec['epoch']:3d}  loss {rec['train_loss']:.4f}  held-out loss {fmt(rec['val_loss'])}  "
            f"pixel AUROC {fmt(rec['val_pixel_auroc'])}  AUPRO {fmt(rec['val_aupro'])}  "
            f"({rec['seconds']:.1f} s) -> {rec['checkpoint']}"
        )

    typer.echo(
        f"training APRIL-GAN heads on {reader.name} {data_root} ({regime}); categories: {', '.join(reader.categories)}"
    )
    from vlmad.cli import on_interrupt

    on_interrupt(
        f"the finished epochs' heads are kept in {out} (epoch_NNN.safetensors, each usable with --heads); "
        "training does not resume: rerun with --overwrite to start again"
    )
    result = train_aprilgan(
        reader, out, regime=regime, config=config, backbone_kwargs=bb, overwrite=overwrite, on_epoch=report
    )
    best = result.best_epoch
    typer.echo(f"wrote {len(result.checkpoints)} checkpoints and train_log.json to {result.out_dir}")
    if best is not None:
        typer.echo(f"best held-out pixel AUROC at epoch {best}: {result.out_dir / f'epoch_{best:03d}.safetensors'}")
    typer.echo("use a checkpoint with --artefact PATH (alias --heads) (or create_detector('aprilgan', heads=PATH))")
