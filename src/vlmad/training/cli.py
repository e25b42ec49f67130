"""The `vlmad train aprilgan` and `vlmad train anomalyclip` commands (mounted by :mod:`vlmad.cli.train_cmd` from
the method specs' ``train_cli``): train APRIL-GAN's projection heads or AnomalyCLIP's prompts on a dataset with
masks or on synthetic anomalies.

A CLI module that lives next to its training code (layer 5 in docs/architecture.md); it imports torch only
inside the commands. The options both commands take are declared once below; those other commands take too
come from :mod:`vlmad.cli_options`.

Each writes one artefact per epoch (``epoch_NNN.safetensors`` + ``.json`` sidecar with the held-out metrics) and
``train_log.json``; pass the chosen epoch's file to detectors with ``--artefact PATH``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vlmad.cli_options import (
    BatchOpt,
    CheckpointOpt,
    DatasetKindOpt,
    DeviceOpt,
    ModelOpt,
    PrecisionOpt,
    PretrainedOpt,
    PromptOpt,
    RandomOpt,
)


def _parse_stages(text: str | None) -> tuple[int, ...] | None:
    if text is None or not text.strip():
        return None
    from vlmad_runtime.errors import VlmadError

    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise VlmadError(f"cannot parse stages {text!r}", "give 1-based block indices, e.g. 6,12,18,24") from None


# ------------------------------------------------------------------------------------ options of both commands
ROOT_ARG = typer.Argument(None, help="Dataset folder (same as --root).", show_default=False)
OUT = typer.Option(..., "--out", "-o", help="Folder for the per-epoch artefacts (new or empty).")
ROOT = typer.Option(None, "--root", help="Dataset folder to train on.")
KIND_ALIAS = typer.Option(None, "--kind", hidden=True, help="Old name of --dataset.")
CATEGORIES = typer.Option(None, "--categories", help="Comma-separated subset (default: all).")
REGIME = typer.Option(
    "cross-dataset",
    "--regime",
    help="cross-dataset: the test split with masks (paper protocol; evaluate on another dataset). "
    "synthetic: normal train images with pasted anomalies.",
)
SEED = typer.Option(111, "--seed", help="Init, shuffling, held-out split, synthetic defects (reference: 111).")
LR = typer.Option(1e-3, "--lr", help="Adam learning rate (betas 0.5, 0.999).")
VAL_FRACTION = typer.Option(0.1, "--val-fraction", help="Held-out source images per category.")
SYNTHETIC_PER_IMAGE = typer.Option(1, "--synthetic-per-image", help="Defect variants per normal image.")
CACHE_GB = typer.Option(4.0, "--cache-gb", help="Memory for cached frozen-backbone features.")
CACHE_HALF = typer.Option(False, "--cache-half", help="Cache features in fp16 (half the memory).")
IMAGE_SIZE = typer.Option(None, "--image-size", help="Model input side (default 518).")
OVERWRITE = typer.Option(False, "--overwrite", help="Allow a non-empty --out folder.")


def _dataset(root: Path | None, root_arg: Path | None, kind: str, kind_alias: str | None, categories, method: str):
    """(reader, root) of the dataset given once, as --root or as the argument."""
    from vlmad.data import load_dataset
    from vlmad_runtime.errors import VlmadError

    if (root is None) == (root_arg is None):
        raise VlmadError("give the dataset folder once", f"e.g. vlmad train {method} --root /data/visa --dataset visa")
    data_root = root or root_arg
    return load_dataset(kind_alias or kind, data_root, categories), data_root


_BACKBONE_PARAMS = ("model", "pretrained", "image_size", "quick_gelu")


def _backbone_kwargs(params: dict) -> dict:
    """Backbone options from a command's parameters (None = the method's default)."""
    bb: dict = {"device": params["device"], "precision": params.get("precision", "fp32")}
    bb.update({k: params[k] for k in _BACKBONE_PARAMS if params[k] is not None})
    if params["checkpoint"] is not None:
        bb["checkpoint"] = str(params["checkpoint"])
    if params["random_weights"]:
        bb["random_weights"] = True
    return bb


def _config(cls, params: dict, **overrides):
    """``cls`` (a training config dataclass) from the command's parameters named like its fields."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in params.items() if k in names}, **overrides})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _start(what: str, reader, data_root: Path, regime: str, out: Path) -> None:
    """Announce the run; on Ctrl-C say what is kept."""
    from vlmad.cli import on_interrupt

    typer.echo(f"training {what} on {reader.name} {data_root} ({regime}); categories: {', '.join(reader.categories)}")
    on_interrupt(
        f"the finished epochs' artefacts are kept in {out} (epoch_NNN.safetensors, each usable with --artefact); "
        "training does not resume: rerun with --overwrite to start again"
    )


