"""Heatmaps, defect masks and QC panels as an operator looks at them (numpy + Pillow only, torch-free).

Overlays are drawn on a **fixed scale** ``[lo, hi]``: the one calibrated on normal images (deploy file), or one
shared by every image of a run; never min-max per image (that paints a good part as hot as a defective one).
Every heatmap carries a colour bar with the scale, and the pixel threshold when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RANDOM_WEIGHTS_STAMP = "random weights - scores are meaningless"
BAR_WIDTH = 64


@dataclass(frozen=True)
class MapScale:
    """Colour scale of heatmaps: ``lo`` -> blue, ``hi`` (and above) -> red; ``source`` says where it comes from."""

    lo: float
    hi: float
    source: str  # e.g. "calibrated on 40 normal images" or "fixed per run (12 images), not calibrated"


def jet(x: np.ndarray) -> np.ndarray:
    """The 'jet' colour map on values in [0, 1] -> float RGB in [0, 1] (piecewise linear)."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peaks at 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def colorize(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str = "jet") -> np.ndarray:
    """Map values -> RGB uint8 (jet); a bound left out is taken from the map; a constant map is drawn low."""
    if cmap != "jet":
        raise ValueError(f"only the 'jet' colour map is available, got {cmap!r}")
    amap = np.asarray(amap, dtype=np.float32)
    lo = float(np.min(amap)) if vmin is None else float(vmin)
    hi = float(np.max(amap)) if vmax is None else float(vmax)
    norm = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    return (jet(norm) * 255).round().astype(np.uint8)


def upsample_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized bilinearly to ``size`` = (W, H) of the original image, float32."""
    img = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32)


def defect_mask(amap: np.ndarray, pixel_threshold: float, size: tuple[int, int]) -> np.ndarray:
    """Boolean defect mask at the image size: the upsampled map >= the calibrated pixel threshold."""
    return upsample_map(amap, size) >= float(pixel_threshold)


def overlay_heatmap(
    image: Image.Image,
    amap: np.ndarray,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    stamp: str | None = None,
) -> Image.Image:
    """Blend the colourised map (resized to the image, bilinear) over the image; optional text stamp."""
    image = image.convert("RGB")
    heat = Image.fromarray(colorize(upsample_map(amap, image.size), vmin, vmax))
    out = Image.blend(image, heat, float(np.clip(alpha, 0.0, 1.0)))
    if stamp:
        stamp_image(out, stamp)
    return out


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (inside pixels with an outside 4-neighbour)."""
    m = np.asarray(mask, dtype=bool)
    pad = np.pad(m, 1, constant_values=False)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return m & ~inner


def draw_contour(
    image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255), width: int = 2
) -> Image.Image:
    """Copy of ``image`` with the mask's outline drawn (thickened to ``width`` pixels)."""
    edge = mask_contour(mask)
    for _ in range(max(0, width - 1)):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:, 1:] |= edge[:, :-1]
        edge = grown
    arr = np.array(image.convert("RGB"))
    arr[edge] = colour
    return Image.fromarray(arr)


def colour_bar(height: int, scale: MapScale, threshold: float | None = None) -> Image.Image:
    """Vertical colour bar (hi at the top) labelled with the scale, and a line at the pixel threshold."""
    bar_h = max(32, height - 24)
    ramp = jet(np.linspace(1.0, 0.0, bar_h))[:, None, :].repeat(14, axis=1)
    out = Image.new("RGB", (BAR_WIDTH, height), (255, 255, 255))
    out.paste(Image.fromarray((ramp * 255).round().astype(np.uint8)), (2, 12))
    draw = ImageDraw.Draw(out)
    draw.text((18, 8), f"{scale.hi:.3g}", fill=(0, 0, 0))
    draw.text((18, 12 + bar_h - 10), f"{scale.lo:.3g}", fill=(0, 0, 0))
    if threshold is not None and scale.hi > scale.lo:
        frac = float(np.clip((threshold - scale.lo) / (scale.hi - scale.lo), 0.0, 1.0))
        y = 12 + round((1.0 - frac) * (bar_h - 1))
        draw.line([(0, y), (17, y)], fill=(0, 0, 0), width=2)
        draw.text((18, max(0, y - 5)), f"t={threshold:.3g}", fill=(0, 0, 0))
    return out


