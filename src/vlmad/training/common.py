"""What every `vlmad train METHOD` shares: the training data of the two regimes, the held-out split, image and
mask loading, the frozen-feature cache, the epoch loop with its per-epoch artefacts and ``train_log.json``.

A method's trainer (:mod:`vlmad.training.aprilgan`, :mod:`vlmad.training.anomalyclip`) supplies only what is its
own: the features it reads from the frozen backbone, the trainable part, the loss, the held-out metrics and the
artefact it writes. The two regimes:

* ``cross-dataset`` (the papers' "zero-shot" protocol): train on a dataset's *test* split with masks (e.g. VisA)
  and evaluate on another dataset (e.g. MVTec AD); the artefact records the dataset kind, root folder name and
  categories so the leakage guard (:func:`vlmad.training.heads_io.check_leakage`) refuses a "zero-shot"
  evaluation on a category it was trained on;
* ``synthetic`` (beyond the papers): only the *train/good* normal images; every image appears as is and in
  ``synthetic_per_image`` variants with a defect pasted by :func:`vlmad.data.synthetic.paste_anomaly` (exact
  masks, deterministic in the seed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmad.methods.inputs import PIL_BICUBIC, Preprocessing
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.fileio import atomic_write_text

REGIMES = ("cross-dataset", "synthetic")

#: a batch entry: an item index, or a tuple of 4 item indices of one category (a 2x2 mosaic)
Spec = int | tuple[int, ...]


@dataclass
class BaseTrainConfig:
    """The hyper-parameters every trainer takes (the defaults are both references': Adam 1e-3, betas (0.5, 0.999),
    batch 8, 15 epochs, seed 111); a method's config adds its own fields and checks."""

    epochs: int = 15
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8
    seed: int = 111
    val_fraction: float = 0.1
    synthetic_per_image: int = 1
    #: blocks whose maps enter the loss (None: the method's default stages)
    stages: tuple[int, ...] | None = None
    focal_gamma: float = 2.0
    #: memory for cached backbone features of unaugmented images (GiB, on the backbone's device); 0: no cache
    cache_gb: float = 4.0
    #: keep cached features in fp16 (half the memory, ~1e-3 relative rounding of the trained part's inputs)
    cache_half: bool = False
    #: images per backbone forward
    feature_batch_size: int = 8

    #: what a VlmadError for a bad value tells the user to do
    validation_hint = "see `vlmad train --help` for the defaults"

    def checks(self) -> tuple[tuple[bool, str], ...]:
        """(holds, message) of each value check; a method's config extends these."""
        return (
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.synthetic_per_image >= 1, "synthetic_per_image must be >= 1"),
            (self.cache_gb >= 0, "cache_gb must be >= 0"),
        )

    def validate(self) -> None:
        for ok, message in self.checks():
            if not ok:
                raise VlmadError(message, self.validation_hint)


@dataclass(frozen=True)
class TrainItem:
    """One training image: as on disk, or (synthetic regime) with pasted defect number ``synthetic``."""

    image_path: Path
    mask_path: Path | None
    category: str
    group: int  # index of the source image: a source's variants stay on one side of the held-out split
    synthetic: int | None = None
    #: the image-level label (the dataset's for cross-dataset training; pasted defect = anomalous)
    anomalous: bool = False


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
            items.extend(_test_items(reader, cat, len(items)))  # one group per image
            continue
        for s in reader.samples(cat, "train"):
            if s.is_anomalous:
                continue
            items.append(TrainItem(s.image_path, None, cat, group))
            items.extend(TrainItem(s.image_path, None, cat, group, j, True) for j in range(synthetic_per_image))
            group += 1
    if not items:
        raise VlmadError(f"no training images found in {reader!r} for regime {regime}")
    return items


def _test_items(reader, cat: str, first_group: int) -> list[TrainItem]:
    """A category's test split with masks (one group per image)."""
    if not reader.has_masks(cat):
        raise VlmadError(
            f"{reader.name} category {cat!r} has no pixel masks; cross-dataset training needs them",
            "use a dataset with masks, or --regime synthetic (normal images + pasted anomalies)",
        )
    out = []
    for k, s in enumerate(reader.samples(cat, "test")):
        if s.is_anomalous and s.mask_path is None:
            raise VlmadError(
                f"anomalous training image {s.image_path} has no mask",
                "cross-dataset training needs a mask for every anomalous image",
            )
        out.append(TrainItem(s.image_path, s.mask_path, cat, first_group + k, anomalous=bool(s.is_anomalous)))
    return out


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


def open_reader(dataset, categories):
    """A reader from :func:`vlmad.data.load_dataset`, or one opened from a ``(kind, root)`` pair."""
    if isinstance(dataset, (tuple, list)):
        from vlmad.data import load_dataset

        kind, root = dataset
        return load_dataset(kind, root, categories)
    return dataset


