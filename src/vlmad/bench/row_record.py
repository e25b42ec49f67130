"""What a row records: its common fields (:func:`base_row`), the metrics of its predictions
(:func:`compute_metrics`, at the evaluation resolution), its efficiency facts (:func:`row_efficiency`) and the
fields of a computed row (:func:`completed_row`, from the steps' :class:`RowOutcome`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlmad.bench import protocol as P
from vlmad.bench.grid import BenchmarkConfig, RowPlan
from vlmad.bench.loading import TestSetCache
from vlmad.bench.profile import MB, count_parameters, process_peak_rss, state_bytes
from vlmad.bench.row_steps import CategoryContext, Fitted, Predicted
from vlmad.methods.base import Detector
from vlmad.provenance import code_fingerprint
from vlmad_runtime.errors import VlmadError


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RowOutcome:
    """The results of one computed row's steps, from which :func:`completed_row` writes its fields."""

    info: dict[str, Any]
    fitted: Fitted
    pred: Predicted
    metrics: dict[str, float]
    metric_errors: dict[str, str]
    eval_shape: tuple[int, int] | None
    metrics_s: float
    efficiency: dict[str, Any]
    scores_file: str


def base_row(
    cfg: BenchmarkConfig, plan: RowPlan, spec: dict[str, Any], eval_res: str | int, versions: Mapping[str, Any]
) -> dict[str, Any]:
    """What every row records, computed or not: key, method spec, weights, dataset, protocol, run, code version."""
    method_options = {k: v for k, v in spec["kwargs"].items() if k not in P.BACKBONE_KEYS and k not in P.RUNTIME_KEYS}
    return {
        "schema": P.ROW_SCHEMA,
        "row_key": plan.key,
        "status": "ok",
        "method": spec["method"],
        "method_label": spec["label"],
        "method_spec": P.canonical(
            {"kwargs": P.keyed_kwargs(spec["kwargs"]), **{k: v for k, v in spec.items() if k not in ("kwargs",)}}
        ),
        "method_options": P.canonical(method_options),
        "weights": P.canonical(P.weights_identity(spec["method"], spec["kwargs"])),
        "dataset": {"kind": plan.dataset.kind, "root": str(plan.dataset.root), "category": plan.category},
        "shots": plan.shots,
        "seed": plan.seed,
        "protocol": {
            "eval_resolution": eval_res,
            "mask_resize": "nearest",
            "map_resize": "bilinear",
            "aupro": cfg.aupro,
            "limit": cfg.limit,
            "limit_policy": P.LIMIT_POLICY if cfg.limit else None,
            "reference_policy": P.REFERENCE_POLICY if plan.shots else P.ZERO_SHOT_NOTE,
            "force_protocol": cfg.force_protocol,
            "on_error": cfg.on_error,
        },
        "tags": P.canonical(cfg.tags),
        "run": {
            "device": cfg.device,
            "batch_size": cfg.batch_size,
            "num_workers": cfg.num_workers,
            "vlmad": versions["vlmad"],
            "torch": versions["torch"],
            "open_clip": versions["open_clip"],
        },
        "vlmad_version": versions["vlmad"],
        "code_fingerprint": code_fingerprint(),
        "finished_at": now(),
    }


