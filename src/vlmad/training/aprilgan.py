"""Training APRIL-GAN's projection heads (``vlmad train aprilgan``).

The backbone is frozen and run without gradients; only one ``Linear(width, embed_dim)`` per stage is trained
with Adam (lr 1e-3, betas (0.5, 0.999), batch 8) on focal + dice losses of the anomalous channel, summed over
stages (see :mod:`vlmad.training.losses`), exactly the map equations of :mod:`vlmad.methods.aprilgan`.

Two data regimes:

* ``cross-dataset`` (the paper's "zero-shot" protocol): the heads learn from a dataset's *test* split with
  masks (e.g. VisA) and are evaluated on another dataset (e.g. MVTec AD). The sidecar records the dataset
  kind, root folder name and categories so :func:`vlmad.training.check_leakage` can refuse a "zero-shot"
  evaluation on a category the heads were trained on.
* ``synthetic`` (beyond the paper): only the *train/good* normal images are used; every image appears as is
  and in ``synthetic_per_image`` variants with a defect pasted by :func:`vlmad.data.synthetic.paste_anomaly`
  (exact masks, deterministic in the seed).

Mosaic augmentation (the reference's, for MVTec AD training): with probability ``mosaic_rate`` a training
sample is replaced by a 2x2 mosaic of 4 random training images of its category (masks tiled alike).

Because the backbone is frozen its features of an unaugmented image never change, so they are computed once
and kept in memory up to ``cache_gb`` (mosaics are always computed afresh). A ``val_fraction`` of the source
images (per category) is held out; after every epoch the heads are saved (``epoch_NNN.safetensors`` + sidecar)
with the held-out loss, pixel AUROC and AUPRO, so the stopping epoch can be chosen afterwards (results depend
on it).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmad.methods.aprilgan import (
    ProjectionHeads,
    check_stages,
    class_text_embeddings,
    default_stages,
    patch_tokens,
    stage_probabilities,
)
from vlmad.training.heads_io import backbone_meta, save_heads
from vlmad.training.losses import aprilgan_loss
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.fileio import atomic_write_text

REGIMES = ("cross-dataset", "synthetic")
LOSS_DESCRIPTION = "sum over stages of focal(gamma=2, softmax probabilities) + dice(anomalous channel)"


@dataclass
class TrainConfig:
    """Hyper-parameters (defaults = the reference's: Adam 1e-3, betas (0.5, 0.999), batch 8, seed 111)."""

    epochs: int = 15
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8
    seed: int = 111
    #: None: 0.2 when training cross-dataset on MVTec AD (as the reference), else 0
    mosaic_rate: float | None = None
    val_fraction: float = 0.1
    synthetic_per_image: int = 1
    stages: tuple[int, ...] | None = None
    prompt_set: str = "aprilgan"
    #: the reference's: raw folder names ("metal_nut") in the prompts
    class_name_style: str = "raw"
    focal_gamma: float = 2.0
    #: memory for cached backbone features of unaugmented images (GiB, on the backbone's device); 0: no cache
    cache_gb: float = 4.0
    #: keep cached features in fp16 (half the memory, ~1e-3 relative rounding of the heads' inputs)
    cache_half: bool = False
    #: images per backbone forward
    feature_batch_size: int = 8

    def validate(self) -> None:
        if self.epochs < 1:
            raise VlmadError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise VlmadError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise VlmadError(f"learning rate must be > 0, got {self.lr}")
        if self.mosaic_rate is not None and not 0.0 <= self.mosaic_rate <= 1.0:
            raise VlmadError(f"mosaic rate must be in [0, 1], got {self.mosaic_rate}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise VlmadError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.synthetic_per_image < 1:
            raise VlmadError("synthetic_per_image must be >= 1")
        if self.cache_gb < 0:
            raise VlmadError("cache_gb must be >= 0")


@dataclass(frozen=True)
class TrainItem:
    """One training image: as on disk, or (synthetic regime) with pasted defect number ``synthetic``."""

    image_path: Path
    mask_path: Path | None
    category: str
    group: int  # index of the source image: a source's variants stay on one side of the held-out split
    synthetic: int | None = None


@dataclass
class TrainResult:
    out_dir: Path
    checkpoints: list[Path]
    history: list[dict[str, Any]]
    heads: ProjectionHeads
    best_epoch: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data
def training_items(
    reader, regime: str, synthetic_per_image: int = 1, categories: Iterable[str] | None = None
) -> list[TrainItem]:
    """The images a regime trains on: test split with masks (cross-dataset) or train normals (synthetic)."""
    if regime not in REGIMES:
        raise VlmadError(f"unknown training regime {regime!r}", f"use one of {', '.join(REGIMES)}")
    cats = list(categories) if categories is not None else list(reader.categories)
    items: list[TrainItem] = []
    group = 0
    for cat in cats:
        if regime == "cross-dataset":
            if not reader.has_masks(cat):
                raise VlmadError(
                    f"{reader.name} category {cat!r} has no pixel masks; cross-dataset training needs them",
                    "use a dataset with masks, or --regime synthetic (normal images + pasted anomalies)",
                )
            for s in reader.samples(cat, "test"):
                if s.is_anomalous and s.mask_path is None:
                    raise VlmadError(
                        f"anomalous training image {s.image_path} has no mask",
                        "cross-dataset training needs a mask for every anomalous image",
                    )
                items.append(TrainItem(s.image_path, s.mask_path, cat, group))
                group += 1
        else:
            for s in reader.samples(cat, "train"):
                if s.is_anomalous:
                    continue
                items.append(TrainItem(s.image_path, None, cat, group))
                items.extend(TrainItem(s.image_path, None, cat, group, j) for j in range(synthetic_per_image))
                group += 1
    if not items:
        raise VlmadError(f"no training images found in {reader!r} for regime {regime}")
    return items


def split_held_out(items: Sequence[TrainItem], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and held-out item indices: per category, ``fraction`` of the source images (>= 1 if possible)."""
    train, val = [], []
    rng = np.random.default_rng([seed, 7])
    for cat in dict.fromkeys(it.category for it in items):
        idx = [i for i, it in enumerate(items) if it.category == cat]
        groups = list(dict.fromkeys(items[i].group for i in idx))
        n_val = 0
        if fraction > 0 and len(groups) >= 2:
            n_val = min(len(groups) - 1, max(1, round(fraction * len(groups))))
        held = set(rng.permutation(groups)[:n_val].tolist())
        for i in idx:
            (val if items[i].group in held else train).append(i)
    return train, val


class ImageSource:
    """Loads items (or 2x2 mosaics of items) as model input + binary mask at the model resolution.

    Images are squash-resized (bicubic, antialiased) and CLIP-normalised like ``predict``; masks are resized
    bilinearly from 0/255 and thresholded at 0.5, as in the reference.
    """

    def __init__(self, backbone, seed: int) -> None:
        self.backbone = backbone
        self.size = backbone.image_size
        self.seed = seed
        self._checked: set[Path] = set()

    def load(self, item: TrainItem) -> tuple[Image.Image, np.ndarray]:
        from vlmad.data.sample import Sample
        from vlmad.data.synthetic import paste_anomaly
        from vlmad_runtime.images import check_sample, load_image, load_mask

        img = load_image(item.image_path)
        if item.mask_path is not None:
            if item.image_path not in self._checked:
                check_sample(Sample(item.image_path, "anomalous", item.category, "test", "x", item.mask_path))
                self._checked.add(item.image_path)
            mask = load_mask(item.mask_path)
        else:
            mask = np.zeros((img.height, img.width), dtype=bool)
        if item.synthetic is not None:
            rng = np.random.default_rng([self.seed, item.group, item.synthetic, 11])
            arr, pasted = paste_anomaly(np.asarray(img), rng)
            img, mask = Image.fromarray(arr), mask | pasted
        return img, mask

    def mosaic(self, items: Sequence[TrainItem]) -> tuple[Image.Image, np.ndarray]:
        loaded = [self.load(it) for it in items]
        w, h = loaded[0][0].size
        canvas = Image.new("RGB", (2 * w, 2 * h))
        mask = np.zeros((2 * h, 2 * w), dtype=bool)
        for k, (img, m) in enumerate(loaded):
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BICUBIC)
                m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
            y, x = (k // 2) * h, (k % 2) * w
            canvas.paste(img, (x, y))
            mask[y : y + h, x : x + w] = m
        return canvas, mask

    def tensors(self, img: Image.Image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from vlmad.methods.aprilgan import AprilGan

        bb = self.backbone  # the reference trains on the same PIL pipeline it tests with
        x = AprilGan.preprocessing(img, self.size, bb.mean, bb.std)[0]
        m = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return x, torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0 > 0.5).float()


class FeatureStore:
    """Per-stage raw patch tokens + masks of items; unaugmented items are cached within a memory budget."""

    def __init__(
        self,
        backbone,
        stages: Sequence[int],
        source: ImageSource,
        items: Sequence[TrainItem],
        cache_gb: float,
        half: bool,
        batch_size: int,
    ) -> None:
        self.backbone, self.stages, self.source, self.items = backbone, tuple(stages), source, items
        self.dtype = torch.float16 if half else torch.float32
        per_item = len(self.stages) * backbone.grid_size[0] * backbone.grid_size[1] * backbone.width
        per_item = per_item * (2 if half else 4) + backbone.image_size**2
        self.capacity = int(cache_gb * (1 << 30) // per_item)
        self.batch_size = max(1, batch_size)
        self._cache: dict[int, tuple[list[torch.Tensor], torch.Tensor]] = {}
        self.backbone_images = 0  # images run through the backbone (for the log)

    def get(self, specs: Sequence[int | tuple[int, ...]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features and masks of a batch; a spec is an item index or a tuple of 4 indices (a mosaic)."""
        out: list[tuple[list[torch.Tensor], torch.Tensor] | None] = [None] * len(specs)
        todo = []
        for pos, spec in enumerate(specs):
            if isinstance(spec, int) and spec in self._cache:
                out[pos] = self._cache[spec]
            else:
                todo.append(pos)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            xs, ms = [], []
            for pos in chunk:
                spec = specs[pos]
                if isinstance(spec, int):
                    img, mask = self.source.load(self.items[spec])
                else:
                    img, mask = self.source.mosaic([self.items[i] for i in spec])
                x, m = self.source.tensors(img, mask)
                xs.append(x)
                ms.append(m)
            tokens, _ = patch_tokens(self.backbone, torch.stack(xs), self.stages, need_final=False)
            self.backbone_images += len(chunk)
            for j, pos in enumerate(chunk):
                # clone: leaves inference mode (tensors usable by autograd) and drops the batch's storage
                feats = [t[j].to(self.dtype).clone() for t in tokens]
                entry = (feats, ms[j].to(self.backbone.device))
                spec = specs[pos]
                if isinstance(spec, int) and len(self._cache) < self.capacity:
                    self._cache[spec] = entry
                out[pos] = entry
        tokens = [torch.stack([o[0][s] for o in out]).float() for s in range(len(self.stages))]
        masks = torch.stack([o[1] for o in out])
        return tokens, masks


# ---------------------------------------------------------------------------------------------- training
def resolve_mosaic_rate(rate: float | None, regime: str, kind: str) -> float:
    if rate is not None:
        return float(rate)
    return 0.2 if regime == "cross-dataset" and kind.lower() == "mvtec" else 0.0


def _open_reader(dataset, categories):
    if isinstance(dataset, (tuple, list)):
        from vlmad.data import load_dataset

        kind, root = dataset
        return load_dataset(kind, root, categories)
    return dataset


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise VlmadError(
            f"output folder {out_dir} already exists and is not empty",
            "choose a new folder (or pass overwrite=True / --overwrite)",
        )
    out_dir.mkdir(parents=True, exist_ok=True)


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
    from vlmad.metrics import aupro, pixel_auroc
    from vlmad.metrics._common import UndefinedMetricError

    cfg = config or TrainConfig()
    cfg.validate()
    reader = _open_reader(dataset, categories)
    backbone = backbone if backbone is not None else _default_backbone(backbone_kwargs)
    out = Path(out_dir).expanduser()
    _prepare_out_dir(out, overwrite)

    stages = check_stages(cfg.stages or default_stages(backbone.num_layers), backbone.num_layers, backbone.arch)
    cats = list(categories) if categories is not None else list(reader.categories)
    items = training_items(reader, regime, cfg.synthetic_per_image, cats)
    train_idx, val_idx = split_held_out(items, cfg.val_fraction, cfg.seed)
    if not train_idx:
        raise VlmadError("no training images left after the held-out split", "lower val_fraction or add images")
    mosaic_rate = resolve_mosaic_rate(cfg.mosaic_rate, regime, reader.name)
    text, base_meta = _text_and_meta(backbone, cfg, cats, stages, text_cache)
    data = _data_facts(reader, regime, cats, items, train_idx, val_idx)
    run = _run_facts(cfg, mosaic_rate)

    heads, optimizer, store = _training_parts(backbone, stages, items, cfg)
    by_cat = {c: [i for i in train_idx if items[i].category == c] for c in cats}
    grid, size = backbone.grid_size, backbone.image_size
    generator = torch.Generator().manual_seed(cfg.seed)

    history: list[dict[str, Any]] = []
    checkpoints: list[Path] = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator).tolist()]
        specs = _epoch_specs(order, items, by_cat, mosaic_rate, np.random.default_rng([cfg.seed, epoch, 3]))
        losses = _train_epoch(heads, optimizer, store, items, specs, text, grid, size, cfg)
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "train_batches": len(losses),
        }
        record.update(
            _evaluate(heads, store, items, val_idx, text, grid, size, cfg, pixel_auroc, aupro, UndefinedMetricError)
        )
        record["seconds"] = round(time.perf_counter() - t0, 3)
        record["backbone_images"] = store.backbone_images
        meta = dict(base_meta)
        meta["training"] = {"data": data, **run, "epoch": epoch, "metrics": record}
        path = save_heads(heads, out / f"epoch_{epoch:03d}", meta)
        record["checkpoint"] = path.name
        checkpoints.append(path)
        history.append(record)
        _write_train_log(out / "train_log.json", data, run, base_meta, stages, history)
        if on_epoch is not None:
            on_epoch(record)
    heads.eval().requires_grad_(False)
    return TrainResult(out, checkpoints, history, heads, _best_epoch(history), data)


