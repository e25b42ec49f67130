"""Turning an upload into what the model queue may hold: never the full-resolution image.

A 3000x3000 upload decodes to 27 MB of RGB; a request then waits in the model queue for up to the request timeout.
:func:`prepare_detect_image` runs on a decode thread and keeps only what the response needs: the model-size input
tensor, the original size and format, and (only when an overlay was asked for) a copy downscaled to
``Limits.overlay_max_side``. The full image is dropped before the request joins the queue.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vlmad_runtime.drawing import MapScale, colorize, defect_mask, draw_contour, mask_contour, overlay_heatmap
from vlmad_runtime.serve.limits import ApiError, Limits, decode_image
from vlmad_runtime.serve.worker import DetectResult


@dataclass
class DecodedUpload:
    """One detect upload after decoding: what travels through the queue."""

    model_input: Any  # (1, 3, S, S) tensor (or what the detector's preprocess returns)
    width: int
    height: int
    format: str
    overlay_base: Image.Image | None  # at most overlay_max_side on its longer side; None without an overlay


def downscale(image: Image.Image, max_side: int, resample: int = Image.BILINEAR) -> Image.Image:
    """``image`` if its longer side is at most ``max_side``, else a copy scaled down to it (aspect kept)."""
    side = max(image.size)
    if side <= max_side:
        return image
    scale = max_side / side
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)


def prepare_detect_image(
    data: bytes,
    limits: Limits,
    preprocess: Callable[[Image.Image], Any] | None,
    want_overlay: bool,
    label: str = "image",
) -> DecodedUpload:
    """Decode ``data`` and reduce it to a :class:`DecodedUpload` (runs on a decode thread)."""
    image, fmt = decode_image(data, limits, label)
    if preprocess is None:  # the detector takes PIL images: the image itself is its input
        return DecodedUpload(image, image.width, image.height, fmt, image if want_overlay else None)
    model_input = preprocess(image)
    base = downscale(image, limits.overlay_max_side) if want_overlay else None
    out = DecodedUpload(model_input, image.width, image.height, fmt, base)
    if base is not image and model_input is not image:  # a detector without preprocess() takes the image itself
        image.close()  # frees the full-resolution pixels now, not when the response is sent
    return out


def header_pixels(data: bytes) -> int | None:
    """width * height from the image header alone (no pixel is decoded); None when unreadable (the decoder then
    gives the precise error)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return int(im.width) * int(im.height)
    except Exception:
        return None


def decode_references(items: list[tuple[bytes, str | None]], limits: Limits) -> Iterator[Image.Image]:
    """The reference images of one upload, decoded and downscaled one at a time (a generator for
    ``ReferenceStore.put``), within ``limits.max_reference_pixels`` in total.

    Each item's encoded bytes are dropped from ``items`` once decoded, and each full-resolution image is closed as
    soon as its stored copy (at most ``limits.reference_max_side``) exists, so an upload of K large images holds one
    decoded image at a time instead of K.
    """
    used = 0
    for i, (data, filename) in enumerate(items):
        label = f"images[{i}]" + (f" ({filename[:100]})" if filename else "")
        n = header_pixels(data)
        if n is not None and used + n > limits.max_reference_pixels:
            raise ApiError(
                413,
                "reference_set_too_large",
                f"{label} would bring the set to {used + n} decoded pixels; a reference set may hold "
                f"{limits.max_reference_pixels} in total",
                f"downscale the images (the model sees at most ~518 px; they are stored at "
                f"{limits.reference_max_side} px) or send fewer",
            )
        image, _ = decode_image(data, limits, label)
        items[i] = (b"", filename)
        del data
        used += image.width * image.height
        small = downscale(image, limits.reference_max_side, Image.BICUBIC)
        if small is not image:
            image.close()
        del image  # gone before the next image decodes
        yield small


def _png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_heatmap(
    result: DetectResult,
    image: Image.Image,
    kinds: tuple[str, ...],
    alpha: float,
    limits: Limits,
    stamp: str | None,
    scale: MapScale | None = None,
    pixel_threshold: float | None = None,
    want_mask: bool = False,
) -> dict[str, Any]:
    """Heatmap PNGs on a fixed ``scale`` (never min-max per image); mask and contour at the pixel threshold."""
    from vlmad_runtime.serve.config import UNCALIBRATED_SCALE

    scale = scale or UNCALIBRATED_SCALE
    amap = result.anomaly_map
    finite = amap[np.isfinite(amap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    amap = np.nan_to_num(amap, nan=lo, posinf=hi, neginf=lo)
    out: dict[str, Any] = {
        "min": lo,
        "max": hi,
        "size": [int(amap.shape[1]), int(amap.shape[0])],
        "overlay_png_b64": None,
        "overlay_size": None,
        "alpha": None,
        "color_png_b64": None,
        "raw": None,
        "scale": {"lo": scale.lo, "hi": scale.hi, "source": scale.source, "pixel_threshold": pixel_threshold},
        "mask_png_b64": None,
        "contour_png_b64": None,
        "defect_area": None,
    }
    mask = None if pixel_threshold is None else amap >= pixel_threshold
    if want_mask and mask is not None:
        rgba = np.zeros((*mask.shape, 4), np.uint8)
        rgba[mask_contour(mask)] = (255, 255, 255, 255)
        out.update(
            mask_png_b64=_png_b64(Image.fromarray(mask.astype(np.uint8) * 255, mode="L")),
            contour_png_b64=_png_b64(Image.fromarray(rgba, mode="RGBA")),
            defect_area=float(mask.mean()),
        )
    if "overlay" in kinds:
        base = image
        side = max(image.size)
        if side > limits.overlay_max_side:
            shrink = limits.overlay_max_side / side
            base = image.resize(
                (max(1, round(image.width * shrink)), max(1, round(image.height * shrink))), Image.BILINEAR
            )
        over = overlay_heatmap(base, amap, alpha=alpha, vmin=scale.lo, vmax=scale.hi, stamp=stamp)
        if mask is not None:
            over = draw_contour(over, defect_mask(amap, pixel_threshold, over.size))
        out.update(overlay_png_b64=_png_b64(over), overlay_size=list(over.size), alpha=alpha)
    if "color" in kinds:
        out["color_png_b64"] = _png_b64(Image.fromarray(colorize(amap, scale.lo, scale.hi)))
    if "raw" in kinds:
        arr = np.ascontiguousarray(amap, dtype="<f4")
        out["raw"] = {
            "shape": [int(arr.shape[0]), int(arr.shape[1])],
            "dtype": "float32",
            "byte_order": "little",
            "data_b64": base64.b64encode(arr.tobytes()).decode("ascii"),
        }
    return out