def spec_backbone(method: str, backbone_kwargs: dict[str, Any] | None) -> Any:
    """The backbone a method's spec builds from these options (its defaults fill the rest)."""
    from vlmad.methods.registry import get_spec
    from vlmad.methods.spec import build_backbone

    bb_kwargs, extra = get_spec(method).split_backbone_kwargs(dict(backbone_kwargs or {}))
    if extra:
        raise VlmadError(f"unknown backbone options {sorted(extra)}", "see `vlmad train --help` for the options")
    return build_backbone(bb_kwargs)


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise VlmadError(
            f"output folder {out_dir} already exists and is not empty",
            "choose a new folder (or pass overwrite=True / --overwrite)",
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def data_facts(
    reader, regime: str, cats: list[str], items: Sequence[TrainItem], train_idx: Sequence[int], val_idx: Sequence[int]
) -> dict[str, Any]:
    """What the artefact was trained on (recorded in every checkpoint: the leakage guard reads it)."""
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


@dataclass
class RunData:
    """What a training run reads: the dataset, the backbone, the output folder and the split items."""

    reader: Any
    backbone: Any
    out: Path
    categories: list[str]
    items: list[TrainItem]
    train_idx: list[int]
    val_idx: list[int]

    def facts(self, regime: str) -> dict[str, Any]:
        return data_facts(self.reader, regime, self.categories, self.items, self.train_idx, self.val_idx)


def prepare_run(
    method: str, dataset, out_dir, regime: str, cfg, backbone, backbone_kwargs, categories, overwrite: bool
) -> RunData:
    """Validate ``cfg``, open the dataset, build the method's default backbone unless one is given, claim the
    output folder, list the regime's items and hold out ``cfg.val_fraction`` of them."""
    cfg.validate()
    reader = open_reader(dataset, categories)
    backbone = backbone if backbone is not None else spec_backbone(method, backbone_kwargs)
    out = Path(out_dir).expanduser()
    prepare_out_dir(out, overwrite)
    cats = list(categories) if categories is not None else list(reader.categories)
    items = training_items(reader, regime, cfg.synthetic_per_image, cats)
    train_idx, val_idx = split_held_out(items, cfg.val_fraction, cfg.seed)
    if not train_idx:
        raise VlmadError("no training images left after the held-out split", "lower val_fraction or add images")
    return RunData(reader, backbone, out, cats, items, train_idx, val_idx)


class ImageSource:
    """Loads items (or 2x2 mosaics of items) as model input + binary mask at the model resolution.

    Images go through the method's own ``preprocessing`` (the one ``predict`` uses); masks are resized
    bilinearly from 0/255 and thresholded at 0.5, as both references do.
    """

    def __init__(self, backbone, seed: int, preprocessing: Preprocessing = PIL_BICUBIC) -> None:
        self.backbone = backbone
        self.size = backbone.image_size
        self.seed = seed
        self.preprocessing = preprocessing
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
        bb = self.backbone  # the references train on the same PIL pipeline they test with
        x = self.preprocessing(img, self.size, bb.mean, bb.std)[0]
        m = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return x, torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0 > 0.5).float()


