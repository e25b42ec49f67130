"""Tables, plots, reports and heatmap overlays.

``build_report(run_dir)`` writes the self-contained ``report.html`` (+ ``report.md``) of a study or benchmark run
(:mod:`vlmad.report.build`); figures, recommendations, the heatmap gallery and the HTML/markdown renderer live in
:mod:`~vlmad.report.figures`, :mod:`~vlmad.report.recommend`, :mod:`~vlmad.report.gallery` and
:mod:`~vlmad.report.html`. Those are imported on first use (the benchmark tables import the overlay module).
"""

from typing import Any

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP, colorize, overlay_heatmap, side_by_side, stamp_image

_LAZY = {"build_report": "vlmad.report.build", "recommend": "vlmad.report.recommend"}

__all__ = [
    "RANDOM_WEIGHTS_STAMP",
    "build_report",
    "colorize",
    "overlay_heatmap",
    "recommend",
    "side_by_side",
    "stamp_image",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmad.report' has no attribute {name!r}")
