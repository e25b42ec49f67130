"""The protocol fingerprint of a running detector (deploy files record and check it).

Torch-free, so it lives in :mod:`vlmad_runtime.fingerprint` (the service and the bundle runtime use it too);
this module keeps vlmad's import path.
"""

from __future__ import annotations

from vlmad_runtime.fingerprint import (
    DESCRIPTIVE_FIELDS,
    REFERENCE_FIELDS,
    detector_fingerprint,
    file_digest,
    image_digest,
    reference_fingerprint,
    references_fingerprint,
)

__all__ = [
    "DESCRIPTIVE_FIELDS",
    "REFERENCE_FIELDS",
    "detector_fingerprint",
    "file_digest",
    "image_digest",
    "reference_fingerprint",
    "references_fingerprint",
]
