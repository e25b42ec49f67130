"""vlmad: zero- and few-shot industrial anomaly detection with vision-language models.

>>> import vlmad
>>> det = vlmad.create_detector("winclip", checkpoint="vit_b_16_plus_240.safetensors")  # doctest: +SKIP

Heavy modules (torch, open_clip) load on first use of what needs them, so ``vlmad.metrics`` or ``vlmad.data``
stay light to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmad_runtime.errors import VlmadError
from vlmad_runtime.version import __version__

__all__ = ["Detector", "Prediction", "VlmadError", "__version__", "available_methods", "create_detector"]

_LAZY = {"Detector", "Prediction", "available_methods", "create_detector"}

if TYPE_CHECKING:
    from vlmad.methods import Detector, Prediction, available_methods, create_detector  # noqa: F401


def __dir__() -> list[str]:
    # the lazy names are part of the API: make them visible to dir(), completion and help()
    return sorted(set(globals()) | _LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import vlmad.methods as methods

        return getattr(methods, name)
    raise AttributeError(f"module 'vlmad' has no attribute {name!r}")
