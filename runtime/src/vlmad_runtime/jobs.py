"""Batch detection job: images in, scores.csv / maps / overlays out.

Shared by ``vlmad detect``, ``vlmad demo`` and ``vlmad-runtime detect`` (torch-free: the detector is anything with
``info()`` and ``predict(list of PIL images)``, a torch detector or an exported bundle).
Results are appended to ``scores.csv`` batch by batch, so an
interrupted run keeps everything finished; an unreadable image becomes a row with an ``error`` column instead of
stopping the run (unless ``on_error="stop"``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP, overlay_heatmap
from vlmad_runtime.errors import ImageLoadError, VlmadError
from vlmad_runtime.listing import is_image_file, list_images

CSV_FIELDS = ["path", "score", "decision", "width", "height", "map_file", "overlay_file", "error", "note"]


class Scorer(Protocol):
    """What a detection job needs: a torch :class:`vlmad.methods.base.Detector` or a
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


def run_detection(
    detector: Scorer,
    images: Sequence[Path],
    out_dir: Path,
    save_maps: bool = False,
    overlay: bool = False,
    batch_size: int = 8,
    on_error: str = "skip",
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[DetectionRow]:
    """Score ``images`` with a ready detector (setup/fit done) and write the outputs under ``out_dir``."""
    from vlmad_runtime.images import load_image

    if on_error not in ("skip", "stop"):
        raise VlmadError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    info = detector.info()
    note = RANDOM_WEIGHTS_STAMP if info.random_weights else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps({"detector": info.as_dict(), "n_images": len(images),
                                                  "threshold": threshold, "warning": note or None}, indent=2))
    maps_dir, overlay_dir = out_dir / "maps", out_dir / "overlays"
    if save_maps:
        maps_dir.mkdir(exist_ok=True)
        if note:
            (maps_dir / "RANDOM_WEIGHTS.txt").write_text(note + "\n")
    if overlay:
        overlay_dir.mkdir(exist_ok=True)
    stems = unique_stems(images)
    rows: list[DetectionRow] = []
    csv_path = out_dir / "scores.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for start in range(0, len(images), batch_size):
            chunk = list(range(start, min(start + batch_size, len(images))))
            loaded: list[tuple[int, Image.Image]] = []
            batch_rows = {i: DetectionRow(str(images[i]), note=note) for i in chunk}
            for i in chunk:
                try:
                    if not is_image_file(images[i]):
                        raise ImageLoadError(str(images[i]), "not an image file (by extension)")
                    img = load_image(images[i])
                    loaded.append((i, img))
                    batch_rows[i].width, batch_rows[i].height = img.size
                except ImageLoadError as err:
                    if on_error == "stop":
                        raise
                    batch_rows[i].error = err.reason
            if loaded:
                pred = detector.predict([img for _, img in loaded])
                scores, maps = pred.numpy()
                for (i, img), score, amap in zip(loaded, scores, maps, strict=True):
                    row = batch_rows[i]
                    row.score = float(score)
                    if threshold is not None:
                        row.decision = "anomalous" if score >= threshold else "normal"
                    if save_maps:
                        name = f"{stems[i]}.npy"
                        np.save(maps_dir / name, amap.astype(np.float32))
                        row.map_file = f"maps/{name}"
                    if overlay:
                        name = f"{stems[i]}.png"
                        overlay_heatmap(img, amap, stamp=note or None).save(overlay_dir / name)
                        row.overlay_file = f"overlays/{name}"
            for i in chunk:
                rows.append(batch_rows[i])
                writer.writerow({k: ("" if v is None else v) for k, v in batch_rows[i].__dict__.items()})
            fh.flush()
            if progress is not None:
                progress(len(chunk))
    return rows
