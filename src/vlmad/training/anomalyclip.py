"""Training AnomalyCLIP's object-agnostic prompts (``vlmad train anomalyclip``), as the reference's ``train.py``.

The whole CLIP model is frozen; only the prompts (:class:`~vlmad.methods.prompt_learner.ObjectAgnosticPrompts`:
the normal / anomalous context vectors and the deep text tokens) are trained, with Adam (lr 1e-3, betas
(0.5, 0.999), batch 8, 15 epochs, seed 111) on the glocal loss (:func:`vlmad.training.losses.glocal_loss`):
cross-entropy of the global (normal, anomalous) similarity of the [CLS] embedding + 4 x the sum over the stages
of focal + dice(anomalous) + dice(normal) on the stage's two-channel map upsampled to the input size (518).
The maps and the global embedding are the detector's own functions (:mod:`vlmad.methods.anomalyclip`: DPAM from
block 6 of 24, the V-V tokens of the stages through ln_post and the projection), so the trained prompts are
used exactly as they were trained. The text tower runs with gradients at every step (the prompts enter its
layers); the vision features of the frozen backbone are computed once and cached (``cache_gb``).

Data: the two regimes of :mod:`vlmad.training.common` (``cross-dataset``: the test split with masks, the
reference's protocol VisA -> MVTec AD and back; ``synthetic``: normal train images with pasted defects, image
label anomalous for a pasted variant). The reference has no mosaic and no held-out split: a ``val_fraction`` of
the source images is held out here to record image / pixel AUROC of the detector's score and map per epoch.
Every choice between the paper and the code is listed in docs/methods.md ("AnomalyCLIP training").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlmad.methods.anomalyclip import (
    SIGMA,
    TEMPERATURE,
    AnomalyClip,
    anomaly_map,
    default_stages,
    dpam_forward,
    encode_learned_text,
    image_score,
    project_tokens,
    stage_probability,
)
from vlmad.methods.prompt_learner import DEPTH, N_CTX, T_N_CTX, ObjectAgnosticPrompts
from vlmad.training.common import (
    BaseTrainConfig,
    EpochLoop,
    FeatureStore,
    ImageSource,
    TrainItem,
    best_epoch,
    frozen,
    macro_metrics,
    prepare_run,
    write_json,
)
from vlmad.training.losses import glocal_loss
from vlmad.training.prompts_io import save_prompts
from vlmad_runtime.errors import VlmadError

__all__ = ["PromptTrainConfig", "PromptTrainResult", "stage_maps", "train_anomalyclip"]

LOSS_DESCRIPTION = (
    "cross_entropy(global similarity / 0.07) + local_weight * sum over stages of "
    "focal(gamma=2, two-channel map) + dice(anomalous, mask) + dice(normal, 1 - mask)"
)


@dataclass
class PromptTrainConfig(BaseTrainConfig):
    """Hyper-parameters; the defaults are the reference's ``train.py`` (Adam 1e-3, betas (0.5, 0.999), batch 8,
    15 epochs, seed 111, n_ctx 12, depth 9, t_n_ctx 4, local weight 4, stages 6/12/18/24 of 24 blocks); the shared
    ones and their checks are :class:`~vlmad.training.common.BaseTrainConfig`'s. ``stages``: the detector's by
    default, 6/12/18/24 on 24 blocks; train.sh passes 24."""

    #: first DPAM block (default: the first default stage, block 6 of 24: the reference's DPAM_layer=20)
    dpam_start: int | None = None
    n_ctx: int = N_CTX
    depth: int = DEPTH
    t_n_ctx: int = T_N_CTX
    #: weight of the local (map) losses: 4 in train.py since April 2025; 1 is the paper's plain sum
    local_weight: float = 4.0
    #: ln_post on the global [CLS] embedding (the reference does not apply it; the detector's option)
    global_ln_post: bool = False
    #: Gaussian smoothing of the held-out maps (the detector's default)
    sigma: float = SIGMA

    validation_hint = "see `vlmad train anomalyclip --help` for the reference's values"

    def checks(self) -> tuple[tuple[bool, str], ...]:
        return (
            *super().checks(),
            (self.local_weight >= 0, f"local_weight must be >= 0, got {self.local_weight}"),
            (self.dpam_start is None or self.dpam_start >= 1, f"dpam_start must be >= 1, got {self.dpam_start}"),
        )


@dataclass
class PromptTrainResult:
    out_dir: Path
    checkpoints: list[Path]
    history: list[dict[str, Any]]
    prompts: ObjectAgnosticPrompts
    best_epoch: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Parts:
    """What one training run works with: the frozen backbone, the prompts and their optimiser, the feature
    store (stage tokens through ln_post + projection, then the global embedding) and the detector settings."""

    backbone: Any
    prompts: ObjectAgnosticPrompts
    optimizer: torch.optim.Optimizer
    store: FeatureStore
    items: Sequence[TrainItem]
    cfg: PromptTrainConfig
    stages: tuple[int, ...]
    dpam_start: int


def train_anomalyclip(
    dataset,
    out_dir: str | Path,
    *,
    regime: str = "cross-dataset",
    config: PromptTrainConfig | None = None,
    backbone=None,
    backbone_kwargs: dict[str, Any] | None = None,
    categories: Iterable[str] | None = None,
    overwrite: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> PromptTrainResult:
    """Train AnomalyCLIP prompts; write ``epoch_NNN.safetensors`` (+ ``.json``) per epoch and ``train_log.json``.

    ``dataset``: a reader from :func:`vlmad.data.load_dataset` or a ``(kind, root)`` pair. ``backbone``: a
    loaded :class:`~vlmad.backbones.ClipBackbone`, else one is built from ``backbone_kwargs`` with AnomalyCLIP's
    defaults (ViT-L-14-336, OpenAI weights, QuickGELU, 518 px). ``on_epoch`` receives each epoch's record.
    """
    cfg = config or PromptTrainConfig()
    run_data = prepare_run(
        "anomalyclip", dataset, out_dir, regime, cfg, backbone, backbone_kwargs, categories, overwrite
    )
    backbone, out, items, train_idx = run_data.backbone, run_data.out, run_data.items, run_data.train_idx
    parts = _training_parts(backbone, items, cfg)
    data = run_data.facts(regime)
    run = _run_facts(parts)

    def save(epoch: int, record: dict[str, Any]) -> Path:
        training = {"data": data, **run, "epoch": epoch, "metrics": record}
        return save_prompts(parts.prompts, out / f"epoch_{epoch:03d}", backbone, training)

    def write_log(history: list[dict[str, Any]]) -> None:
        log = {"data": data, "run": run, "history": history, "best_epoch_by_val_pixel_auroc": best_epoch(history)}
        write_json(out / "train_log.json", log)

    loop = EpochLoop(
        items,
        train_idx,
        cfg.seed,
        0.0,  # the reference trains without mosaics
        parts.store,
        train_pass=lambda specs: _train_pass(parts, specs),
        evaluate=lambda: _evaluate(parts, run_data.val_idx),
        save=save,
        write_log=write_log,
        on_epoch=on_epoch,
    )
    checkpoints, history = loop.run(cfg.epochs)
    parts.prompts.eval().requires_grad_(False)
    return PromptTrainResult(out, checkpoints, history, parts.prompts, best_epoch(history), data)


def _training_parts(backbone, items: Sequence[TrainItem], cfg: PromptTrainConfig) -> _Parts:
    """Seeded prompts (the reference's init), Adam on them only, and the cached frozen vision features."""
    from vlmad.methods.aprilgan import check_stages

    if backbone.precision != "fp32":
        raise VlmadError(f"AnomalyCLIP trains in fp32; got precision {backbone.precision}", "load with fp32")
    n_layers = backbone.num_layers
    stages = check_stages(cfg.stages or default_stages(n_layers), n_layers, backbone.arch)
    dpam_start = int(cfg.dpam_start) if cfg.dpam_start is not None else default_stages(n_layers)[0]
    width = int(backbone.model.token_embedding.weight.shape[1])
    shape = {"n_ctx": cfg.n_ctx, "depth": cfg.depth, "t_n_ctx": cfg.t_n_ctx}
    prompts = ObjectAgnosticPrompts.seeded(width, cfg.seed, **shape).to(backbone.device).train()
    optimizer = torch.optim.Adam(prompts.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))

    def extract(x: torch.Tensor) -> list[torch.Tensor]:
        dense, final = dpam_forward(backbone, x, stages, dpam_start)
        cls = final[:, 0]
        if cfg.global_ln_post:
            cls = backbone.visual.ln_post(cls)
        proj = backbone.visual.proj
        return [project_tokens(backbone, dense[s]) for s in stages] + [cls @ proj.float() if proj is not None else cls]

    tokens = backbone.grid_size[0] * backbone.grid_size[1] + 1
    item_bytes = (len(stages) * tokens + 1) * backbone.embed_dim * (2 if cfg.cache_half else 4)
    source = ImageSource(backbone, cfg.seed, AnomalyClip.preprocessing)
    item_bytes += 4 * backbone.image_size**2  # the mask
    store = FeatureStore(
        backbone, source, items, extract, item_bytes, cfg.cache_gb, cfg.cache_half, cfg.feature_batch_size
    )
    return _Parts(backbone, prompts, optimizer, store, items, cfg, stages, dpam_start)