def _training_parts(backbone, stages: Sequence[int], items: Sequence[TrainItem], cfg: TrainConfig):
    """Seeded heads in training mode, their Adam optimizer, and the frozen-backbone feature store."""
    heads = ProjectionHeads.seeded(backbone.width, backbone.embed_dim, len(stages), cfg.seed).to(backbone.device)
    heads.train().requires_grad_(True)
    optimizer = torch.optim.Adam(heads.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    source = ImageSource(backbone, cfg.seed)
    store = FeatureStore(backbone, stages, source, items, cfg.cache_gb, cfg.cache_half, cfg.feature_batch_size)
    return heads, optimizer, store


def _default_backbone(backbone_kwargs: dict[str, Any] | None) -> Any:
    """The backbone APRIL-GAN's spec builds from these options (its defaults fill the rest)."""
    from vlmad.methods.builtin import APRILGAN
    from vlmad.methods.spec import build_backbone

    bb_kwargs, extra = APRILGAN.split_backbone_kwargs(dict(backbone_kwargs or {}))
    if extra:
        raise VlmadError(f"unknown backbone options {sorted(extra)}")
    return build_backbone(bb_kwargs)


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


def _data_facts(
    reader, regime: str, cats: list[str], items: Sequence[TrainItem], train_idx: Sequence[int], val_idx: Sequence[int]
) -> dict[str, Any]:
    """What the heads were trained on (recorded in every checkpoint: the leakage guard reads it)."""
    return {
        "regime": regime,
        "kind": reader.name,
        "root_name": Path(getattr(reader, "root", "")).name,
        "categories": cats,
        "split": "test" if regime == "cross-dataset" else "train",
        "n_source_images": len({it.group for it in items}),
        "n_items": len(items),
        "n_train": len(train_idx),
        "n_held_out": len(val_idx),
    }


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


def _epoch_specs(
    order: Sequence[int],
    items: Sequence[TrainItem],
    by_cat: dict[str, list[int]],
    mosaic_rate: float,
    rng: np.random.Generator,
) -> list[int | tuple[int, ...]]:
    """One epoch's inputs in order: an item index, or 4 indices of one category for a mosaic."""
    specs: list[int | tuple[int, ...]] = []
    for i in order:
        pool = by_cat[items[i].category]
        if mosaic_rate > 0 and rng.random() < mosaic_rate:
            specs.append(tuple(int(pool[k]) for k in rng.integers(0, len(pool), 4)))
        else:
            specs.append(i)
    return specs


def _train_epoch(heads, optimizer, store, items, specs, text, grid, size, cfg: TrainConfig) -> list[float]:
    """One pass of Adam steps over ``specs`` in batches; the per-batch losses."""
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
    return losses


def _write_train_log(path: Path, data, run, base_meta, stages, history) -> None:
    _write_json(
        path,
        {
            "data": data,
            "run": run,
            "backbone": {k: v for k, v in base_meta["backbone"].items() if k != "weights_probe"},
            "stages": list(stages),
            "history": history,
            "best_epoch_by_val_pixel_auroc": _best_epoch(history),
        },
    )


@torch.no_grad()
def _evaluate(heads, store, items, val_idx, text, grid, size, cfg, pixel_auroc, aupro, undefined) -> dict[str, Any]:
    """Held-out loss and per-category pixel AUROC / AUPRO (macro-averaged where defined)."""
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
            except undefined:
                entry[name] = None  # no anomalous (or no normal) pixel among this category's held-out images
        per_cat[cat] = entry
    heads.train()

    def macro(key):
        vals = [v[key] for v in per_cat.values() if v[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "val_loss": float(np.average(losses, weights=weights)),
        "val_pixel_auroc": macro("pixel_auroc"),
        "val_aupro": macro("aupro"),
        "val_per_category": per_cat,
    }


def _best_epoch(history: Sequence[dict[str, Any]]) -> int | None:
    scored = [(h["val_pixel_auroc"], -h["epoch"]) for h in history if h.get("val_pixel_auroc") is not None]
    if not scored:
        return None
    return -max(scored)[1]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
