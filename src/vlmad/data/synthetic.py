"""Small deterministic datasets with exact masks, for tests, demos and smoke runs.

Neither MVTec AD nor VisA can be downloaded on build machines, yet every reader, metric and method needs
data in the real layouts with real masks. :func:`make_dataset` writes such data procedurally (numpy + PIL, no
files needed): per category a family of normal images (a periodic texture, a textured disc "object" on a
background, or a grid) with small random variation between images, and test images with pasted anomalies
(scratches, stain blobs, colour spots, cut-out holes) whose masks are *exactly* the changed pixels.

Everything is a function of ``(seed, category, group, index)``, so the same call always writes the same bytes
and a single image can be regenerated with :func:`normal_image` (tests use this to check that pixels outside a
mask are untouched). :func:`paste_anomaly` works in memory and is meant for synthetic-anomaly training too.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from vlmad.data.base import parse_names
from vlmad_runtime.errors import UnknownNameError, VlmadError

SyntheticLayout = Literal["mvtec", "visa", "visa-converted", "folder"]
LAYOUTS: tuple[str, ...] = ("mvtec", "visa", "visa-converted", "folder")
DEFAULT_CATEGORIES: tuple[str, ...] = ("demo_texture", "demo_object")
ANOMALY_KINDS: tuple[str, ...] = ("scratch", "blob", "spot", "cutout")
STYLES: tuple[str, ...] = ("texture", "object", "grid")
Group = Literal["train", "test_good", "test_bad"]
_GROUP_CODES = {"train": 1, "test_good": 2, "test_bad": 3, "anomaly": 4}


def _crc(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _rng(seed: int, category: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, _crc(category), *keys])


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if w < 16 or h < 16:
        raise VlmadError(f"image size {w}x{h} is too small", "use at least 16x16 pixels")
    return w, h


def category_style(category: str) -> str:
    """Pick "texture", "object" or "grid" from the name when it contains one, else by a stable hash."""
    for style in STYLES:
        if style in category.lower():
            return style
    return STYLES[_crc(category) % len(STYLES)]


def _render(
    category: str, size: int | tuple[int, int], seed: int, index: int, group: Group
) -> tuple[np.ndarray, np.ndarray | None]:
    """One normal image (uint8 HxWx3) and, for objects, the object's foreground (where anomalies go)."""
    w, h = _as_size(size)
    style = category_style(category)
    cat = _rng(seed, category, 0)  # shared by all images of the category: what "normal" looks like
    img_rng = _rng(seed, category, _GROUP_CODES[group], index)  # per-image variation
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    s = float(min(w, h))
    c0, c1 = cat.uniform(40, 215, 3), cat.uniform(40, 215, 3)
    fg: np.ndarray | None = None

    if style == "texture":
        freqs = cat.uniform(3, 9, 3) * 2 * np.pi / s
        angles = cat.uniform(0, np.pi, 3)
        v = np.zeros((h, w))
        for f, a in zip(freqs, angles, strict=True):
            amp = 1.0 + img_rng.uniform(-0.1, 0.1)
            v += amp * np.sin(f * (np.cos(a) * xx + np.sin(a) * yy) + img_rng.uniform(0, 2 * np.pi))
        v = (v / 6.0 + 0.5).clip(0, 1)[..., None]
        img = c0 * (1 - v) + c1 * v
    elif style == "object":
        bg = cat.uniform(20, 90, 3) + (yy / h)[..., None] * cat.uniform(0, 25, 3)
        cx = w / 2 + img_rng.uniform(-0.04, 0.04) * w
        cy = h / 2 + img_rng.uniform(-0.04, 0.04) * h
        radius = 0.32 * s * (1 + img_rng.uniform(-0.03, 0.03))
        r = np.hypot(xx - cx, yy - cy)
        fg = r <= radius
        rings = 0.5 + 0.5 * np.sin(r * cat.uniform(0.3, 0.6) + img_rng.uniform(0, 2 * np.pi))
        shade = (1 - 0.35 * (r / radius) ** 2).clip(0.5, 1)
        obj = (c0 * (0.7 + 0.3 * rings[..., None])) * shade[..., None] + 20
        img = np.where(fg[..., None], obj, bg)
    else:  # grid
        period = s / cat.integers(5, 10)
        thick = max(1.0, period * cat.uniform(0.12, 0.25))
        ox, oy = img_rng.uniform(0, period, 2)
        lines = (((xx + ox) % period) < thick) | (((yy + oy) % period) < thick)
        img = np.where(lines[..., None], c1, c0 * (0.9 + 0.1 * np.sin(xx / period)[..., None]))
    img = img * (1 + img_rng.uniform(-0.05, 0.05)) + img_rng.normal(0, 3.0, (h, w, 1))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), fg


