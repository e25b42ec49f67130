"""Batch detection job: images in, scores.csv / maps / overlays out.

Shared by ``vlmad detect``, ``vlmad demo`` and ``vlmad-runtime detect`` (torch-free: the detector is any
:class:`Scorer`, a torch detector or an exported bundle). Results are appended to ``scores.csv`` batch by batch, so an
interrupted run keeps everything finished; an unreadable image becomes a row with an ``error`` column instead of
stopping the run (unless ``on_error="stop"``). A non-finite score becomes ``error=non_finite_score`` with no
decision, never ``normal``.

Decisions come from a checked :class:`~vlmad_runtime.deploy.Deployment` (see docs in vlmad_runtime.deploy).
Overlays are QC panels (original | heatmap with colour bar | predicted mask | ground truth when known) on a fixed
scale: the deploy file's calibrated scale, else one scale for all images of the run (never per image); run.json
says which. Masks (``save_masks``) threshold the map at the deploy file's calibrated pixel threshold.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from vlmad_runtime.deploy import NOT_CALIBRATED_NOTE, Deployment
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP, MapScale, QcItem, defect_mask, qc_panel
from vlmad_runtime.errors import ImageLoadError, VlmadError
from vlmad_runtime.listing import is_image_file, list_images

CSV_FIELDS = [
    "path",
    "score",
    "decision",
    "width",
    "height",
    "map_file",
    "overlay_file",
    "mask_file",
    "defect_area",
    "error",
    "note",
]
NON_FINITE = "non_finite_score"


class Scorer(Protocol):
    """What a detection job needs: a torch detector (:class:`vlmad.methods.base.Detector`) or a
    :class:`vlmad_runtime.bundle.Bundle`."""

    def info(self) -> Any: ...

    def predict(self, images: list[Image.Image]) -> Any: ...


@dataclass
class DetectionRow:
    path: str
    score: float | None = None
    decision: str = ""
    width: int | None = None
    height: int | None = None
    map_file: str = ""
    overlay_file: str = ""
    mask_file: str = ""
    defect_area: float | None = None  # share of the image's pixels in the predicted defect mask
    error: str = ""
    note: str = ""


def expand_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded to the images directly inside them (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise VlmadError(f"directory {p} contains no images", "accepted: png, jpg, jpeg, bmp, tif")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise VlmadError(f"input {p} does not exist", "pass image files or directories of images")
    return out


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names per image: the stem, or ``<parent>_<stem>`` where stems repeat (MVTec's ``000.png`` in every
    defect folder), with a ``-n`` suffix as a last resort, so maps of different images never overwrite each other."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    out: list[str] = []
    used: set[str] = set()
    for p in paths:
        name = p.stem if counts[p.stem] == 1 else f"{p.parent.name}_{p.stem}"
        base, n = name, 1
        while name in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name)
        out.append(name)
    return out


@dataclass
class DetectionOptions:
    """What a detection run writes and how scores become decisions.

    ``deployment``: a deploy file already checked against the detector; ``forced``: its fingerprint differed and
    the user ran anyway (every row is labelled). ``gt_masks``: image path -> ground-truth mask (demo / datasets).
    """

    save_maps: bool = False
    overlay: bool = False
    save_masks: bool = False
    batch_size: int = 8
    on_error: str = "skip"
    deployment: Deployment | None = None
    forced: bool = False
    gt_masks: Mapping[str, Path] = field(default_factory=dict)


@dataclass
class _RunState:
    out_dir: Path
    opts: DetectionOptions
    stems: list[str]
    spill: Path  # maps kept for the per-run overlay scale (maps/ when saved, else a temporary folder)
    lo_samples: list[np.ndarray] = field(default_factory=list)
    hi: float = -math.inf
    pending: list[tuple[int, DetectionRow]] = field(default_factory=list)


def run_detection(
    detector: Scorer,
    images: Sequence[Path],
    out_dir: Path,
    opts: DetectionOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[DetectionRow]:
    """Score ``images`` with a ready detector (setup/fit done) and write the outputs under ``out_dir``."""
    opts = opts or DetectionOptions()
    if opts.on_error not in ("skip", "stop"):
        raise VlmadError(f"on_error must be 'skip' or 'stop', got {opts.on_error!r}")
    pixel = opts.deployment.pixel if opts.deployment else None
    if opts.save_masks and pixel is None:
        raise VlmadError(
            "--save-masks needs a deploy file with a calibrated pixel threshold",
            "write one with `vlmad calibrate ... --out deploy.json` and pass --deploy deploy.json",
        )
    info = detector.info()
    notes = [
        n
        for n in (RANDOM_WEIGHTS_STAMP if info.random_weights else "", NOT_CALIBRATED_NOTE if opts.forced else "")
        if n
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    for flag, sub in ((opts.save_maps, "maps"), (opts.overlay, "overlays"), (opts.save_masks, "masks")):
        if flag:
            (out_dir / sub).mkdir(exist_ok=True)
    if opts.save_maps and info.random_weights:
        (out_dir / "maps" / "RANDOM_WEIGHTS.txt").write_text(RANDOM_WEIGHTS_STAMP + "\n")
    tmp = None if opts.save_maps or not opts.overlay or pixel else Path(tempfile.mkdtemp(prefix="vlmad-maps-"))
    state = _RunState(out_dir, opts, unique_stems(images), tmp or out_dir / "maps")
    rows: list[DetectionRow] = []
    try:
        with open(out_dir / "scores.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for start in range(0, len(images), opts.batch_size):
                chunk = range(start, min(start + opts.batch_size, len(images)))
                batch = _score_chunk(detector, images, chunk, "; ".join(notes), state)
                for row in batch:
                    rows.append(row)
                    writer.writerow({k: ("" if v is None else v) for k, v in row.__dict__.items()})
                fh.flush()
                if progress is not None:
                    progress(len(chunk))
        scale = _run_scale(state, len(rows))
        _draw_pending(state, scale)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _write_run_json(out_dir, info.as_dict(), rows, opts, scale, notes)
    return rows


def _score_chunk(
    detector: Scorer, images: Sequence[Path], chunk: Iterable[int], note: str, state: _RunState
) -> list[DetectionRow]:
    """Load, score and decide one batch; masks now, overlays now (calibrated scale) or after the run."""
    from vlmad_runtime.images import load_image

    loaded: list[tuple[int, Image.Image]] = []
    rows = {i: DetectionRow(str(images[i]), note=note) for i in chunk}
    for i in rows:
        try:
            if not is_image_file(images[i]):
                raise ImageLoadError(str(images[i]), "not an image file (by extension)")
            img = load_image(images[i])
            loaded.append((i, img))
            rows[i].width, rows[i].height = img.size
        except ImageLoadError as err:
            if state.opts.on_error == "stop":
                raise
            rows[i].error = err.reason
    if loaded:
        scores, maps = detector.predict([img for _, img in loaded]).numpy()
        for (i, img), score, amap in zip(loaded, scores, maps, strict=True):
            _finish_row(rows[i], i, img, float(score), amap, state)
    return list(rows.values())


def _finish_row(row: DetectionRow, i: int, img: Image.Image, score: float, amap: np.ndarray, state: _RunState) -> None:
    opts, stem = state.opts, state.stems[i]
    if not math.isfinite(score) or not np.isfinite(amap).all():
        row.error = NON_FINITE  # no score, no decision, no picture: never "normal"
        return
    row.score = score
    dep = opts.deployment
    if dep is not None:
        row.decision = dep.decide(score)
    if opts.save_maps:
        np.save(state.out_dir / "maps" / f"{stem}.npy", amap.astype(np.float32))
        row.map_file = f"maps/{stem}.npy"
    if dep is not None and dep.pixel is not None:
        mask = defect_mask(amap, dep.pixel.pixel_threshold, img.size)
        row.defect_area = float(mask.mean())
        if opts.save_masks:
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(state.out_dir / "masks" / f"{stem}.png")
            row.mask_file = f"masks/{stem}.png"
    if not opts.overlay:
        return
    row.overlay_file = f"overlays/{stem}.png"
    if dep is not None and dep.pixel is not None:
        _draw(row, img, amap, _calibrated_scale(dep), state)
        return
    if state.spill != state.out_dir / "maps":
        np.save(state.spill / f"{stem}.npy", amap.astype(np.float32))
    flat = amap.ravel()
    state.lo_samples.append(flat[:: max(1, flat.size // 4096)].copy())
    state.hi = max(state.hi, float(amap.max()))
    state.pending.append((i, row))


def _calibrated_scale(dep: Deployment) -> MapScale:
    assert dep.pixel is not None
    n = dep.pixel.details.get("n_images", "?")
    return MapScale(*dep.pixel.map_scale, source=f"calibrated on {n} normal image(s) ({dep.where})")


def _run_scale(state: _RunState, n_rows: int) -> MapScale | None:
    """The calibrated scale, or one scale for the whole run: [median of its pixels, its largest pixel]."""
    dep = state.opts.deployment
    if dep is not None and dep.pixel is not None:
        return _calibrated_scale(dep)
    if not state.lo_samples:
        return None
    lo = float(np.median(np.concatenate(state.lo_samples)))
    hi = state.hi if state.hi > lo else lo + 1e-6
    return MapScale(lo, hi, f"fixed per run ({n_rows} image(s)): not calibrated, pass --deploy for a calibrated one")


def _draw_pending(state: _RunState, scale: MapScale | None) -> None:
    from vlmad_runtime.images import load_image

    for i, row in state.pending:
        amap = np.load(state.spill / f"{state.stems[i]}.npy")
        _draw(row, load_image(Path(row.path)), amap, scale, state)


def _draw(row: DetectionRow, img: Image.Image, amap: np.ndarray, scale: MapScale | None, state: _RunState) -> None:
    from vlmad_runtime.images import load_mask

    assert scale is not None
    dep = state.opts.deployment
    gt_path = state.opts.gt_masks.get(row.path)
    gt = load_mask(gt_path, img.size) if gt_path else None
    item = QcItem(
        img,
        amap,
        row.score,
        row.decision,
        dep.threshold if dep else None,
        dep.pixel.pixel_threshold if dep and dep.pixel else None,
        gt,
        row.note,
    )
    qc_panel(item, scale).save(state.out_dir / row.overlay_file)


def _write_run_json(
    out_dir: Path,
    info: dict,
    rows: Sequence[DetectionRow],
    opts: DetectionOptions,
    scale: MapScale | None,
    notes: Sequence[str],
) -> None:
    dep = opts.deployment
    (out_dir / "run.json").write_text(
        json.dumps(
            {
                "detector": info,
                "n_images": len(rows),
                "threshold": dep.threshold if dep else None,
                "deploy": dep.where if dep else None,
                "threshold_calibrated_for_this_detector": None if dep is None else not opts.forced,
                "pixel_threshold": dep.pixel.pixel_threshold if dep and dep.pixel else None,
                "heatmap_scale": None if scale is None else {"lo": scale.lo, "hi": scale.hi, "source": scale.source},
                "n_errors": sum(1 for r in rows if r.error),
                "n_non_finite": sum(1 for r in rows if r.error == NON_FINITE),
                "warning": "; ".join(notes) or None,
            },
            indent=2,
        )
    )