def _finish(result, how: str) -> None:
    best = result.best_epoch
    typer.echo(f"wrote {len(result.checkpoints)} checkpoints and train_log.json to {result.out_dir}")
    if best is not None:
        typer.echo(f"best held-out pixel AUROC at epoch {best}: {result.out_dir / f'epoch_{best:03d}.safetensors'}")
    typer.echo(how)


# ---------------------------------------------------------------------------------------------- APRIL-GAN
def train_aprilgan_command(
    root_arg: Path | None = ROOT_ARG,
    out: Path = OUT,
    root: Path | None = ROOT,
    kind: DatasetKindOpt = "mvtec",
    kind_alias: str | None = KIND_ALIAS,
    categories: str | None = CATEGORIES,
    regime: str = REGIME,
    epochs: int = typer.Option(15, "--epochs", help="Paper: 15 on VisA (-> MVTec AD), 3 on MVTec AD (-> VisA)."),
    seed: int = SEED,
    batch_size: BatchOpt = 8,
    lr: float = LR,
    mosaic_rate: float | None = typer.Option(
        None,
        "--mosaic-rate",
        help="Probability of a 4-image mosaic (default: 0.2 for MVTec AD cross-dataset, else 0).",
    ),
    val_fraction: float = VAL_FRACTION,
    synthetic_per_image: int = SYNTHETIC_PER_IMAGE,
    stages: str | None = typer.Option(None, "--stages", help="Blocks to tap, e.g. 6,12,18,24 (default: n/4..n)."),
    cache_gb: float = CACHE_GB,
    cache_half: bool = CACHE_HALF,
    prompt_set: PromptOpt = "aprilgan",
    class_names: str = typer.Option(
        "raw", "--class-names", help="raw ('metal_nut', the reference's, default) or display ('metal nut')."
    ),
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    random_weights: RandomOpt = False,
    image_size: int | None = IMAGE_SIZE,
    quick_gelu: bool | None = typer.Option(
        None,
        "--quick-gelu/--no-quick-gelu",
        help="Default off for APRIL-GAN's ViT-L-14-336 at 518 px, as the reference (which builds the model "
        "without QuickGELU); --quick-gelu is the named alternative.",
    ),
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    overwrite: bool = OVERWRITE,
) -> None:
    """Train APRIL-GAN projection heads (frozen backbone; focal + dice; one checkpoint per epoch)."""
    params = dict(locals())
    from vlmad.training.aprilgan import TrainConfig, train_aprilgan

    reader, data_root = _dataset(root, root_arg, kind, kind_alias, categories, "aprilgan")
    config = _config(TrainConfig, params, stages=_parse_stages(stages), class_name_style=class_names)

    def report(rec: dict) -> None:
        typer.echo(
            f"epoch {rec['epoch']:3d}  loss {rec['train_loss']:.4f}  held-out loss {_fmt(rec['val_loss'])}  "
            f"pixel AUROC {_fmt(rec['val_pixel_auroc'])}  AUPRO {_fmt(rec['val_aupro'])}  "
            f"({rec['seconds']:.1f} s) -> {rec['checkpoint']}"
        )

    _start("APRIL-GAN heads", reader, data_root, regime, out)
    result = train_aprilgan(
        reader,
        out,
        regime=regime,
        config=config,
        backbone_kwargs=_backbone_kwargs(params),
        overwrite=overwrite,
        on_epoch=report,
    )
    _finish(
        result, "use a checkpoint with --artefact PATH (alias --heads) (or create_detector('aprilgan', heads=PATH))"
    )