def normal_image(
    category: str, size: int | tuple[int, int] = 128, seed: int = 0, index: int = 0, group: Group = "train"
) -> np.ndarray:
    """The normal image number ``index`` of ``group`` that :func:`make_dataset` writes (uint8, HxWx3).

    Test-bad images are this image (group "test_bad") with :func:`paste_anomaly` applied.
    """
    return _render(category, size, seed, index, group)[0]


def _shape_mask(kind: str, w: int, h: int, rng: np.random.Generator, region: np.ndarray | None) -> np.ndarray:
    s = min(w, h)
    if region is not None and region.any():
        ys, xs = np.nonzero(region)
        k = int(rng.integers(len(xs)))
        cx, cy = float(xs[k]), float(ys[k])
    else:
        cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "scratch":
        points = [(cx, cy)]
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(2):
            angle += rng.uniform(-0.5, 0.5)
            step = rng.uniform(0.1, 0.22) * s
            points.append((points[-1][0] + step * np.cos(angle), points[-1][1] + step * np.sin(angle)))
        draw.line(points, fill=255, width=max(1, round(s * rng.uniform(0.012, 0.03))))
    elif kind in ("blob", "cutout"):
        n = int(rng.integers(7, 13))
        base = s * (rng.uniform(0.06, 0.12) if kind == "blob" else rng.uniform(0.07, 0.13))
        theta = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = base * rng.uniform(0.55, 1.0, n)
        draw.polygon([(cx + r * np.cos(t), cy + r * np.sin(t)) for r, t in zip(radii, theta, strict=True)], fill=255)
    elif kind == "spot":
        rx, ry = s * rng.uniform(0.025, 0.06, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    else:
        raise UnknownNameError(f"unknown anomaly kind {kind!r}", f"use one of: {', '.join(ANOMALY_KINDS)}")
    mask = np.asarray(canvas) > 0
    if not mask.any():  # degenerate shape (tiny image): at least the centre pixel
        mask[min(h - 1, max(0, int(cy))), min(w - 1, max(0, int(cx)))] = True
    return mask


def paste_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste one synthetic defect into a uint8 ``(H, W, C)`` or ``(H, W)`` image; return ``(image, mask)``.

    ``kind`` is one of :data:`ANOMALY_KINDS` (random when None); ``region`` (bool HxW) is where the defect's
    centre may fall, e.g. an object's foreground. The mask is exactly the set of changed pixels: every pixel
    inside differs from the input in at least one channel, every pixel outside is untouched. The input is
    not modified.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"paste_anomaly needs a uint8 (H, W) or (H, W, C) array, got {image.dtype} {image.shape}")
    squeeze = image.ndim == 2
    old = image[..., None] if squeeze else image
    h, w, c = old.shape
    kind = kind if kind is not None else str(rng.choice(ANOMALY_KINDS))
    mask = _shape_mask(kind, w, h, rng, region)
    o = old.astype(np.float64)
    if kind == "scratch":
        level = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])
        new = np.full_like(o, level) + rng.normal(0, 6, (h, w, 1))
    elif kind == "blob":  # a stain: the texture still shows through a tinted layer
        alpha = rng.uniform(0.5, 0.8)
        new = (1 - alpha) * o + alpha * rng.uniform(0, 255, c)
    elif kind == "spot":
        mean = o[mask].mean(axis=0)
        new = np.broadcast_to(np.where(mean > 127, mean - rng.uniform(90, 127), mean + rng.uniform(90, 127)), o.shape)
    else:  # cutout: a hole through which a dark background shows
        new = rng.uniform(0, 15) + rng.normal(0, 2, (h, w, 1)) + np.zeros_like(o)
    new = np.clip(np.round(new), 0, 255).astype(np.uint8)
    same = (new == old).all(axis=2) & mask
    new[same] = 255 - old[same]  # never equal for integers: keeps "mask == changed pixels" exact
    out = old.copy()
    out[mask] = new[mask]
    return (out[..., 0] if squeeze else out), mask