class FeatureStore:
    """Frozen-backbone features + masks of items; unaugmented items are cached within a memory budget.

    ``extract`` maps a preprocessed batch (B, 3, S, S) to a list of per-item feature tensors (B, ...) — e.g. the
    patch tokens of each stage; ``item_bytes`` is one item's cached size (features + mask).
    """

    def __init__(
        self,
        backbone,
        source: ImageSource,
        items: Sequence[TrainItem],
        extract: Callable[[torch.Tensor], list[torch.Tensor]],
        item_bytes: int,
        cache_gb: float,
        half: bool,
        batch_size: int,
    ) -> None:
        self.backbone, self.source, self.items, self.extract = backbone, source, items, extract
        self.dtype = torch.float16 if half else torch.float32
        self.capacity = int(cache_gb * (1 << 30) // max(1, item_bytes))
        self.batch_size = max(1, batch_size)
        self._cache: dict[int, tuple[list[torch.Tensor], torch.Tensor]] = {}
        self.backbone_images = 0  # images run through the backbone (for the log)

    def get(self, specs: Sequence[Spec]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features (one stacked tensor per feature) and masks of a batch of specs."""
        out: list[tuple[list[torch.Tensor], torch.Tensor] | None] = [None] * len(specs)
        todo = []
        for pos, spec in enumerate(specs):
            if isinstance(spec, int) and spec in self._cache:
                out[pos] = self._cache[spec]
            else:
                todo.append(pos)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            loaded = [self._tensors(specs[pos]) for pos in chunk]
            with torch.inference_mode():
                feats = self.extract(torch.stack([x for x, _ in loaded]).to(self.backbone.device))
            self.backbone_images += len(chunk)
            for j, pos in enumerate(chunk):
                # clone: leaves inference mode (tensors usable by autograd) and drops the batch's storage
                entry = ([t[j].to(self.dtype).clone() for t in feats], loaded[j][1].to(self.backbone.device))
                if isinstance(specs[pos], int) and len(self._cache) < self.capacity:
                    self._cache[specs[pos]] = entry  # type: ignore[index]
                out[pos] = entry
        n_feats = len(out[0][0])  # type: ignore[index]
        features = [torch.stack([o[0][s] for o in out]).float() for s in range(n_feats)]  # type: ignore[index]
        return features, torch.stack([o[1] for o in out])  # type: ignore[index]

    def _tensors(self, spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(spec, int):
            img, mask = self.source.load(self.items[spec])
        else:
            img, mask = self.source.mosaic([self.items[i] for i in spec])
        return self.source.tensors(img, mask)


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """``module``'s parameters do not require grad inside the block (restored after): the backbone stays frozen
    while gradients flow through it to the trainable part."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------- the epoch loop
def epoch_specs(
    order: Sequence[int],
    items: Sequence[TrainItem],
    by_cat: dict[str, list[int]],
    mosaic_rate: float,
    rng: np.random.Generator,
) -> list[Spec]:
    """One epoch's inputs in order: an item index, or 4 indices of one category for a mosaic."""
    specs: list[Spec] = []
    for i in order:
        pool = by_cat[items[i].category]
        if mosaic_rate > 0 and rng.random() < mosaic_rate:
            specs.append(tuple(int(pool[k]) for k in rng.integers(0, len(pool), 4)))
        else:
            specs.append(i)
    return specs


@dataclass
class EpochLoop:
    """The shared epoch loop: shuffle (seeded), train one pass, evaluate, save the epoch's artefact, log.

    ``train_pass(specs)`` returns the epoch's training record (``train_loss`` ...); ``evaluate()`` the held-out
    metrics; ``save(epoch, record)`` writes the epoch's artefact and returns its path; ``write_log(history)``
    rewrites ``train_log.json``; ``on_epoch`` receives each finished record.
    """

    items: Sequence[TrainItem]
    train_idx: Sequence[int]
    seed: int
    mosaic_rate: float
    store: FeatureStore
    train_pass: Callable[[list[Spec]], dict[str, Any]]
    evaluate: Callable[[], dict[str, Any]]
    save: Callable[[int, dict[str, Any]], Path]
    write_log: Callable[[list[dict[str, Any]]], None]
    on_epoch: Callable[[dict[str, Any]], None] | None = None

    def run(self, epochs: int) -> tuple[list[Path], list[dict[str, Any]]]:
        by_cat: dict[str, list[int]] = {}
        for i in self.train_idx:
            by_cat.setdefault(self.items[i].category, []).append(i)
        generator = torch.Generator().manual_seed(self.seed)
        history: list[dict[str, Any]] = []
        checkpoints: list[Path] = []
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            perm = torch.randperm(len(self.train_idx), generator=generator).tolist()
            order = [self.train_idx[i] for i in perm]
            rng = np.random.default_rng([self.seed, epoch, 3])
            record: dict[str, Any] = {"epoch": epoch}
            record.update(self.train_pass(epoch_specs(order, self.items, by_cat, self.mosaic_rate, rng)))
            record.update(self.evaluate())
            record["seconds"] = round(time.perf_counter() - t0, 3)
            record["backbone_images"] = self.store.backbone_images
            path = self.save(epoch, record)
            record["checkpoint"] = path.name
            checkpoints.append(path)
            history.append(record)
            self.write_log(history)
            if self.on_epoch is not None:
                self.on_epoch(record)
        return checkpoints, history


def macro_metrics(per_cat: dict[str, dict[str, float | None]], keys: Sequence[str]) -> dict[str, float | None]:
    """Mean over categories of each metric, where defined (``val_`` + key)."""
    out: dict[str, float | None] = {}
    for key in keys:
        vals = [v[key] for v in per_cat.values() if v.get(key) is not None]
        out[f"val_{key}"] = float(np.mean(vals)) if vals else None
    return out


def best_epoch(history: Sequence[dict[str, Any]], key: str = "val_pixel_auroc") -> int | None:
    """The epoch with the highest ``key`` (the earliest among ties); None when no epoch has it."""
    scored = [(h[key], -h["epoch"]) for h in history if h.get(key) is not None]
    if not scored:
        return None
    return -max(scored)[1]


def write_json(path: Path, payload: dict[str, Any]) -> None:
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
