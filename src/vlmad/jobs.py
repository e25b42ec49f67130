"""Batch detection job (scores.csv / maps / masks / overlays): one implementation, in the torch-free runtime
(:mod:`vlmad_runtime.jobs`), so that `vlmad detect` and `vlmad-runtime detect` write the same files
(see docs/export.md)."""

from vlmad_runtime.jobs import (
    CSV_FIELDS,
    NON_FINITE,
    DetectionOptions,
    DetectionRow,
    Scorer,
    expand_images,
    run_detection,
    unique_stems,
)

__all__ = [
    "CSV_FIELDS",
    "NON_FINITE",
    "DetectionOptions",
    "DetectionRow",
    "Scorer",
    "expand_images",
    "run_detection",
    "unique_stems",
]