def stage_maps(stage_tokens: Sequence[torch.Tensor], text: torch.Tensor, grid: tuple[int, int], size: int):
    """Each stage's anomalous probability map at the input size (B, S, S): the reference's loss maps (softmax
    of the patch similarities, CLS dropped, bilinear upsampling, align_corners=False), before any smoothing."""
    maps = []
    for tokens in stage_tokens:
        p = stage_probability(tokens, text)[:, 1:].reshape(-1, 1, grid[0], grid[1])
        maps.append(F.interpolate(p, size=(size, size), mode="bilinear", align_corners=False)[:, 0])
    return maps


def _losses(parts: _Parts, feats: list[torch.Tensor], masks: torch.Tensor, labels: torch.Tensor, text):
    bb = parts.backbone
    maps = stage_maps(feats[:-1], text, bb.grid_size, bb.image_size)
    logits = F.normalize(feats[-1], dim=-1) @ text.T / TEMPERATURE
    return glocal_loss(maps, masks, logits, labels, parts.cfg.local_weight, parts.cfg.focal_gamma)


def _labels(parts: _Parts, batch: Sequence[int]) -> torch.Tensor:
    return torch.tensor([parts.items[i].anomalous for i in batch], dtype=torch.long, device=parts.backbone.device)


def _train_pass(parts: _Parts, specs: list) -> dict[str, Any]:
    """One pass of Adam steps over ``specs`` in batches; the epoch's mean losses (total, local, image)."""
    totals, locals_, images = [], [], []
    bs = parts.cfg.batch_size
    with frozen(parts.backbone.model):
        for start in range(0, len(specs), bs):
            batch = specs[start : start + bs]
            feats, masks = parts.store.get(batch)
            text = encode_learned_text(parts.backbone, parts.prompts)
            total, local, image = _losses(parts, feats, masks, _labels(parts, batch), text)
            parts.optimizer.zero_grad(set_to_none=True)
            total.backward()
            parts.optimizer.step()
            totals.append(float(total.detach()))
            locals_.append(float(local.detach()))
            images.append(float(image.detach()))
    return {
        "train_loss": float(np.mean(totals)),
        "train_local_loss": float(np.mean(locals_)),
        "train_image_loss": float(np.mean(images)),
        "train_batches": len(totals),
    }


