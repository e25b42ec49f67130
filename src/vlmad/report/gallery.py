"""Heatmap gallery: the best, worst and borderline test images of a category, as image | mask | overlay.

The harness stores per-image *scores* (``scores/<row_key>.csv``), not maps (a full grid's maps would be gigabytes).
The gallery therefore **recomputes** the maps of the few images it shows: it rebuilds the row's detector from the
run's recorded method spec, sets it up for the category, fits the row's recorded few-shot references and predicts
the chosen images. Maps are cached in ``report_files/gallery_cache/<row_key>.npz`` so a re-rendered report
recomputes nothing; the recomputed score is checked against the stored one.

Selection per (configuration, category), with ``n = per_kind``:

* **best**: the n anomalous images with the highest scores (the clearest detections);
* **worst**: the n normal images with the highest scores (the worst false alarms, or the closest calls when none is
  over the threshold) and the n anomalous images with the lowest scores (the worst misses);
* **borderline**: the n remaining images whose scores are closest to the operating threshold (the calibrated
  deploy threshold when there is one, else the F1-optimal threshold on the test scores).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmad_runtime.drawing import overlay_heatmap, side_by_side, stamp_image

KINDS = ("best detection", "highest-scored normal", "lowest-scored anomaly", "borderline")


@dataclass
class Pick:
    kind: str
    path: str
    label: str
    defect_type: str
    score: float

    @property
    def is_anomalous(self) -> bool:
        return self.label == "anomalous"


def select_images(records: Sequence[Mapping[str, Any]], threshold: float, per_kind: int = 1) -> list[Pick]:
    """Gallery picks from one row's per-image scores (see module docstring); no image is picked twice."""
    scored = [r for r in records if r.get("score") is not None]
    bad = sorted((r for r in scored if r["label"] == "anomalous"), key=lambda r: -r["score"])
    good = sorted((r for r in scored if r["label"] != "anomalous"), key=lambda r: -r["score"])
    used: set[str] = set()
    out: list[Pick] = []

    def take(kind: str, candidates: Sequence[Mapping[str, Any]]) -> None:
        n = 0
        for r in candidates:
            if n >= per_kind:
                break
            if r["path"] in used:
                continue
            used.add(r["path"])
            out.append(Pick(kind, r["path"], r["label"], r.get("defect_type") or "", float(r["score"])))
            n += 1

    take(KINDS[0], bad)
    take(KINDS[1], good)
    take(KINDS[2], list(reversed(bad)))
    take(KINDS[3], sorted(scored, key=lambda r: abs(r["score"] - threshold)))
    return out


def _cache_key(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:16]


def load_cache(path: Path) -> dict[str, tuple[float, np.ndarray]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            return {
                k[4:]: (float(data[f"score{k[3:]}"]), data[k].astype(np.float32))
                for k in data.files
                if k.startswith("map")
            }
    except (OSError, ValueError, KeyError):
        return {}


def save_cache(path: Path, maps: Mapping[str, tuple[float, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for key, (score, amap) in maps.items():
        arrays[f"map_{key}"] = np.asarray(amap, dtype=np.float16)
        arrays[f"score_{key}"] = np.asarray(score, dtype=np.float64)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def recompute_maps(
    detector: Any, row: Mapping[str, Any], picks: Sequence[Pick], cache_path: Path
) -> dict[str, tuple[float, np.ndarray]]:
    """Maps (model input resolution) and scores of the picked images, from the cache or recomputed."""
    from vlmad_runtime.images import load_image

    cached = load_cache(cache_path)
    want = {_cache_key(p.path): p for p in picks}
    missing = [k for k in want if k not in cached]
    if missing:
        root = Path(row["dataset"]["root"])
        detector.setup(row["dataset"]["category"])
        detector.reset_references()
        if row["shots"]:
            detector.fit([root / p for p in row.get("references") or []])
        images = [load_image(root / want[k].path) for k in missing]
        pred = detector.predict(images)
        scores, maps = pred.numpy()
        for k, s, m in zip(missing, scores, maps, strict=True):
            cached[k] = (float(s), m.astype(np.float32))
        save_cache(cache_path, cached)
    return {want[k].path: cached[k] for k in want}


def needs_recompute(row: Mapping[str, Any], picks: Sequence[Pick], cache_path: Path) -> bool:
    cached = load_cache(cache_path)
    return any(_cache_key(p.path) not in cached for p in picks)


def triptych(
    image_path: Path,
    mask_path: Path | None,
    amap: np.ndarray,
    vmin: float,
    vmax: float,
    height: int = 160,
    stamp: str | None = None,
) -> Image.Image:
    """image | ground-truth mask (white = defect; black for a normal image) | heatmap overlay."""
    from vlmad_runtime.images import load_image, load_mask

    image = load_image(image_path).convert("RGB")
    if mask_path is not None:
        mask = Image.fromarray(load_mask(mask_path).astype(np.uint8) * 255, "L").convert("RGB")
    else:
        mask = Image.new("RGB", image.size, (0, 0, 0))
    over = overlay_heatmap(image, amap, alpha=0.5, vmin=vmin, vmax=vmax)
    out = side_by_side(image, mask, over, height=height)
    if stamp:  # on a strip of its own, so the band hides no pixel of the images
        strip = stamp_image(Image.new("RGB", (out.width, 16), (0, 0, 0)), stamp)
        framed = Image.new("RGB", (out.width, out.height + strip.height), (255, 255, 255))
        framed.paste(strip, (0, 0))
        framed.paste(out, (0, strip.height))
        out = framed
    return out
