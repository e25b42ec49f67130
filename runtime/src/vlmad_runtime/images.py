"""Robust image and mask loading.

Real inspection data is messy: 16-bit grayscale PNGs from machine-vision cameras, CMYK JPEGs from print
workflows, phone photos rotated by an EXIF tag, palette PNGs, half-copied files. Every image entering a model
goes through :func:`load_image` so that all of these become the same thing (an 8-bit RGB image, the way a
person sees it) and so that a broken file stops with an :class:`ImageLoadError` naming it, instead of an
obscure PIL traceback deep in a batch or, worse, a silently half-grey image.

Conventions (shared by :func:`load_image`, :func:`load_mask` and :func:`image_size`):

* EXIF orientation is applied, so sizes and pixels are those of the image as displayed.
* Transparency is composited onto **black** (``rgb * alpha / 255``): transparent regions get one defined
  colour whatever hidden values the file stores under alpha 0; fully opaque images are unchanged.
* 16-bit data (``I;16*`` modes, and ``I`` when its values lie in 0..65535) is scaled by 255/65535 with
  rounding, keeping the full dynamic range instead of clipping at 255. ``I`` data outside that range and
  float (``F``) data outside 0..1 are min-max scaled per image; ``F`` data in 0..1 is multiplied by 255.
* Truncated files are errors, whatever :data:`PIL.ImageFile.LOAD_TRUNCATED_IMAGES` says: a truncated image
  decodes to a grey bottom part that looks exactly like an anomaly. JPEGs are checked for decoder under-run as
  well (see :func:`_check_jpeg_complete`): a cut JPEG that still ends with an end-of-image marker, or whose
  header claims more pixels than its scan data holds, is refused although PIL decodes it without complaint.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vlmad_runtime.errors import DatasetLayoutError, ImageLoadError

if TYPE_CHECKING:  # a dataset sample; the runtime never needs the class itself
    from vlmad.data.sample import Sample

#: Default limit on decoded pixels (width * height); larger files are refused as possible decompression bombs.
DEFAULT_MAX_PIXELS = 100_000_000

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_TRUNCATION_LOCK = threading.Lock()

_CORRUPT_HINT = "re-export or re-copy the file (it may be truncated by an interrupted download/copy), or remove it"

#: PIL formats whose first frame is a plain JPEG stream starting at byte 0 (MPO: phone/camera multi-picture).
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
#: libjpeg(-turbo) warnings that mean "the scan data ran out": the rest of the image would be filled with grey.
_UNDERRUN_WARNINGS = ("premature end of jpeg file", "premature end of data segment")


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Decode with truncation detection on, even if some other code set ``LOAD_TRUNCATED_IMAGES = True``.

    The global is only touched when it is True, and it is restored before returning, so vlmad never changes
    what other code in the process sees.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True


@contextmanager
def _open(path: str | Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """Open ``path`` (header only) and translate every failure into an :class:`ImageLoadError`."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(str(path), "file does not exist", "check the path (and the dataset root)")
    if path.is_dir():
        raise ImageLoadError(str(path), "is a directory, not an image file", "pass the path of an image file")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check replaces PIL's warning; PIL's hard error is still translated below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        raise ImageLoadError(
            str(path),
            "not a recognisable image (unknown format or corrupt header)",
            "check that the file really is a PNG/JPEG/BMP/TIFF image (not text or HTML saved with an image "
            "extension); re-export it if needed",
        ) from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(
            str(path),
            f"refused as a possible decompression bomb ({err})",
            "downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted",
        ) from None
    except PermissionError:
        raise ImageLoadError(str(path), "permission denied", "make the file readable") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageLoadError(str(path), f"cannot open: {err}", _CORRUPT_HINT) from None
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageLoadError(
                str(path),
                f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (possible decompression bomb)",
                "downscale the image, or pass a larger max_pixels if the file is trusted",
            )
        yield im


def _jpeg_stream(im: Image.Image) -> bytes | None:
    """The encoded bytes behind an opened JPEG/MPO image (its file or upload buffer), or None if unavailable."""
    fp = getattr(im, "fp", None)
    if fp is None:
        return None
    try:
        pos = fp.tell()
        fp.seek(0)
        data = fp.read()
        fp.seek(pos)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, bytes) else None


def _check_jpeg_complete(im: Image.Image, path: str | Path) -> None:
    """Refuse a JPEG whose scan data ends before its last pixel (decoder under-run).

    PIL's JPEG decoder silences libjpeg's warnings, so a file cut mid-scan and closed with ``FF D9`` (or a
    header claiming 6000x6000 over 8x8 of data) decodes "successfully" with grey where the data ran out.
    libjpeg-turbo (through simplejpeg) reports the under-run when warnings are errors; the check decodes at 1/8
    scale, which still walks all entropy-coded data (the part that under-runs) but skips most of the IDCT and
    colour work. Other libjpeg warnings (e.g. extraneous bytes before a marker, common in camera files and
    harmless) and streams libjpeg-turbo cannot read are left to PIL's own decode. A progressive JPEG cut
    exactly at a scan boundary is a valid coarser image, not an under-run, and is accepted.
    """
    data = _jpeg_stream(im)
    if data is None:
        return
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as err:
        message = str(err)
        if any(w in message.lower() for w in _UNDERRUN_WARNINGS):
            raise ImageLoadError(
                str(path), f"file is truncated: the JPEG scan data ends early ({message})", _CORRUPT_HINT
            ) from None
    except Exception:  # anything else is judged by PIL's decode below
        pass


