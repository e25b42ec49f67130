"""MethodSpec: everything the rest of vlmad may know about a method, in one object per method.

The CLI, the benchmark harness, the study planner, the report and the service never name a method; they ask its
spec (see docs/architecture.md and docs/adding-a-method.md): default backbone and weights, the artefact it loads
(APRIL-GAN's trained heads) and how that artefact fixes backbone options, its options with types and defaults
(checked before any weights load), the study axes that apply, the settings published numbers were produced with,
its training entry point, whether it is transductive and whether it has a few-shot mode.

This module imports no torch: specs are plain data plus small callables that import their method lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from vlmad_runtime.errors import VlmadError

#: keywords of ``create_detector`` that configure the CLIP backbone (every other keyword goes to the method)
BACKBONE_KEYS = (
    "model",
    "pretrained",
    "checkpoint",
    "random_weights",
    "seed",
    "quick_gelu",
    "image_size",
    "device",
    "precision",
    "chunk_tokens",
    "fast",
)
#: backbone options that name the weights: exactly one of them may be given
WEIGHT_KEYS = ("pretrained", "checkpoint", "random_weights")
#: options every front end may pass to any method (speed only); a method that does not declare one never sees it
RUNTIME_OPTIONS = ("batch_size", "use_cache")
#: study axes every backbone-based method supports (method-specific axes are added by the spec)
GENERIC_AXES = ("prompts", "resolution", "backbone")

_NO_DEFAULT = object()


def load_object(ref: str | Callable[..., Any]) -> Any:
    """Resolve ``"package.module:attr"`` (lazy references keep specs free of heavy imports)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise VlmadError(f"cannot load {ref!r}: {err}", "check the method's spec (module:attribute)") from err
    return obj


@dataclass(frozen=True)
class OptionSpec:
    """One method option: its name, accepted type(s), default and what it does."""

    name: str
    type: type | tuple[type, ...] = object
    default: Any = None
    help: str = ""

    def check(self, method: str, value: Any) -> None:
        """Raise a VlmadError when ``value`` cannot be this option (``None`` always means the default)."""
        if value is None or self.type is object:
            return
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            return
        if bool not in types and isinstance(value, bool) and int in types:
            raise VlmadError(f"{method} option {self.name}={value!r}: expected {_type_names(types)}")
        if not isinstance(value, types):
            raise VlmadError(
                f"{method} option {self.name}={value!r} ({type(value).__name__}): expected {_type_names(types)}",
                self.help or None,
            )


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


@dataclass(frozen=True)
class ArtefactSpec:
    """A file a method loads besides the backbone (APRIL-GAN: trained projection heads).

    ``option`` is the detector keyword that receives the path; ``backbone_kwargs(path, kwargs)`` fills the backbone
    options the artefact was made with (explicit options win); ``meta(path)`` reads its metadata without loading
    weights; ``required`` artefacts may be skipped only with ``skip_option=True`` (a smoke test).
    """

    kind: str
    option: str
    help: str
    backbone_kwargs: str | Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    meta: str | Callable[[Any], Mapping[str, Any]] | None = None
    required: bool = False
    skip_option: str | None = None
    fixes_backbone: bool = True

    def read_meta(self, path: Any) -> dict[str, Any]:
        return dict(load_object(self.meta)(path)) if self.meta else {}

    def label(self, path: Any) -> str:
        """Short tag of an artefact file for labels: the data it was made from, else the file stem."""
        from pathlib import Path

        try:
            data = (self.read_meta(path).get("training") or {}).get("data") or {}
        except (VlmadError, OSError, ValueError):  # an unreadable sidecar only costs the nicer label
            data = {}
        kind = data.get("kind")
        return f"{kind}-{self.kind}" if kind else Path(str(path)).stem

    def prompt_set(self, path: Any) -> Any:
        """The prompt set stored with the artefact (a name or a definition), None when there is none."""
        meta = self.read_meta(path)
        return meta.get("prompt_set_definition") or meta.get("prompt_set")


