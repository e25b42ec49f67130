"""The HTTP service of ``vlmad serve`` and ``vlmad-runtime serve`` (FastAPI + uvicorn; the ``serve`` extra).

Torch-free: it runs any :class:`~vlmad_runtime.serve.model.ServedModel` (an exported bundle here, a torch
detector through vlmad's adapter). See docs/export.md and docs/architecture.md.

>>> from vlmad_runtime.serve import ServeConfig, create_app  # doctest: +SKIP
>>> config = ServeConfig(class_name="bottle", data_dir="serve-data")  # doctest: +SKIP
>>> app = create_app(config, model=BundleModel(bundle))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app", "load_deploy"]


def __getattr__(name: str) -> Any:  # fastapi is imported only when the service is used
    if name in __all__:
        from vlmad_runtime.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'vlmad_runtime.serve' has no attribute {name!r}")
