"""The gallery's data: which rows and images the heatmap gallery shows (best detection, worst false alarm, worst
miss, borderline) at which threshold, and the run's step that stores their anomaly maps
(:func:`compute_gallery_maps`, ``report_files/gallery_cache/``) so the report itself only reads the folder."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmad.bench.protocol import keyed_kwargs
from vlmad.bench.results import read_scores
from vlmad.bench.tables import Config
from vlmad.report.context import ASSETS_DIR, DatasetBlock, Log, ReportContext, collect, load_deploys
from vlmad_runtime.fileio import atomic_write_text


def _method_specs(ctx: ReportContext) -> dict[str, dict[str, Any]]:
    """Original method specs (real paths) by label, from study.json and run.json."""
    specs: dict[str, dict[str, Any]] = {}
    for inv in ctx.invocations:
        for m in (inv.get("config") or {}).get("methods") or []:
            if isinstance(m, Mapping) and m.get("label"):
                specs[m["label"]] = dict(m)
    for phase in (ctx.study or {}).get("phases") or []:
        for m in phase.get("methods") or []:
            specs[m["label"]] = dict(m)
    return specs


def _threshold_for(
    ctx: ReportContext, row: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> tuple[float, str]:
    """The operating threshold of a row for the gallery's verdicts: its calibrated deploy threshold, else the
    F1-optimal one on its test scores, else their median."""
    for _, d in load_deploys(ctx.run_dir):
        if d["calibration"].get("row_key") == row["row_key"]:
            return float(d["threshold"]), "calibrated deploy threshold"
    from vlmad.study.calibration import f1_optimal_threshold

    scored = [r for r in records if r["score"] is not None]
    try:
        cal = f1_optimal_threshold([r["score"] for r in scored], [r["label"] == "anomalous" for r in scored])
        return cal.threshold, "F1-optimal threshold on the test scores"
    except Exception:
        return float(np.median([r["score"] for r in scored])) if scored else 0.5, "median test score"


def _gallery_rows(ctx: ReportContext) -> list[tuple[DatasetBlock, Config, dict[str, Any]]]:
    """The main-grid rows the gallery shows: per dataset one shot count and one seed (the spec's choice when
    present)."""
    spec = (ctx.study or {}).get("spec") or {}
    rep = spec.get("report") or {}
    out = []
    for ds in ctx.datasets:
        if not ds.configs:
            continue
        shots_avail = sorted({c.shots for c in ds.configs})
        want = rep.get("gallery_shots")
        shots = want if want in shots_avail else shots_avail[0]
        for c in ds.configs:
            if c.shots != shots:
                continue
            seed = rep.get("gallery_seed")
            seeds = c.seeds
            chosen_seed = seed if seed in seeds else seeds[0]
            for r in sorted(c.rows, key=lambda r: r["dataset"]["category"]):
                if r["seed"] == chosen_seed:
                    out.append((ds, c, r))
    return out


@dataclass
class GalleryItem:
    """One (dataset, configuration, row) of the gallery with its picked images and operating threshold."""

    ds: DatasetBlock
    config: Config
    row: dict[str, Any]
    picks: list[Any]
    threshold: float
    how: str
    cache_path: Path


def gallery_items(ctx: ReportContext) -> list[GalleryItem]:
    """The gallery items of the run (rows with their picked images, threshold and map cache file)."""
    from vlmad.report import gallery as G

    spec = (ctx.study or {}).get("spec") or {}
    per_kind = int((spec.get("report") or {}).get("gallery_per_kind", 1) or 1)
    out = []
    for ds, c, row in _gallery_rows(ctx):
        records = read_scores(ctx.run_dir / row["scores_file"])
        threshold, how = _threshold_for(ctx, row, records)
        picks = G.select_images(records, threshold, per_kind)
        if picks:
            out.append(
                GalleryItem(
                    ds,
                    c,
                    row,
                    picks,
                    threshold,
                    how,
                    ctx.run_dir / ASSETS_DIR / "gallery_cache" / f"{row['row_key']}.npz",
                )
            )
    return out


def compute_gallery_maps(
    run_dir: str | Path, factory: Any = None, device: str | None = None, log: Log | None = None
) -> dict[str, str]:
    """The run's step that stores the anomaly maps of the few gallery images (``report_files/gallery_cache``):
    the harness keeps scores, not maps, so the row's detector is rebuilt from its recorded method spec. The report
    itself then only reads the folder. Returns {configuration label: reason} for the ones that failed."""
    from vlmad.report import gallery as G

    say = log or (lambda _m: None)
    ctx = collect(Path(run_dir).expanduser())
    if not ((((ctx.study or {}).get("spec") or {}).get("report") or {}).get("gallery", True)):
        return {}
    if factory is None:
        from vlmad.bench.runner import build_detector_from_spec

        factory = build_detector_from_spec
    device = device or ((ctx.study or {}).get("options") or {}).get("device") or "cpu"
    specs = _method_specs(ctx)
    detectors: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for item in gallery_items(ctx):
        label = item.row["method_label"]
        if label in failed or not G.needs_recompute(item.row, item.picks, item.cache_path):
            continue
        try:
            if label not in detectors:
                spec_m = specs.get(label)
                if spec_m is None or keyed_kwargs(spec_m.get("kwargs") or {}) != (
                    item.row.get("method_spec") or {}
                ).get("kwargs"):
                    raise RuntimeError(
                        "the method spec of this row is not recorded in study.json/run.json (or a "
                        "file it names has changed)"
                    )
                say(f"gallery: building {label} to compute maps")
                detectors[label] = factory({**spec_m, "kwargs": {**spec_m["kwargs"], "device": device}})
            G.recompute_maps(detectors[label], item.row, item.picks, item.cache_path)
        except Exception as err:  # a gallery must not stop the run
            failed[label] = f"{type(err).__name__}: {err}"
            say(f"gallery: maps of {label} not computed ({failed[label]})")
    if failed:
        atomic_write_text(ctx.run_dir / ASSETS_DIR / "gallery_cache" / "failed.json", json.dumps(failed, indent=1))
    return failed


def gallery_failures(run_dir: Path) -> dict[str, str]:
    """Why the maps of some configurations could not be computed ({label: reason}), as stored by the run."""
    try:
        return dict(json.loads((run_dir / ASSETS_DIR / "gallery_cache" / "failed.json").read_text()))
    except (OSError, ValueError):
        return {}
