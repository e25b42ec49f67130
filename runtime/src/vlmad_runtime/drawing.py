"""Heatmap overlays: an anomaly map drawn over the original image, as an operator looks at it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

RANDOM_WEIGHTS_STAMP = "random weights - scores are meaningless"


def colorize(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None,
             cmap: str = "jet") -> np.ndarray:
    """Map values -> RGB uint8 with a matplotlib colormap; a constant map is drawn at the colormap's low end."""
    from matplotlib import colormaps

    amap = np.asarray(amap, dtype=np.float32)
    lo = float(np.min(amap)) if vmin is None else float(vmin)
    hi = float(np.max(amap)) if vmax is None else float(vmax)
    norm = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    rgba = colormaps[cmap](np.clip(norm, 0.0, 1.0))
    return (rgba[..., :3] * 255).astype(np.uint8)


def overlay_heatmap(image: Image.Image, amap: np.ndarray, alpha: float = 0.5, vmin: float | None = None,
                    vmax: float | None = None, stamp: str | None = None) -> Image.Image:
    """Blend the colorised map (resized to the image, bilinear) over the image; optional text stamp."""
    image = image.convert("RGB")
    heat = Image.fromarray(colorize(amap, vmin, vmax)).resize(image.size, Image.BILINEAR)
    out = Image.blend(image, heat, float(np.clip(alpha, 0.0, 1.0)))
    if stamp:
        stamp_image(out, stamp)
    return out


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
