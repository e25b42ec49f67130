"""The protocol fingerprint of a running detector, as deploy files record and check it.

Generic on purpose: every field the detector declares in its ``DetectorInfo`` (vlmad.methods.base) (method,
architecture, weights id, input size, prompt set name and content hash, precision, window scales / stages, heads
id, any option that changes scores) enters the fingerprint, plus the class name, an order-free content hash of
the reference images and the vlmad version. A method that adds a score-changing option only has to declare it in
``info()``; nothing here knows method names. The format and the matching live in :mod:`vlmad_runtime.deploy`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from vlmad_runtime.deploy import normalize

#: DetectorInfo fields that describe but do not change scores (derived from fields that are compared)
DESCRIPTIVE_FIELDS = ("random_weights", "heads_training_data", "heads_epoch")


#: fields that depend on the reference images in use (a service checks them per request, not at start)
REFERENCE_FIELDS = ("shots", "reference_fingerprint", "method")


def image_digest(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and size: the same picture as a PNG file, a JPEG-free re-encoding or an
    upload to the service has the same digest (file names and containers do not matter)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()


def file_digest(path: Path) -> str:
    """:func:`image_digest` of an image file, decoded as the detector decodes it."""
    from vlmad_runtime.images import load_image

    return image_digest(load_image(path))


def reference_fingerprint(digests: Iterable[str]) -> str | None:
    """Order-free hash of the reference images' content digests; ``None`` without references (zero-shot)."""
    items = sorted(digests)
    if not items:
        return None
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def references_fingerprint(paths: Iterable[Path]) -> str | None:
    """:func:`reference_fingerprint` of image files."""
    return reference_fingerprint(file_digest(p) for p in paths)


def detector_fingerprint(info: Mapping[str, Any], class_name: str, reference_fp: str | None) -> dict[str, Any]:
    """Fingerprint from a detector's ``info().as_dict()``, the class it scores and its reference fingerprint."""
    from vlmad_runtime.version import __version__

    out = {k: v for k, v in info.items() if k not in DESCRIPTIVE_FIELDS}
    out.update(class_name=str(class_name), reference_fingerprint=reference_fp, vlmad_version=__version__)
    return normalize(out)
