"""The steps of one row, in order: draw and fit the K references (:func:`fit_references`), predict every test
image and finalize (:func:`predict_all`), write the per-image scores (:func:`write_row_scores`). Each step returns a
small dataclass; a step that cannot go on raises :class:`~vlmad.bench.row_status.RowFailed`, which the runner
records as a row."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmad.bench import protocol as P
from vlmad.bench.console import RunProgress
from vlmad.bench.grid import BenchmarkConfig, RowPlan
from vlmad.bench.loading import TestSetCache, load_references, stack_inputs
from vlmad.bench.profile import MemorySampler, cuda_device, sync
from vlmad.bench.results import SCORES_DIR, write_scores
from vlmad.bench.row_status import RowFailed
from vlmad.methods.base import Detector
from vlmad_runtime.errors import VlmadError


@dataclass
class CategoryContext:
    """What every row of one (method, category) shares: protocol-check extras, timings, the test-set facts."""

    extras: dict[str, Any]
    forced: bool
    setup_s: float
    text_cache: str | None
    model_load_s: float
    has_masks: bool
    eval_size: tuple[int, int] | None
    preprocess: Any
    train: list[Any] | None = None  # the train split, read once when a few-shot row needs it


@dataclass
class Fitted:
    """The fit step of a row: reference paths, references skipped as unreadable, load and fit seconds."""

    refs: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    ref_load_s: float = 0.0
    fit_s: float = 0.0


@dataclass
class Predicted:
    """The predict step of a row: scored items, finalized scores/maps, per-batch seconds, memory facts."""

    streamed: bool
    on_cuda: bool
    items: list[Any] = field(default_factory=list)
    batch_s: list[tuple[float, int]] = field(default_factory=list)
    rss_increase: int = 0
    scores: torch.Tensor | None = None
    maps: torch.Tensor | None = None
    finalize_s: float = 0.0


def fit_references(
    detector: Detector, spec: dict[str, Any], reader: Any, plan: RowPlan, ctx: CategoryContext, cfg: BenchmarkConfig
) -> Fitted:
    """Draw the row's K references (never a test image) and fit the detector's few-shot memory."""
    if plan.shots <= 0:
        return Fitted()
    if ctx.train is None:
        try:
            ctx.train = reader.samples(plan.category, "train")
        except VlmadError as err:
            raise RowFailed("error", err) from None
    try:
        order = P.select_references(ctx.train, plan.shots, int(plan.seed))
    except VlmadError as err:
        raise RowFailed("error", err) from None
    # never a test image, even one left out by --limit (e.g. a folder dataset listing a file twice)
    test_files = {s.image_path.resolve() for s in reader.samples(plan.category, "test")}
    leaked = [s for s in order if s.image_path.resolve() in test_files]
    if leaked:
        raise RowFailed(
            "refused",
            VlmadError(
                f"train image {leaked[0].image_path} is also a test image", "references must not be test images"
            ),
        )
    try:
        chosen, ref_batch, skipped, ref_load_s = load_references(order, plan.shots, ctx.preprocess, cfg.on_error)
    except VlmadError as err:
        if cfg.on_error == "stop":
            raise
        raise RowFailed("error", err) from None
    t0 = time.perf_counter()
    try:
        detector.fit(ref_batch)
    except NotImplementedError as err:
        raise RowFailed("error", f"{spec['label']} has no few-shot mode ({err})") from None
    sync(cfg.device)
    refs = [P.relpath(s.image_path, Path(plan.dataset.root)) for s in chosen]
    return Fitted(refs, skipped, ref_load_s, time.perf_counter() - t0)


def predict_all(detector: Detector, data: TestSetCache, cfg: BenchmarkConfig, ui: RunProgress) -> Predicted:
    """Score every readable test image in batches, timing ``predict`` and sampling memory; then finalize."""
    device = cfg.device
    on_cuda = cuda_device(device)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    sampler = None if on_cuda else MemorySampler()
    out = Predicted(streamed=not data.complete, on_cuda=on_cuda)
    scores: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    for batch in data.batches(cfg.batch_size, cfg.on_error):
        inputs = stack_inputs(batch)
        sync(device)
        if sampler is not None:
            sampler.start()
        t0 = time.perf_counter()
        pred = detector.predict(inputs)
        sync(device)
        out.batch_s.append((time.perf_counter() - t0, len(batch)))
        if sampler is not None:
            out.rss_increase = max(out.rss_increase, sampler.stop() or 0)
        scores.append(pred.image_scores.detach().float().cpu())
        maps.append(pred.anomaly_maps.detach().float().cpu())
        out.items.extend(batch)
        ui.advance(len(batch))
    ui.advance(len(data.failures))
    if not out.items:
        raise RowFailed("error", "no readable test image in this category")
    t0 = time.perf_counter()
    out.scores, out.maps = detector.finalize(torch.cat(scores), torch.cat(maps))
    out.finalize_s = time.perf_counter() - t0
    return out


def write_row_scores(out: Path, plan: RowPlan, pred: Predicted, data: TestSetCache) -> str:
    """The per-image scores side file of a row (unreadable images included, score empty); its relative path."""
    root = Path(plan.dataset.root)
    records = [
        {
            "path": P.relpath(it.sample.image_path, root),
            "label": it.sample.label,
            "defect_type": it.sample.defect_type,
            "score": float(s),
            "error": "",
        }
        for it, s in zip(pred.items, pred.scores.numpy(), strict=True)
    ]
    records += [
        {
            "path": P.relpath(f.sample.image_path, root),
            "label": f.sample.label,
            "defect_type": f.sample.defect_type,
            "score": None,
            "error": f.reason,
        }
        for f in data.failures
    ]
    scores_rel = f"{SCORES_DIR}/{plan.key}.csv"
    write_scores(out / scores_rel, records)
    return scores_rel
