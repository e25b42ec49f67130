"""Anomaly detection methods behind one :class:`~vlmad.methods.base.Detector` contract.

Names are imported on first use, so that reading method specs (``vlmad.methods.registry``, ``.spec``,
``.builtin``: what the CLI needs to build its commands) never imports torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Detector": "vlmad.methods.base",
    "DetectorInfo": "vlmad.methods.base",
    "Prediction": "vlmad.methods.base",
    "available_methods": "vlmad.methods.registry",
    "create_detector": "vlmad.methods.registry",
    "get_spec": "vlmad.methods.registry",
    "register_method": "vlmad.methods.registry",
    "MethodSpec": "vlmad.methods.spec",
    "OptionSpec": "vlmad.methods.spec",
    "ArtefactSpec": "vlmad.methods.spec",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmad.methods' has no attribute {name!r}")


__all__ = sorted(_LAZY)
