"""Training APRIL-GAN's projection heads (``vlmad train aprilgan``).

The backbone is frozen and run without gradients; only one ``Linear(width, embed_dim)`` per stage is trained
with Adam (lr 1e-3, betas (0.5, 0.999), batch 8) on focal + dice losses of the anomalous channel, summed over
stages (see :mod:`vlmad.training.losses`), exactly the map equations of :mod:`vlmad.methods.aprilgan`.

The two data regimes (``cross-dataset``: a dataset's test split with masks, the paper's protocol;
``synthetic``: normal train images with pasted defects), the held-out split, the feature cache and the epoch
loop are shared with the other trainers (:mod:`vlmad.training.common`).

Mosaic augmentation (the reference's, for MVTec AD training): with probability ``mosaic_rate`` a training
sample is replaced by a 2x2 mosaic of 4 random training images of its category (masks tiled alike).

Because the backbone is frozen its features of an unaugmented image never change, so they are computed once
and kept in memory up to ``cache_gb`` (mosaics are always computed afresh). A ``val_fraction`` of the source
images (per category) is held out; after every epoch the heads are saved (``epoch_NNN.safetensors`` + sidecar)
with the held-out loss, pixel AUROC and AUPRO, so the stopping epoch can be chosen afterwards (results depend
on it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmad.methods.aprilgan import (
    AprilGan,
    ProjectionHeads,
    check_stages,
    class_text_embeddings,
    default_stages,
    patch_tokens,
    stage_probabilities,
)
from vlmad.training.common import (
    REGIMES,
    BaseTrainConfig,
    EpochLoop,
    FeatureStore,
    ImageSource,
    TrainItem,
    best_epoch,
    macro_metrics,
    prepare_run,
    split_held_out,
    training_items,
    write_json,
)
from vlmad.training.heads_io import backbone_meta, save_heads
from vlmad.training.losses import aprilgan_loss

__all__ = [
    "REGIMES",
    "ImageSource",
    "TrainConfig",
    "TrainItem",
    "TrainResult",
    "resolve_mosaic_rate",
    "split_held_out",
    "train_aprilgan",
    "training_items",
]
LOSS_DESCRIPTION = "sum over stages of focal(gamma=2, softmax probabilities) + dice(anomalous channel)"


@dataclass
class TrainConfig(BaseTrainConfig):
    """Hyper-parameters (defaults = the reference's: Adam 1e-3, betas (0.5, 0.999), batch 8, seed 111); the shared
    ones and their checks are :class:`~vlmad.training.common.BaseTrainConfig`'s."""

    #: None: 0.2 when training cross-dataset on MVTec AD (as the reference), else 0
    mosaic_rate: float | None = None
    prompt_set: str = "aprilgan"
    #: the reference's: raw folder names ("metal_nut") in the prompts
    class_name_style: str = "raw"

    validation_hint = "see `vlmad train aprilgan --help` for the reference's values"

    def checks(self) -> tuple[tuple[bool, str], ...]:
        rate = self.mosaic_rate
        return (
            *super().checks(),
            (rate is None or 0.0 <= rate <= 1.0, f"mosaic rate must be in [0, 1], got {rate}"),
        )


@dataclass
class TrainResult:
    out_dir: Path
    checkpoints: list[Path]
    history: list[dict[str, Any]]
    heads: ProjectionHeads
    best_epoch: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- training
def resolve_mosaic_rate(rate: float | None, regime: str, kind: str) -> float:
    if rate is not None:
        return float(rate)
    return 0.2 if regime == "cross-dataset" and kind.lower() == "mvtec" else 0.0


def train_aprilgan(
    dataset,
    out_dir: str | Path,
    *,
    regime: str = "cross-dataset",
    config: TrainConfig | None = None,
    backbone=None,
    backbone_kwargs: dict[str, Any] | None = None,
    categories: Iterable[str] | None = None,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    text_cache=None,
) -> TrainResult:
    """Train APRIL-GAN heads; write ``epoch_NNN.safetensors`` (+ ``.json``) per epoch and ``train_log.json``.

    ``dataset``: a reader from :func:`vlmad.data.load_dataset` or a ``(kind, root)`` pair. ``backbone``: a
    loaded :class:`~vlmad.backbones.ClipBackbone`, else one is built from ``backbone_kwargs`` with APRIL-GAN's
    defaults (ViT-L-14-336, OpenAI weights, no QuickGELU as the reference, 518 px). ``on_epoch`` receives each
    epoch's record.
    """
    cfg = config or TrainConfig()
    run_data = prepare_run("aprilgan", dataset, out_dir, regime, cfg, backbone, backbone_kwargs, categories, overwrite)
    reader, backbone, out, cats = run_data.reader, run_data.backbone, run_data.out, run_data.categories
    items, train_idx, val_idx = run_data.items, run_data.train_idx, run_data.val_idx
    stages = check_stages(cfg.stages or default_stages(backbone.num_layers), backbone.num_layers, backbone.arch)
    mosaic_rate = resolve_mosaic_rate(cfg.mosaic_rate, regime, reader.name)
    text, base_meta = _text_and_meta(backbone, cfg, cats, stages, text_cache)
    data = run_data.facts(regime)
    run = _run_facts(cfg, mosaic_rate)

    heads, optimizer, store = _training_parts(backbone, stages, items, cfg)
    grid, size = backbone.grid_size, backbone.image_size

    def save(epoch: int, record: dict[str, Any]) -> Path:
        meta = dict(base_meta)
        meta["training"] = {"data": data, **run, "epoch": epoch, "metrics": record}
        return save_heads(heads, out / f"epoch_{epoch:03d}", meta)

    loop = EpochLoop(
        items,
        train_idx,
        cfg.seed,
        mosaic_rate,
        store,
        train_pass=lambda specs: _train_epoch(heads, optimizer, store, items, specs, text, grid, size, cfg),
        evaluate=lambda: _evaluate(heads, store, items, val_idx, text, grid, size, cfg),
        save=save,
        write_log=lambda history: _write_train_log(out / "train_log.json", data, run, base_meta, stages, history),
        on_epoch=on_epoch,
    )
    checkpoints, history = loop.run(cfg.epochs)
    heads.eval().requires_grad_(False)
    return TrainResult(out, checkpoints, history, heads, best_epoch(history), data)


def _training_parts(backbone, stages: Sequence[int], items: Sequence[TrainItem], cfg: TrainConfig):
    """Seeded heads in training mode, their Adam optimizer, and the frozen-backbone feature store."""
    heads = ProjectionHeads.seeded(backbone.width, backbone.embed_dim, len(stages), cfg.seed).to(backbone.device)
    heads.train().requires_grad_(True)
    optimizer = torch.optim.Adam(heads.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    source = ImageSource(backbone, cfg.seed, AprilGan.preprocessing)
    per_item = len(stages) * backbone.grid_size[0] * backbone.grid_size[1] * backbone.width
    per_item = per_item * (2 if cfg.cache_half else 4) + backbone.image_size**2

    def extract(x: torch.Tensor) -> list[torch.Tensor]:
        return patch_tokens(backbone, x, stages, need_final=False)[0]

    store = FeatureStore(
        backbone, source, items, extract, per_item, cfg.cache_gb, cfg.cache_half, cfg.feature_batch_size
    )
    return heads, optimizer, store


def _text_and_meta(
    backbone, cfg: TrainConfig, cats: list[str], stages: Sequence[int], text_cache
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Per-category text embeddings, and the heads-file metadata shared by every epoch's checkpoint."""
    from vlmad.backbones.text_cache import TextEmbeddingCache
    from vlmad.prompts import class_display_name, load_prompt_set

    prompt_set = load_prompt_set(cfg.prompt_set)
    cache = text_cache if text_cache is not None else TextEmbeddingCache()
    style = cfg.class_name_style
    text = {
        c: class_text_embeddings(backbone, prompt_set, class_display_name(c) if style == "display" else c, cache)
        for c in cats
    }
    base_meta = {
        "backbone": backbone_meta(backbone),
        "stages": list(stages),
        "prompt_set": prompt_set.name,
        "class_name_style": style,
    }
    if prompt_set.name not in ("aprilgan",):
        base_meta["prompt_set_definition"] = prompt_set.as_dict()
    return text, base_meta


def _run_facts(cfg: TrainConfig, mosaic_rate: float) -> dict[str, Any]:
    return {
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "betas": list(cfg.betas),
        "batch_size": cfg.batch_size,
        "mosaic_rate": mosaic_rate,
        "val_fraction": cfg.val_fraction,
        "synthetic_per_image": cfg.synthetic_per_image,
        "loss": LOSS_DESCRIPTION,
        "optimizer": "Adam",
        "focal_gamma": cfg.focal_gamma,
    }


def _train_epoch(heads, optimizer, store, items, specs, text, grid, size, cfg: TrainConfig) -> dict[str, Any]:
    """One pass of Adam steps over ``specs`` in batches; the epoch's mean loss and batch count."""
    losses = []
    for start in range(0, len(specs), cfg.batch_size):
        batch = specs[start : start + cfg.batch_size]
        tokens, masks = store.get(batch)
        cat_of = [items[s if isinstance(s, int) else s[0]].category for s in batch]
        text_b = torch.stack([text[c] for c in cat_of])
        probs = stage_probabilities(heads(tokens), text_b, grid, size)
        loss = aprilgan_loss(probs, masks, cfg.focal_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return {"train_loss": float(np.mean(losses)), "train_batches": len(losses)}


def _write_train_log(path: Path, data, run, base_meta, stages, history) -> None:
    write_json(
        path,
        {
            "data": data,
            "run": run,
            "backbone": {k: v for k, v in base_meta["backbone"].items() if k != "weights_probe"},
            "stages": list(stages),
            "history": history,
            "best_epoch_by_val_pixel_auroc": best_epoch(history),
        },
    )


@torch.no_grad()
def _evaluate(heads, store, items, val_idx, text, grid, size, cfg) -> dict[str, Any]:
    """Held-out loss and per-category pixel AUROC / AUPRO (macro-averaged where defined)."""
    from vlmad.metrics import aupro, pixel_auroc
    from vlmad.metrics._common import UndefinedMetricError

    if not val_idx:
        return {"val_loss": None, "val_pixel_auroc": None, "val_aupro": None, "val_per_category": {}}
    heads.eval()
    per_cat: dict[str, dict[str, float | None]] = {}
    losses, weights = [], []
    for cat in dict.fromkeys(items[i].category for i in val_idx):
        idx = [i for i in val_idx if items[i].category == cat]
        maps, masks = [], []
        for start in range(0, len(idx), cfg.batch_size):
            tokens, m = store.get(idx[start : start + cfg.batch_size])
            probs = stage_probabilities(heads(tokens), text[cat], grid, size)
            losses.append(float(aprilgan_loss(probs, m, cfg.focal_gamma)))
            weights.append(len(m))
            maps.append(torch.stack(probs).sum(0).cpu())
            masks.append(m.cpu() > 0.5)
        maps_t, masks_t = torch.cat(maps).numpy(), torch.cat(masks).numpy()
        entry: dict[str, float | None] = {}
        for name, fn in (("pixel_auroc", pixel_auroc), ("aupro", aupro)):
            try:
                entry[name] = float(fn(masks_t, maps_t))
            except UndefinedMetricError:
                entry[name] = None  # no anomalous (or no normal) pixel among this category's held-out images
        per_cat[cat] = entry
    heads.train()
    return {
        "val_loss": float(np.average(losses, weights=weights)),
        **macro_metrics(per_cat, ("pixel_auroc", "aupro")),
        "val_per_category": per_cat,
    }