@torch.no_grad()
def _evaluate(parts: _Parts, val_idx: Sequence[int]) -> dict[str, Any]:
    """Held-out glocal loss, and per category the detector's image AUROC (score) and pixel AUROC (smoothed map),
    macro-averaged where defined."""
    if not val_idx:
        return {"val_loss": None, "val_image_auroc": None, "val_pixel_auroc": None, "val_per_category": {}}
    from vlmad.metrics import image_auroc, pixel_auroc
    from vlmad.metrics._common import UndefinedMetricError

    bb, cfg = parts.backbone, parts.cfg
    text = encode_learned_text(bb, parts.prompts)
    per_cat: dict[str, dict[str, float | None]] = {}
    losses, weights = [], []
    for cat in dict.fromkeys(parts.items[i].category for i in val_idx):
        idx = [i for i in val_idx if parts.items[i].category == cat]
        scores, labels, maps, masks = [], [], [], []
        for start in range(0, len(idx), cfg.batch_size):
            batch = idx[start : start + cfg.batch_size]
            feats, m = parts.store.get(batch)
            losses.append(float(_losses(parts, feats, m, _labels(parts, batch), text)[0]))
            weights.append(len(batch))
            probs = [stage_probability(f, text) for f in feats[:-1]]
            maps.append(anomaly_map(probs, bb.grid_size, bb.image_size, cfg.sigma).cpu())
            scores.append(image_score(feats[-1], text).cpu())
            labels.append(_labels(parts, batch).cpu())
            masks.append(m.cpu() > 0.5)
        entry: dict[str, float | None] = {}
        for name, fn, truth, pred in (
            ("image_auroc", image_auroc, labels, scores),
            ("pixel_auroc", pixel_auroc, masks, maps),
        ):
            try:
                entry[name] = float(fn(torch.cat(truth).numpy(), torch.cat(pred).numpy()))
            except UndefinedMetricError:
                entry[name] = None  # one class only among this category's held-out images (or pixels)
        per_cat[cat] = entry
    return {
        "val_loss": float(np.average(losses, weights=weights)),
        **macro_metrics(per_cat, ("image_auroc", "pixel_auroc")),
        "val_per_category": per_cat,
    }


def _run_facts(parts: _Parts) -> dict[str, Any]:
    """The run's settings (recorded in every epoch's sidecar and in train_log.json)."""
    cfg = parts.cfg
    return {
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "betas": list(cfg.betas),
        "batch_size": cfg.batch_size,
        "optimizer": "Adam",
        "loss": LOSS_DESCRIPTION,
        "local_weight": cfg.local_weight,
        "focal_gamma": cfg.focal_gamma,
        "stages": list(parts.stages),
        "dpam_start": parts.dpam_start,
        "global_ln_post": cfg.global_ln_post,
        "prompt_shape": {"n_ctx": cfg.n_ctx, "depth": cfg.depth, "t_n_ctx": cfg.t_n_ctx},
        "val_fraction": cfg.val_fraction,
        "synthetic_per_image": cfg.synthetic_per_image,
        "loss_map_size": parts.backbone.image_size,
        "held_out_sigma": cfg.sigma,
    }