# ---------------------------------------------------------------------------------------------- AnomalyCLIP
def train_anomalyclip_command(
    root_arg: Path | None = ROOT_ARG,
    out: Path = OUT,
    root: Path | None = ROOT,
    kind: DatasetKindOpt = "mvtec",
    kind_alias: str | None = KIND_ALIAS,
    categories: str | None = CATEGORIES,
    regime: str = REGIME,
    epochs: int = typer.Option(15, "--epochs", help="The reference: 15 (on VisA -> MVTec AD, and back)."),
    seed: int = SEED,
    batch_size: BatchOpt = 8,
    lr: float = LR,
    val_fraction: float = VAL_FRACTION,
    synthetic_per_image: int = SYNTHETIC_PER_IMAGE,
    stages: str | None = typer.Option(
        None, "--stages", help="Blocks whose maps enter the loss (default 6,12,18,24 on 24 blocks; train.sh: 24)."
    ),
    dpam_start: int | None = typer.Option(None, "--dpam-start", help="First DPAM block (default 6 of 24)."),
    n_ctx: int = typer.Option(12, "--n-ctx", help="Learned context tokens per prompt."),
    depth: int = typer.Option(9, "--depth", help="Text layers with learned tokens (+1)."),
    t_n_ctx: int = typer.Option(4, "--t-n-ctx", help="Learned tokens inserted per deep text layer."),
    local_weight: float = typer.Option(
        4.0, "--local-weight", help="Weight of the map losses (train.py: 4; 1 = the paper's plain sum)."
    ),
    global_ln_post: bool = typer.Option(
        False, "--global-ln-post", help="ln_post on the global embedding (the reference does not)."
    ),
    cache_gb: float = CACHE_GB,
    cache_half: bool = CACHE_HALF,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    random_weights: RandomOpt = False,
    image_size: int | None = IMAGE_SIZE,
    quick_gelu: bool | None = typer.Option(
        None, "--quick-gelu/--no-quick-gelu", help="Default on for ViT-L-14-336, as the reference's OpenAI model."
    ),
    device: DeviceOpt = "cpu",
    overwrite: bool = OVERWRITE,
) -> None:
    """Train AnomalyCLIP's object-agnostic prompts (frozen CLIP; glocal loss; one prompts file per epoch)."""
    params = dict(locals())
    from vlmad.training.anomalyclip import PromptTrainConfig, train_anomalyclip

    reader, data_root = _dataset(root, root_arg, kind, kind_alias, categories, "anomalyclip")
    config = _config(PromptTrainConfig, params, stages=_parse_stages(stages))

    def report(rec: dict) -> None:
        typer.echo(
            f"epoch {rec['epoch']:3d}  loss {rec['train_loss']:.4f} (local {rec['train_local_loss']:.4f}, "
            f"image {rec['train_image_loss']:.4f})  held-out loss {_fmt(rec['val_loss'])}  "
            f"image AUROC {_fmt(rec['val_image_auroc'])}  pixel AUROC {_fmt(rec['val_pixel_auroc'])}  "
            f"({rec['seconds']:.1f} s) -> {rec['checkpoint']}"
        )

    _start("AnomalyCLIP prompts", reader, data_root, regime, out)
    result = train_anomalyclip(
        reader,
        out,
        regime=regime,
        config=config,
        backbone_kwargs=_backbone_kwargs(params),
        overwrite=overwrite,
        on_epoch=report,
    )
    _finish(result, "use a prompts file with --artefact PATH (or create_detector('anomalyclip', prompts=PATH))")
