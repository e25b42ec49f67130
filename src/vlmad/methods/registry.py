"""Method registry and ``create_detector``: one entry point for every method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlmad.methods.base import Detector
from vlmad_runtime.errors import UnknownNameError

_FACTORIES: dict[str, Callable[..., Detector]] = {}
DEFAULT_MODELS: dict[str, dict[str, Any]] = {}


def register_method(name: str, default_model: str, default_pretrained: str, **defaults: Any):
    """Decorator for a factory ``(backbone_kwargs..., **method_kwargs) -> Detector``."""

    def wrap(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        _FACTORIES[name] = factory
        DEFAULT_MODELS[name] = {"model": default_model, "pretrained": default_pretrained, **defaults}
        return factory

    return wrap


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(_FACTORIES)


def _load_builtin() -> None:
    from vlmad.methods import builtin  # noqa: F401  (registers the shipped methods)


def create_detector(method: str = "winclip", **kwargs: Any) -> Detector:
    """Build a detector by name, e.g. ``create_detector("winclip", checkpoint="w.safetensors")``.

    Backbone keywords: ``model``, ``pretrained``, ``checkpoint``, ``random_weights``, ``device``, ``precision``;
    everything else goes to the method.
    """
    _load_builtin()
    if method not in _FACTORIES:
        raise UnknownNameError(f"unknown method {method!r}", f"available: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[method](**kwargs)
