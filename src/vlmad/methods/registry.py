"""Method registry: MethodSpecs by name, discovered from vlmad itself and from plugins, and ``create_detector``.

Built-in specs come from :mod:`vlmad.methods.builtin`; a plugin package declares an entry point in the group
``vlmad.methods`` whose object is a :class:`~vlmad.methods.spec.MethodSpec` (or a list of them), or calls
:func:`register_method` itself (docs/adding-a-method.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlmad.methods.spec import MethodSpec
from vlmad_runtime.errors import UnknownNameError, VlmadError

ENTRY_POINT_GROUP = "vlmad.methods"

_SPECS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register_method(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Register ``spec`` (and its aliases). A name already taken by another spec is an error unless ``replace``."""
    if not isinstance(spec, MethodSpec):
        raise VlmadError(
            f"register_method expects a MethodSpec, got {type(spec).__name__}",
            "build one with vlmad.methods.spec.MethodSpec(name=..., factory=...)",
        )
    for name in (spec.name, *spec.aliases):
        owner = _ALIASES.get(name)
        if owner is not None and _SPECS.get(owner) is not spec and not replace:
            raise VlmadError(
                f"method name {name!r} is already registered (by {owner!r})", "choose another name or pass replace=True"
            )
    _SPECS[spec.name] = spec
    for name in (spec.name, *spec.aliases):
        _ALIASES[name] = spec.name
    return spec


def unregister_method(name: str) -> None:
    """Remove a registered method (tests and plugin reloads)."""
    spec = _SPECS.pop(name, None)
    if spec is not None:
        for alias in (spec.name, *spec.aliases):
            _ALIASES.pop(alias, None)


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from vlmad.methods.builtin import BUILTIN_SPECS

    for spec in BUILTIN_SPECS:
        if spec.name not in _SPECS:
            register_method(spec)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _register_entry_point(ep)


def _register_entry_point(ep: Any) -> None:
    try:
        obj = ep.load()
    except Exception as err:  # a broken plugin must not take the built-in methods down
        raise VlmadError(
            f"method plugin {ep.name!r} ({ep.value}) failed to load: {err}", "fix or uninstall the plugin package"
        ) from err
    obj = obj() if callable(obj) and not isinstance(obj, MethodSpec) else obj
    specs = [obj] if isinstance(obj, MethodSpec) else list(obj) if isinstance(obj, Iterable) else [obj]
    for spec in specs:
        register_method(spec)


def get_spec(method: str) -> MethodSpec:
    """The spec of a method name or alias; an UnknownNameError lists the available methods."""
    _ensure_loaded()
    name = _ALIASES.get(str(method))
    if name is None:
        raise UnknownNameError(f"unknown method {method!r}", f"available: {', '.join(available_methods())}")
    return _SPECS[name]


def method_specs() -> list[MethodSpec]:
    """Every registered spec, built-in ones first, in registration order."""
    _ensure_loaded()
    return list(_SPECS.values())


def available_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_SPECS)


def default_method() -> str:
    """The method commands use when none is named (the first built-in one)."""
    from vlmad.methods.builtin import BUILTIN_SPECS

    return BUILTIN_SPECS[0].name


def create_detector(method: str | None = None, **kwargs: Any) -> Any:
    """Build a detector by name, e.g. ``create_detector(default_method(), checkpoint="w.safetensors")``.

    Backbone keywords (``model``, ``pretrained``, ``checkpoint``, ``random_weights``, ``device``, ``precision``,
    ...) configure the CLIP backbone; ``backbone=`` passes one already loaded; everything else goes to the method
    and is checked against its spec **before** any weights load.
    """
    spec = get_spec(method or default_method())
    backbone = kwargs.pop("backbone", None)
    return spec.build(backbone, **kwargs)


def split_backbone_kwargs(method: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate backbone options from method options; fill the method's default model and weights."""
    return get_spec(method).split_backbone_kwargs(kwargs)