def _decode(im: Image.Image, path: str | Path) -> Image.Image:
    """Force a full decode (``Image.open`` is lazy) and return the image in display orientation, detached
    from the file."""
    if (im.format or "").upper() in _JPEG_FORMATS:
        _check_jpeg_complete(im, path)
    try:
        with _strict_truncation():
            im.load()
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, zlib/struct errors...
        reason = str(err) or type(err).__name__
        raise ImageLoadError(str(path), f"file is truncated or corrupt ({reason})", _CORRUPT_HINT) from None
    try:
        return ImageOps.exif_transpose(im)  # always a new image, so closing the file is safe afterwards
    except Exception:  # a broken EXIF block must not make an otherwise fine image unreadable
        return im.copy()


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map high-bit-depth single-channel data to 0..255 without clipping (see module docstring)."""
    if mode.startswith("I;16") or (mode == "I" and arr.min() >= 0 and arr.max() <= 65535):
        return np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    a = arr.astype(np.float64)
    if mode == "F" and np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0:
        return np.round(a * 255.0).astype(np.uint8)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    a = np.asarray(rgba.convert("RGBA"), dtype=np.uint16)
    rgb = (a[..., :3] * a[..., 3:4] + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _to_rgb(im: Image.Image, path: str | Path) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        gray = _to_uint8(np.asarray(im), mode)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    has_alpha = mode in {"RGBA", "RGBa", "LA", "La", "PA"} or (mode == "P" and "transparency" in im.info)
    try:
        return _composite_on_black(im) if has_alpha else im.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageLoadError(
            str(path),
            f"unsupported pixel mode {mode!r} ({err})",
            "convert the file to 8-bit RGB (PNG or JPEG)",
        ) from None


def load_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read any supported image file as an 8-bit RGB :class:`PIL.Image.Image` in display orientation.

    ``max_pixels`` (None: no vlmad limit) guards against decompression bombs; PIL's own hard limit
    (``2 * PIL.Image.MAX_IMAGE_PIXELS``) still applies. Multi-frame files (GIF, TIFF) yield their first frame.
    Raises :class:`ImageLoadError` for missing, non-image, truncated, corrupt or oversized files.
    """
    with _open(path, max_pixels) as im:
        return decode_to_rgb(im, path)


def decode_to_rgb(im: Image.Image, label: str | Path) -> Image.Image:
    """Fully decode an opened image (files, uploads) and convert it to 8-bit RGB by the same rules as
    :func:`load_image`; ``label`` names the source in errors. Check the size first: decoding allocates it."""
    return _to_rgb(_decode(im, label), label)


def load_mask(
    path: str | Path, size: tuple[int, int] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read a ground-truth mask as a boolean ``(H, W)`` array, defect = any non-zero value.

    ``!= 0`` (not ``> 127``) because VisA stores small label values (1, 2, ...) while MVTec stores 255.
    Colour masks count a pixel as defect when any colour channel is non-zero (palette masks are judged by
    their colour, so index 0 must be black; alpha is ignored). ``size=(w, h)`` resizes with nearest
    neighbour, which keeps the mask binary and is the same as binarising first.
    """
    with _open(path, max_pixels) as im:
        im = _decode(im, path)
    mode = im.mode
    if mode == "P" or mode == "PA":
        im, mode = im.convert("RGB"), "RGB"
    arr = np.asarray(im)
    if arr.ndim == 3:
        channels = arr.shape[2] - 1 if mode in {"RGBA", "RGBa", "LA", "La"} else arr.shape[2]
        binary = (arr[..., :channels] != 0).any(axis=2)
    else:
        binary = arr != 0
    if size is not None:
        w, h = int(size[0]), int(size[1])
        if (w, h) != (binary.shape[1], binary.shape[0]):
            small = Image.fromarray(binary.astype(np.uint8) * 255, "L").resize((w, h), Image.Resampling.NEAREST)
            binary = np.asarray(small) != 0
    return np.ascontiguousarray(binary, dtype=bool)


def image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` from the file header without decoding pixels, EXIF rotation included so that it
    agrees with :func:`load_image`."""
    with _open(path, max_pixels) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        except Exception:  # broken EXIF: load_image ignores it too
            orientation = 1
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def check_sample(sample: Sample) -> None:
    """Check lazily what the readers do not check while listing: that a mask has its image's size.

    Readers only look at file names (listing a dataset must stay fast); call this when a mask is about to be
    used, e.g. before computing pixel metrics. Raises :class:`DatasetLayoutError` naming both files, or
    :class:`ImageLoadError` when either file cannot be read.
    """
    if sample.mask_path is None:
        return
    isize, msize = image_size(sample.image_path), image_size(sample.mask_path)
    if isize != msize:
        raise DatasetLayoutError(
            f"mask {sample.mask_path} is {msize[0]}x{msize[1]} but its image {sample.image_path} is "
            f"{isize[0]}x{isize[1]}",
            "masks must have exactly their image's size; re-export the mask or fix the pairing",
        )