@dataclass(frozen=True)
class MethodSpec:
    """The single source of truth about one method (registered with :func:`vlmad.methods.registry.register_method`).

    ``factory(backbone, **method_kwargs)`` builds the detector from a loaded backbone (``None`` when
    ``uses_backbone`` is False); ``options`` lists every method keyword it accepts.
    """

    name: str
    factory: str | Callable[..., Any]
    summary: str = ""
    aliases: tuple[str, ...] = ()
    uses_backbone: bool = True
    default_model: str | None = None
    default_pretrained: str | None = None
    backbone_defaults: Mapping[str, Any] = field(default_factory=dict)
    default_prompt_set: str | None = None
    options: tuple[OptionSpec, ...] = ()
    artefact: ArtefactSpec | None = None
    study_axes: tuple[str, ...] = GENERIC_AXES
    published_settings: Mapping[str, Any] = field(default_factory=dict)
    published_neutral: frozenset[str] = frozenset()
    train: str | None = None
    train_cli: str | None = None
    transductive: bool = False
    #: False: the method has no few-shot mode (``fit`` raises); grids run its zero-shot rows only
    few_shot: bool = True

    # -- options -----------------------------------------------------------------------------------------------
    def option_names(self) -> list[str]:
        names = [o.name for o in self.options]
        if self.artefact is not None:
            names += [self.artefact.option] + ([self.artefact.skip_option] if self.artefact.skip_option else [])
        return names

    def valid_keys(self) -> list[str]:
        return self.option_names() + list(RUNTIME_OPTIONS) + (list(BACKBONE_KEYS) if self.uses_backbone else ["device"])

    def check_options(self, kwargs: Mapping[str, Any]) -> None:
        """Reject unknown or ill-typed options before anything loads (the error lists the valid ones)."""
        valid = self.valid_keys()
        for key in kwargs:
            if key not in valid:
                import difflib

                close = difflib.get_close_matches(key, valid, n=1)
                raise VlmadError(
                    f"{self.name} has no option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                    f"valid options: {', '.join(self.option_names())}; backbone options: "
                    f"{', '.join(BACKBONE_KEYS) if self.uses_backbone else 'device'}",
                )
        for opt in self.options:
            if opt.name in kwargs:
                opt.check(self.name, kwargs[opt.name])

    def option_default(self, name: str, default: Any = _NO_DEFAULT) -> Any:
        for opt in self.options:
            if opt.name == name:
                return opt.default
        if default is _NO_DEFAULT:
            raise VlmadError(f"{self.name} has no option {name!r}")
        return default

    # -- backbone ----------------------------------------------------------------------------------------------
    def with_artefact_backbone(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` with the backbone options an artefact file was made with filled in (explicit ones win)."""
        out = dict(kwargs)
        art = self.artefact
        path = out.get(art.option) if art is not None else None
        if art is None or art.backbone_kwargs is None or path is None or not isinstance(path, (str, PathLike)):
            return out
        return dict(load_object(art.backbone_kwargs)(path, out))

    def split_backbone_kwargs(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(backbone options with the method's default model/weights filled in, method options)."""
        rest = dict(kwargs)
        bb = {k: rest.pop(k) for k in BACKBONE_KEYS if k in rest}
        if self.default_model is None:
            return bb, rest
        bb.setdefault("model", self.default_model)
        default_model = bb["model"] == self.default_model
        if default_model and not any(bb.get(k) not in (None, False) for k in WEIGHT_KEYS):
            bb["pretrained"] = self.default_pretrained
        for key, value in self.backbone_defaults.items():
            if default_model and key not in bb:
                bb[key] = value
        return bb, rest

    def resolved_backbone(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The backbone options a detector built from ``kwargs`` would use (artefact and defaults applied)."""
        return self.split_backbone_kwargs(self.with_artefact_backbone(kwargs))[0]

    def default_prompt(self, kwargs: Mapping[str, Any]) -> Any:
        """The prompt set a detector built from ``kwargs`` uses: the option, the artefact's, else the default."""
        if kwargs.get("prompt_set") is not None:
            return kwargs["prompt_set"]
        art = self.artefact
        if art is not None and kwargs.get(art.option) is not None:
            stored = art.prompt_set(kwargs[art.option])
            if stored:
                return stored
        return self.default_prompt_set

    def needs_artefact(self, kwargs: Mapping[str, Any]) -> bool:
        """True when a required artefact is missing and the smoke-test switch is off."""
        art = self.artefact
        if art is None or not art.required or kwargs.get(art.option):
            return False
        return not (art.skip_option and kwargs.get(art.skip_option))

    def build(self, backbone: Any = None, **kwargs: Any) -> Any:
        """Validate ``kwargs``, load the backbone unless one is given, and create the detector."""
        self.check_options(kwargs)
        declared = self.option_names()
        kwargs = {k: v for k, v in kwargs.items() if k not in RUNTIME_OPTIONS or k in declared}
        factory = load_object(self.factory)
        if not self.uses_backbone:
            return factory(None, **{k: v for k, v in kwargs.items() if k != "device"})
        bb_kwargs, method_kwargs = self.split_backbone_kwargs(self.with_artefact_backbone(kwargs))
        if backbone is None:
            backbone = build_backbone(bb_kwargs)
        return factory(backbone, **method_kwargs)


def build_backbone(bb_kwargs: Mapping[str, Any]) -> Any:
    """Load the CLIP backbone described by backbone options (``model`` plus ``ClipBackbone.load`` keywords)."""
    from vlmad.backbones.clip import ClipBackbone

    bb = dict(bb_kwargs)
    arch = bb.pop("model")
    return ClipBackbone.load(arch, **bb)