def heatmap_with_bar(
    image: Image.Image,
    amap: np.ndarray,
    scale: MapScale,
    threshold: float | None = None,
    alpha: float = 0.5,
    mask: np.ndarray | None = None,
) -> Image.Image:
    """Overlay on the fixed scale, optional mask contour, colour bar on the right."""
    over = overlay_heatmap(image, amap, alpha, scale.lo, scale.hi)
    if mask is not None:
        over = draw_contour(over, mask)
    out = Image.new("RGB", (over.width + BAR_WIDTH, over.height), (255, 255, 255))
    out.paste(over, (0, 0))
    out.paste(colour_bar(over.height, scale, threshold), (over.width, 0))
    return out


def mask_image(mask: np.ndarray) -> Image.Image:
    """Boolean mask -> black/white image (white = defect)."""
    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L")


def stamp_image(image: Image.Image, text: str) -> Image.Image:
    """Write ``text`` on a dark band at the top of the image (in place)."""
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((0, 0), text)
    band = box[3] - box[1] + 6
    draw.rectangle([0, 0, image.width, band], fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 80, 80))
    return image


def side_by_side(*panels: Image.Image, height: int = 256) -> Image.Image:
    """Panels scaled to one height and concatenated horizontally (image | mask | overlay galleries)."""
    scaled = [p.convert("RGB").resize((max(1, round(p.width * height / p.height)), height)) for p in panels]
    out = Image.new("RGB", (sum(p.width for p in scaled) + 4 * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for p in scaled:
        out.paste(p, (x, 0))
        x += p.width + 4
    return out


@dataclass
class QcItem:
    """One image's decision material for :func:`qc_panel`."""

    image: Image.Image
    amap: np.ndarray
    score: float | None
    decision: str
    threshold: float | None
    pixel_threshold: float | None = None
    gt_mask: np.ndarray | None = None
    note: str = ""


def qc_panel(item: QcItem, scale: MapScale, height: int = 256) -> Image.Image:
    """original | heatmap + colour bar (+ predicted contour) | predicted mask | GT mask, and a caption with the
    score, the decision, the threshold in use and the scale's origin."""
    size = item.image.size
    pred = None if item.pixel_threshold is None else defect_mask(item.amap, item.pixel_threshold, size)
    scaled_h = height
    heat = heatmap_with_bar(item.image, item.amap, scale, item.pixel_threshold, mask=pred)
    panels = [item.image, heat]
    titles = ["original", "heatmap"]
    if pred is not None:
        panels.append(mask_image(pred))
        titles.append(f"predicted mask ({100 * pred.mean():.1f} %)")
    if item.gt_mask is not None:
        panels.append(mask_image(np.asarray(item.gt_mask) > 0))
        titles.append("ground-truth mask")
    row = side_by_side(*panels, height=scaled_h)
    score = "n/a" if item.score is None else f"{item.score:.4g}"
    thr = "none (no deploy file)" if item.threshold is None else f"{item.threshold:.4g}"
    lines = [
        f"score {score}   decision {item.decision or '-'}   threshold {thr}",
        "panels: " + " | ".join(titles),
        f"heatmap scale [{scale.lo:.3g}, {scale.hi:.3g}]: {scale.source}",
    ]
    if item.note:
        lines.append(item.note)
    out = Image.new("RGB", (row.width, row.height + 14 * len(lines) + 6), (255, 255, 255))
    out.paste(row, (0, 0))
    draw = ImageDraw.Draw(out)
    for n, line in enumerate(lines):
        colour = (200, 0, 0) if line == item.note else (0, 0, 0)
        draw.text((4, row.height + 4 + 14 * n), line, fill=colour)
    if item.note:  # also on a dark band over the pictures: a cropped screenshot keeps the warning
        stamp_image(out, item.note)
    return out