def _stacked_at_original(items: list, maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | str:
    """Masks and maps at the images' own size (maps resized in chunks), or why they cannot be stacked."""
    sizes = {(it.size[1], it.size[0]) for it in items}
    if len(sizes) > 1:
        return (
            f"images of {len(sizes)} different sizes cannot be stacked at original "
            "resolution; use --eval-resolution input or N"
        )
    ((h, w),) = sizes
    shape = (h, w)
    masks = np.stack([it.mask if it.mask is not None else np.zeros(shape, bool) for it in items])
    map_np = np.concatenate(
        [
            F.interpolate(maps[i : i + 16, None], size=shape, mode="bilinear", align_corners=False)[:, 0].numpy()
            for i in range(0, maps.shape[0], 16)
        ]
    )
    return masks, map_np, shape


def compute_metrics(
    items: list, scores: torch.Tensor, maps: torch.Tensor, ctx: CategoryContext, variants: tuple[str, ...]
) -> tuple[dict[str, float], dict[str, str], tuple[int, int] | None]:
    """Image metrics, and pixel metrics at the evaluation size; a metric that cannot be computed gets a reason."""
    from vlmad.metrics import compute_image_metrics, compute_pixel_metrics

    labels = np.array([it.sample.is_anomalous for it in items], dtype=bool)
    metrics: dict[str, float] = {}
    errors: dict[str, str] = {}
    try:
        metrics.update(compute_image_metrics(labels, scores.numpy()))
    except VlmadError as err:
        errors["image"] = err.message
    eval_size = ctx.eval_size
    shape = None if eval_size is None else (eval_size[1], eval_size[0])
    if not ctx.has_masks:
        errors["pixel"] = "dataset has no pixel masks"
        return metrics, errors, shape
    if shape is not None:
        if tuple(maps.shape[-2:]) != shape:
            maps = F.interpolate(maps[:, None], size=shape, mode="bilinear", align_corners=False)[:, 0]
        masks = np.stack([it.mask if it.mask is not None else np.zeros(shape, bool) for it in items])
        map_np = maps.numpy()
    else:
        stacked = _stacked_at_original(items, maps)
        if isinstance(stacked, str):
            errors["pixel"] = stacked
            return metrics, errors, shape
        masks, map_np, shape = stacked
    try:
        metrics.update(compute_pixel_metrics(masks, map_np, aupro_variants=variants))
    except VlmadError as err:
        errors["pixel"] = err.message
    return metrics, errors, shape


def row_efficiency(
    detector: Detector,
    pred: Predicted,
    data: TestSetCache,
    ctx: CategoryContext,
    fitted: Fitted,
    gflops: float | None,
    cfg: BenchmarkConfig,
) -> dict[str, Any]:
    """Latency over warm batches (the first one left out when there are several), memory, sizes, set-up times."""
    batch_s, streamed, on_cuda = pred.batch_s, pred.streamed, pred.on_cuda
    warm = batch_s[1:] if len(batch_s) > 1 else batch_s
    secs, n = sum(s for s, _ in warm), sum(k for _, k in warm)
    params = count_parameters(detector)
    peak = process_peak_rss()
    return {
        "ms_per_image": 1000.0 * secs / n if n else None,
        "images_per_s": n / secs if secs > 0 else None,
        "warm": len(batch_s) > 1,
        "timed_images": n,
        "load_ms_per_image": (
            1000.0 * data.stats.worker_s / data.stats.images if streamed and data.stats.images else None
        ),
        "load_wait_s": data.stats.wait_s if streamed else None,
        "num_workers": cfg.num_workers,
        "rss_increase_mb": None if on_cuda else pred.rss_increase / MB,
        "process_peak_rss_mb": None if peak is None else peak / MB,
        "cuda_peak_mb": (torch.cuda.max_memory_allocated(torch.device(cfg.device)) / MB if on_cuda else None),
        "params_backbone": params["backbone"],
        "params_method": params["method"],
        "params_total": params["total"],
        "state_mb": state_bytes(detector) / MB,
        "gflops_per_image": gflops,
        "setup_s": ctx.setup_s,
        "text_cache": ctx.text_cache,
        "fit_s": fitted.fit_s,
        "ref_load_s": fitted.ref_load_s,
        "model_load_s": ctx.model_load_s,
        "device": cfg.device,
        "batch_size": cfg.batch_size,
    }


def completed_row(
    row: dict[str, Any], plan: RowPlan, out: RowOutcome, data: TestSetCache, ctx: CategoryContext
) -> dict[str, Any]:
    """``row`` (from :func:`base_row`) completed with a computed row's results."""
    info, fitted, pred = out.info, out.fitted, out.pred
    n_bad = sum(it.sample.is_anomalous for it in pred.items)
    root = Path(plan.dataset.root)
    row.update(
        status="ok",
        detector=info,
        random_weights=bool(info.get("random_weights")),
        references=fitted.refs,
        skipped_references=fitted.skipped,
        protocol={
            **row["protocol"],
            "check_protocol": ctx.extras,
            "protocol_forced": ctx.forced,
            "transductive": bool(info.get("transductive")),
            "eval_size": list(out.eval_shape) if out.eval_shape else "original",
            "has_masks": ctx.has_masks,
        },
        n_images={
            "test": len(pred.items),
            "normal": len(pred.items) - n_bad,
            "anomalous": n_bad,
            "skipped": len(data.failures),
        },
        skipped_images=[{"path": P.relpath(f.sample.image_path, root), "reason": f.reason} for f in data.failures],
        metrics=out.metrics,
        metric_errors=out.metric_errors,
        timing={
            "setup_s": ctx.setup_s,
            "ref_load_s": fitted.ref_load_s,
            "fit_s": fitted.fit_s,
            "predict_s": sum(s for s, _ in pred.batch_s),
            "finalize_s": pred.finalize_s,
            "metrics_s": out.metrics_s,
            "load_worker_s": data.stats.worker_s if pred.streamed else 0.0,
            "load_wait_s": data.stats.wait_s if pred.streamed else 0.0,
            "load_cached": not pred.streamed,
            "model_load_s": ctx.model_load_s,
        },
        efficiency=out.efficiency,
        scores_file=out.scores_file,
    )
    return row