# --- writing datasets ---------------------------------------------------------------------------------------


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)


def _save_jpg(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


def _check_args(
    out_dir: Path, layout: str, categories: str | Iterable[str], counts: dict[str, int], seed: int
) -> list[str]:
    if layout not in LAYOUTS:
        raise UnknownNameError(f"unknown dataset layout {layout!r}", f"use one of: {', '.join(LAYOUTS)}")
    cats = parse_names(categories) or []
    if not cats:
        raise VlmadError("no categories given", "pass at least one category name, e.g. demo_texture,demo_object")
    for cat in cats:
        if "/" in cat or "\\" in cat or cat.startswith(".") or cat in ("train", "test", "split_csv"):
            raise VlmadError(f"invalid category name {cat!r}", "use plain folder names such as 'demo_object'")
    for name, value in counts.items():
        if value < 0:
            raise VlmadError(f"{name} must be >= 0, got {value}", f"pass a non-negative {name}")
    if counts["n_test_good"] + counts["n_test_bad"] == 0:
        raise VlmadError("the test split would be empty", "pass n_test_good and/or n_test_bad > 0")
    if seed < 0:
        raise VlmadError(f"seed must be >= 0, got {seed}", "pass a non-negative seed")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise VlmadError(
            f"output folder {out_dir} already exists and is not empty",
            "choose a new or empty folder (existing files are never overwritten or deleted)",
        )
    return cats


def make_dataset(
    out_dir: str | Path,
    layout: SyntheticLayout = "mvtec",
    categories: str | Iterable[str] = DEFAULT_CATEGORIES,
    n_train: int = 8,
    n_test_good: int = 4,
    n_test_bad: int = 4,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset to ``out_dir`` (created; must be new or empty) and return it.

    Layouts (per category ``c``; test-bad image ``j`` has anomaly kind ``ANOMALY_KINDS[j % 4]``):

    * ``mvtec``: ``c/train/good/000.png``, ``c/test/good/000.png``, ``c/test/<kind>/000.png``,
      ``c/ground_truth/<kind>/000_mask.png`` (0/255).
    * ``visa`` (raw): ``split_csv/1cls.csv``, ``c/Data/Images/{Normal,Anomaly}/*.JPG``,
      ``c/Data/Masks/Anomaly/*.png`` with label values 1..4 (the anomaly kind), not 255.
    * ``visa-converted``: ``c/train/good/*.JPG``, ``c/test/{good,bad}/*.JPG``,
      ``c/ground_truth/bad/<stem>.png`` (label values as for raw VisA).
    * ``folder``: ``c/normal/good_000.png``, ``c/anomalous/bad_000.png``, ``c/train/normal/*.png`` and
      ``c/masks/`` (0/255), alternating ``<stem>.png`` and ``<stem>_mask.png`` names (both are accepted).

    JPEG layouts (VisA) are lossy; exact pixel checks should use the PNG layouts.
    """
    out = Path(out_dir).expanduser()
    counts = {"n_train": n_train, "n_test_good": n_test_good, "n_test_bad": n_test_bad}
    cats = _check_args(out, layout, categories, counts, seed)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str, str]] = []  # the VisA split csv
    for cat in cats:
        images = _category_images(cat, size, seed, n_train, n_test_good, n_test_bad)
        if layout == "visa":
            rows += _write_visa(out, cat, images)
        else:
            _LAYOUT_WRITERS[layout](out / cat, images)
    if layout == "visa":
        (out / "split_csv").mkdir(parents=True, exist_ok=True)
        with (out / "split_csv" / "1cls.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["object", "split", "label", "image", "mask"])
            writer.writerows(rows)
    return out


@dataclass
class _CategoryImages:
    """The generated images of one category: normal train and test images, and (kind, image, mask) defects."""

    train: list[np.ndarray]
    good: list[np.ndarray]
    bad: list[tuple[str, np.ndarray, np.ndarray]]


def _category_images(
    cat: str, size: int | tuple[int, int], seed: int, n_train: int, n_test_good: int, n_test_bad: int
) -> _CategoryImages:
    train = [normal_image(cat, size, seed, i, "train") for i in range(n_train)]
    good = [normal_image(cat, size, seed, i, "test_good") for i in range(n_test_good)]
    bad: list[tuple[str, np.ndarray, np.ndarray]] = []
    for j in range(n_test_bad):
        base, fg = _render(cat, size, seed, j, "test_bad")
        kind = ANOMALY_KINDS[j % len(ANOMALY_KINDS)]
        img, mask = paste_anomaly(base, _rng(seed, cat, _GROUP_CODES["anomaly"], j), kind, fg)
        bad.append((kind, img, mask))
    return _CategoryImages(train, good, bad)


def _write_mvtec(d: Path, images: _CategoryImages) -> None:
    for i, img in enumerate(images.train):
        _save_png(img, d / "train" / "good" / f"{i:03d}.png")
    for i, img in enumerate(images.good):
        _save_png(img, d / "test" / "good" / f"{i:03d}.png")
    for j, (kind, img, mask) in enumerate(images.bad):
        _save_png(img, d / "test" / kind / f"{j:03d}.png")
        _save_png(mask.astype(np.uint8) * 255, d / "ground_truth" / kind / f"{j:03d}_mask.png")


def _write_visa(out: Path, cat: str, images: _CategoryImages) -> list[tuple[str, str, str, str, str]]:
    """Raw VisA files of one category; returns its rows of the split csv."""
    rows = []
    normals = [("train", img) for img in images.train] + [("test", img) for img in images.good]
    for i, (split, img) in enumerate(normals):
        rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
        _save_jpg(img, out / rel)
        rows.append((cat, split, "normal", rel, ""))
    for j, (kind, img, mask) in enumerate(images.bad):
        rel, mrel = f"{cat}/Data/Images/Anomaly/{j:03d}.JPG", f"{cat}/Data/Masks/Anomaly/{j:03d}.png"
        _save_jpg(img, out / rel)
        _save_png(mask.astype(np.uint8) * (ANOMALY_KINDS.index(kind) + 1), out / mrel)
        rows.append((cat, "test", "anomaly", rel, mrel))
    return rows


def _write_visa_converted(d: Path, images: _CategoryImages) -> None:
    for i, img in enumerate(images.train):
        _save_jpg(img, d / "train" / "good" / f"{i:04d}.JPG")
    for i, img in enumerate(images.good):
        _save_jpg(img, d / "test" / "good" / f"{len(images.train) + i:04d}.JPG")
    for j, (kind, img, mask) in enumerate(images.bad):
        _save_jpg(img, d / "test" / "bad" / f"{j:03d}.JPG")
        _save_png(
            mask.astype(np.uint8) * (ANOMALY_KINDS.index(kind) + 1),
            d / "ground_truth" / "bad" / f"{j:03d}.png",
        )


def _write_folder(d: Path, images: _CategoryImages) -> None:
    for i, img in enumerate(images.train):
        _save_png(img, d / "train" / "normal" / f"ref_{i:03d}.png")
    for i, img in enumerate(images.good):
        _save_png(img, d / "normal" / f"good_{i:03d}.png")
    (d / "anomalous").mkdir(parents=True, exist_ok=True)
    (d / "masks").mkdir(parents=True, exist_ok=True)
    for j, (_, img, mask) in enumerate(images.bad):
        _save_png(img, d / "anomalous" / f"bad_{j:03d}.png")
        suffix = "_mask" if j % 2 else ""
        _save_png(mask.astype(np.uint8) * 255, d / "masks" / f"bad_{j:03d}{suffix}.png")


#: the per-category writer of each layout (raw VisA also writes a split csv: see make_dataset)
_LAYOUT_WRITERS = {"mvtec": _write_mvtec, "visa-converted": _write_visa_converted, "folder": _write_folder}
