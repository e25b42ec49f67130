"""``vlmad serve``: the HTTP service and web page (FastAPI + uvicorn; install the ``serve`` extra).

>>> from vlmad.serve import ServeConfig, create_app  # doctest: +SKIP
>>> app = create_app(ServeConfig(class_name="bottle", data_dir="serve-data"), detector=det)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app", "load_deploy"]


def __getattr__(name: str) -> Any:  # fastapi is imported only when the service is used
    if name in __all__:
        from vlmad.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'vlmad.serve' has no attribute {name!r}")
