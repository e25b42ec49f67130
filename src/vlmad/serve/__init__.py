"""``vlmad serve``: the torch side of the HTTP service (install the ``serve`` extra).

The service itself (app, routes, limits, batching, reference sets, page) is torch-free and lives in
:mod:`vlmad_runtime.serve`; vlmad adds only :class:`~vlmad.serve.detector_model.DetectorModel`, the adapter that
serves a torch detector. ``vlmad serve --bundle`` serves an exported bundle with the runtime's own adapter.

>>> from vlmad.serve import ServeConfig, create_app  # doctest: +SKIP
>>> app = create_app(ServeConfig(class_name="bottle", data_dir="serve-data"), detector=det)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ServeConfig", "create_app", "load_deploy"]


def create_app(config: Any, detector: Any = None, loader: Callable[[], Any] | None = None) -> Any:
    """The service's ASGI app for a ready ``detector``, or a ``loader`` returning one (run on the model thread
    after start-up)."""
    from vlmad.serve.detector_model import DetectorModel
    from vlmad_runtime.serve.app import create_app as create_service_app

    if (detector is None) == (loader is None):
        raise ValueError("pass exactly one of detector= or loader=")
    if detector is not None:
        return create_service_app(config, model=DetectorModel(detector))
    return create_service_app(config, loader=lambda: DetectorModel(loader()))


def __getattr__(name: str) -> Any:  # fastapi is imported only when the service is used
    if name in ("ServeConfig", "load_deploy"):
        from vlmad_runtime.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'vlmad.serve' has no attribute {name!r}")
