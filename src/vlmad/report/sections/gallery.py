"""The heatmap gallery section: per category and configuration, triptychs (image | mask | overlay) of the picked
test images, drawn from the maps stored in the run folder (never from a model)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from vlmad.bench.protocol import relpath
from vlmad.report.context import ASSETS_DIR, ReportContext
from vlmad.report.gallery_maps import GalleryItem, gallery_failures, gallery_items
from vlmad.report.html import Doc
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP


def section_gallery(doc: Doc, ctx: ReportContext, enabled: bool) -> None:
    """The gallery items per dataset; an item whose maps are not stored gets a note saying why."""
    from vlmad.data import load_dataset
    from vlmad.report import gallery as G

    sec = doc.section("gallery", "Heatmap gallery")
    sec.para(
        "Per category and method: the clearest detection (highest-scored anomaly), the highest-scored normal "
        "image (the worst false alarm if any), the lowest-scored anomaly (the worst miss if any) and the image "
        "closest to the operating threshold — image | ground-truth mask (white = defect) | anomaly-map overlay "
        "(colour scale shared within a category). The harness stores scores, not maps: the run computed the "
        f"maps of these few images with the row's detector and references (`{ASSETS_DIR}/gallery_cache/`)."
    )
    if not enabled:
        sec.note("Gallery disabled for this report.", "empty")
        return
    items = gallery_items(ctx)
    if not items:
        sec.note("No main-grid row to show.", "empty")
        return
    failed = gallery_failures(ctx.run_dir)
    readers: dict[tuple[str, str], Any] = {}
    ctx.data["gallery"] = []
    current_ds = None
    for item in items:
        if current_ds != item.ds.name:
            sec.heading(f"{item.ds.title}", 3, ident=f"gallery-{item.ds.name}")
            current_ds = item.ds.name
        title = f"{item.row['dataset']['category']} — {item.config.label}"
        if G.needs_recompute(item.row, item.picks, item.cache_path):
            why = (
                failed.get(item.row["method_label"])
                or "not stored in this run folder; `vlmad report RUN` computes them"
            )
            sec.note(f"{title}: no maps ({why}).", "warn")
            continue
        ident = (item.row["dataset"]["kind"], item.row["dataset"]["root"])
        if ident not in readers:
            readers[ident] = load_dataset(*ident)
        _gallery_entry(sec, ctx, item, readers[ident], title)


def _gallery_entry(sec: Any, ctx: ReportContext, item: GalleryItem, reader: Any, title: str) -> None:
    """One category's triptychs (image | mask | overlay) with captions, from the stored maps."""
    from vlmad.report import gallery as G

    row, c, ds, threshold = item.row, item.config, item.ds, item.threshold
    cat, label = row["dataset"]["category"], row["method_label"]
    maps = G.recompute_maps(None, row, item.picks, item.cache_path)  # every map is stored: nothing is computed
    root = Path(row["dataset"]["root"])
    samples = {relpath(s.image_path, root): s for s in reader.samples(cat, "test")}
    all_maps = [maps[p.path][1] for p in item.picks]
    vmin = float(min(np.min(m) for m in all_maps))
    vmax = float(max(np.max(m) for m in all_maps))
    stamp = RANDOM_WEIGHTS_STAMP if ctx.random else None
    items = []
    for p in item.picks:
        score, amap = maps[p.path]
        sample = samples.get(p.path)
        img = G.triptych(root / p.path, sample.mask_path if sample is not None else None, amap, vmin, vmax, stamp=stamp)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        decision = "anomalous" if p.score >= threshold else "normal"
        verdict = (
            "correct"
            if (decision == "anomalous") == p.is_anomalous
            else "false alarm"
            if decision == "anomalous"
            else "missed"
        )
        drift = (
            ""
            if abs(score - p.score) <= 1e-4 * max(1.0, abs(p.score))
            else f" (recomputed score {score:.4g} differs from the stored one)"
        )
        caption = (
            f"**{p.kind}** · `{p.path}` · {p.label}"
            + (f" ({p.defect_type})" if p.is_anomalous else "")
            + f" · score {p.score:.4g} vs threshold {threshold:.4g} ({item.how}) → {decision} ({verdict})"
            + drift
        )
        name = f"{ds.name}-{cat}-{label}-{c.shots}shot-{p.kind.replace(' ', '-')}"
        items.append({"name": name.replace("/", "_").replace(" ", "_"), "data": buf.getvalue(), "caption": caption})
        ctx.data["gallery"].append(
            {
                "dataset": ds.name,
                "category": cat,
                "config": c.key,
                "kind": p.kind,
                "path": p.path,
                "score": p.score,
                "recomputed_score": score,
            }
        )
    sec.heading(title, 4)
    sec.para(
        f"image | ground truth | anomaly map over the image; colour scale {vmin:.3g} (blue) to {vmax:.3g} "
        "(red), shared by the images of this category."
    )
    sec.gallery(f"{ds.name}-{cat}-{label}", items)


# ---------------------------------------------------------------------------------------------------------------
# appendix
