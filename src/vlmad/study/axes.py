"""Ablation axes: each turns a list of values into detector variants of a method configuration.

A *variant* is a patch of ``create_detector`` keywords on top of the study's method options, with a short name.
The axis's default value leaves the options untouched, so the ablation's baseline is the very row of the main grid
(same row key, computed once) and every other value is reported as a delta against it.

Axes (values as written in a study spec):

* ``prompts`` (all methods): ``full`` (the method's compositional ensemble, the default), ``states-only``,
  ``templates-only``, ``single`` (see :func:`vlmad.prompts.ablate`), a named set (``winclip-paper``), a YAML/JSON
  prompt file, or an inline ``{name, normal_states, anomalous_states, templates}`` mapping.
* ``window_scales`` (WinCLIP): ``"2"``, ``"3"``, ``"2,3"``, ``"2,3+image"`` (the default: both window scales plus
  the full-image score in the harmonic mean).
* ``stages`` (APRIL-GAN): ``each`` (every single stage of the detector), ``all`` (the default), or a list of block
  indices. Runs the *same* heads restricted to those stages (``stage_subset``), so trained heads need no retraining.
* ``resolution`` (all): ``default``, a side in pixels (``336``) or a factor of the default (``1.5x``), rounded to a
  multiple of the patch size (positional embeddings are interpolated by open_clip).
* ``backbone`` (all): ``default`` or ``{model, pretrained | checkpoint, name}``; without a weights option a
  random-weights study stays random.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad_runtime.errors import VlmadError

#: a study-only detector option: run APRIL-GAN with a subset of its stages (handled by the study's factory)
STAGE_SUBSET_KEY = "stage_subset"
PROMPT_MODES = ("full", "states-only", "templates-only", "single")


@dataclass
class Variant:
    """One value of an axis for one method configuration."""

    axis: str
    name: str
    is_default: bool
    patch: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    detail: str = ""

    def apply(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in kwargs.items() if k not in self.drop}
        out.update(self.patch)
        return out


@dataclass
class Axis:
    name: str
    title: str
    description: str
    default_values: tuple[Any, ...]
    methods: None  # kept for compatibility: which methods an axis applies to is the spec's ``study_axes``
    expand: Callable[[list[Any], str, dict[str, Any], str | None], list[Variant]]
    check: Callable[[list[Any], str | None], None]
    note: str = ""  # what a reader of the deltas should know

    def applies_to(self, method: str) -> bool:
        from vlmad.methods.registry import get_spec

        return self.name in get_spec(method).study_axes

    def validate(self, values: list[Any], base_dir: str | None = None) -> None:
        self.check(values, base_dir)

    def variants(
        self, values: list[Any], method: str, kwargs: Mapping[str, Any], base_dir: str | None = None
    ) -> list[Variant]:
        """Variants of one method configuration (the default value first, duplicates merged)."""
        out: list[Variant] = []
        seen: set[str] = set()
        found = self.expand(list(values), method, dict(kwargs), base_dir)
        if not any(v.is_default for v in found):  # the baseline every delta is taken against
            found.insert(0, Variant(self.name, "default", True, detail="the study's own configuration"))
        for v in sorted(found, key=lambda v: not v.is_default):
            if v.name not in seen:
                seen.add(v.name)
                out.append(v)
        return out


# ---------------------------------------------------------------------------------------------------------------
# model facts without loading weights


def vision_config(arch: str) -> dict[str, Any]:
    """open_clip's vision config of an architecture (tiny vlmad configs included); {} when unknown."""
    import open_clip

    from vlmad.backbones.loading import register_tiny_configs

    register_tiny_configs()
    cfg = open_clip.get_model_config(arch) or {}
    return dict(cfg.get("vision_cfg") or {})


def _backbone_of(method: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Backbone options a detector of ``method`` built from ``kwargs`` would use (its spec decides)."""
    from vlmad.methods.registry import get_spec

    return get_spec(method).resolved_backbone(kwargs)


def _model_of(method: str, kwargs: Mapping[str, Any]) -> str:
    model = _backbone_of(method, kwargs).get("model")
    if not model:
        raise VlmadError(f"{method} has no CLIP backbone", "this ablation axis applies to backbone-based methods")
    return str(model)


def default_image_size(method: str, kwargs: Mapping[str, Any]) -> int:
    bb = _backbone_of(method, kwargs)
    if bb.get("image_size"):
        return int(bb["image_size"])
    model = _model_of(method, kwargs)
    size = vision_config(model).get("image_size")
    if size is None:
        raise VlmadError(
            f"unknown architecture {model!r}: cannot tell its input size",
            "give resolution values in pixels or use a known open_clip architecture",
        )
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def default_stages_of(method: str, kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    from vlmad.methods.aprilgan import default_stages
    from vlmad.methods.registry import get_spec

    art = get_spec(method).artefact
    if art is not None and kwargs.get(art.option):
        stages = art.read_meta(kwargs[art.option]).get("stages")
        if stages:
            return tuple(int(s) for s in stages)
    if kwargs.get("stages"):
        return tuple(int(s) for s in kwargs["stages"])
    layers = vision_config(_model_of(method, kwargs)).get("layers")
    if not layers:
        raise VlmadError(
            f"cannot tell the depth of {_model_of(method, kwargs)!r}",
            "give APRIL-GAN stage values as block indices, e.g. [6], [12], [6,12,18,24]",
        )
    return default_stages(int(layers))


# ---------------------------------------------------------------------------------------------------------------
# prompts


def _resolve_file(text: str, base_dir: str | None) -> str:
    p = Path(text).expanduser()
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    return str(p.resolve()) if p.exists() else text


def _prompt_value(value: Any, base_dir: str | None) -> Any:
    """Validated prompt-set value: a mode, a named set, a file path or an inline mapping."""
    from vlmad.prompts import PROMPT_SETS, load_prompt_set

    if isinstance(value, str) and value in PROMPT_MODES:
        return value
    if isinstance(value, Mapping):
        if "file" in value:
            path = _resolve_file(str(value["file"]), base_dir)
            ps = load_prompt_set(path)
            return {"name": str(value.get("name") or ps.name), "file": path}
        ps = load_prompt_set(dict(value))
        return ps.as_dict()
    if isinstance(value, str):
        if value in PROMPT_SETS:
            return value
        path = _resolve_file(value, base_dir)
        load_prompt_set(path)  # raises with a hint when unknown
        return {"name": Path(path).stem, "file": path}
    raise VlmadError(
        f"prompt ablation value {value!r} is not a mode, a prompt set name, a file or a mapping",
        f"modes: {', '.join(PROMPT_MODES)}",
    )


def _check_prompts(values: list[Any], base_dir: str | None) -> None:
    for v in values:
        _prompt_value(v, base_dir)


def _base_prompt_set(method: str, kwargs: Mapping[str, Any]):
    from vlmad.methods.registry import get_spec
    from vlmad.prompts import load_prompt_set

    spec = get_spec(method)
    prompt = spec.default_prompt(kwargs)
    if prompt is None:
        raise VlmadError(f"{method} has no prompt set", "the prompts axis applies to methods with prompts")
    return load_prompt_set(prompt)


def _expand_prompts(values: list[Any], method: str, kwargs: dict[str, Any], base_dir: str | None) -> list[Variant]:
    from vlmad.prompts import ablate, load_prompt_set

    base = _base_prompt_set(method, kwargs)
    out = []
    for raw in values:
        value = _prompt_value(raw, base_dir)
        if value == "full":
            out.append(Variant("prompts", "full", True, detail=f"{base.name}: {_count(base)}"))
        elif isinstance(value, str) and value in PROMPT_MODES:
            ps = ablate(base, value)
            out.append(
                Variant("prompts", value, False, {"prompt_set": ps.as_dict()}, detail=f"{ps.name}: {_count(ps)}")
            )
        elif isinstance(value, str):  # named set
            ps = load_prompt_set(value)
            out.append(
                Variant(
                    "prompts",
                    value,
                    value == base.name and "prompt_set" not in kwargs,
                    {"prompt_set": value},
                    detail=f"{ps.name}: {_count(ps)}",
                )
            )
        elif "file" in value:
            ps = load_prompt_set(value["file"])
            out.append(
                Variant(
                    "prompts",
                    value["name"],
                    False,
                    {"prompt_set": value["file"]},
                    detail=f"file {Path(value['file']).name}: {_count(ps)}",
                )
            )
        else:
            ps = load_prompt_set(value)
            out.append(Variant("prompts", ps.name, False, {"prompt_set": ps.as_dict()}, detail=f"inline: {_count(ps)}"))
    return out


def _count(ps: Any) -> str:
    n = len(ps.normal_states) * len(ps.templates)
    a = len(ps.anomalous_states) * len(ps.templates)
    states = f"{len(ps.normal_states)}+{len(ps.anomalous_states)} states"
    return f"{states} x {len(ps.templates)} templates = {n}+{a} prompts"


# ---------------------------------------------------------------------------------------------------------------
# WinCLIP window scales


def parse_scales(value: Any) -> tuple[tuple[int, ...], bool]:
    """``"2,3+image"`` -> ((2, 3), True); ``[2]`` -> ((2,), False); ``"image"`` -> ((), True)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (int(value),), False
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value), False
    text = str(value).replace(" ", "").replace("{", "").replace("}", "").lower()
    image = False
    scales: list[int] = []
    for part in text.split("+"):
        if part in ("image", "img"):
            image = True
            continue
        for s in part.split(","):
            if not s:
                continue
            try:
                scales.append(int(s))
            except ValueError:
                raise VlmadError(f"window-scale value {value!r} is not like '2', '2,3' or '2,3+image'") from None
    if not scales and not image:
        raise VlmadError(f"window-scale value {value!r} has no scale", "e.g. '2', '3', '2,3', '2,3+image'")
    if any(s < 1 for s in scales):
        raise VlmadError(f"window-scale value {value!r}: scales must be >= 1")
    return tuple(dict.fromkeys(scales)), image


def scales_name(scales: Sequence[int], image: bool) -> str:
    text = ",".join(str(s) for s in scales)
    return (text + "+image" if text else "image") if image else text


def _check_scales(values: list[Any], base_dir: str | None) -> None:
    for v in values:
        parse_scales(v)


def _expand_scales(values: list[Any], method: str, kwargs: dict[str, Any], base_dir: str | None) -> list[Variant]:
    base = (tuple(int(s) for s in kwargs.get("scales", (2, 3))), bool(kwargs.get("use_image_scale", True)))
    out = []
    for raw in values:
        scales, image = parse_scales(raw)
        default = (scales, image) == base
        out.append(
            Variant(
                "window_scales",
                scales_name(scales, image),
                default,
                {} if default else {"scales": list(scales), "use_image_scale": image},
                detail="harmonic mean of "
                + " and ".join([f"{s}x{s} windows" for s in scales] + (["the image score"] if image else [])),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# APRIL-GAN stages


def _parse_stage_value(value: Any) -> list[int] | str:
    if isinstance(value, str) and value.strip().lower() in ("each", "all"):
        return value.strip().lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, str):
        try:
            return [int(s) for s in value.replace(" ", "").split(",") if s]
        except ValueError:
            raise VlmadError(f"stage value {value!r} is not 'each', 'all' or block indices like '6,12'") from None
    if isinstance(value, (list, tuple)) and value and all(isinstance(s, int) for s in value):
        return [int(s) for s in value]
    raise VlmadError(f"stage value {value!r} is not 'each', 'all' or a list of block indices")


def _check_stages(values: list[Any], base_dir: str | None) -> None:
    for v in values:
        _parse_stage_value(v)


def _expand_stages(values: list[Any], method: str, kwargs: dict[str, Any], base_dir: str | None) -> list[Variant]:
    full = default_stages_of(method, kwargs)
    out = []
    for raw in values:
        value = _parse_stage_value(raw)
        subsets = [[s] for s in full] if value == "each" else ([list(full)] if value == "all" else [value])
        for sub in subsets:
            bad = [s for s in sub if s not in full]
            if bad:
                raise VlmadError(
                    f"stage ablation: block {bad[0]} is not one of the detector's stages {list(full)}",
                    "use 'each', 'all' or a subset of the stages",
                )
            default = sorted(sub) == sorted(full)
            name = "all" if default else ",".join(str(s) for s in sub)
            out.append(
                Variant(
                    "stages",
                    name,
                    default,
                    {} if default else {STAGE_SUBSET_KEY: list(sub)},
                    detail=("blocks " if len(full if default else sub) > 1 else "block ")
                    + ", ".join(str(s) for s in (full if default else sub)),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------------------------
# input resolution


def _parse_resolution(value: Any) -> int | float | str:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "default":
            return "default"
        if text.endswith("x"):
            try:
                factor = float(text[:-1])
            except ValueError:
                raise VlmadError(
                    f"resolution value {value!r} is not 'default', pixels or a factor like '1.5x'"
                ) from None
            if factor <= 0:
                raise VlmadError(f"resolution factor {value!r} must be positive")
            return factor
        text = text.removesuffix("px")
        try:
            value = int(text)
        except ValueError:
            raise VlmadError(f"resolution value {value!r} is not 'default', pixels or a factor like '1.5x'") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 16:
        raise VlmadError(f"resolution value {value!r} must be 'default', a factor like '1.5x' or >= 16 pixels")
    return int(value)


def _check_resolution(values: list[Any], base_dir: str | None) -> None:
    for v in values:
        _parse_resolution(v)


def _expand_resolution(values: list[Any], method: str, kwargs: dict[str, Any], base_dir: str | None) -> list[Variant]:
    base = default_image_size(method, kwargs)
    patch = vision_config(_model_of(method, kwargs)).get("patch_size") or 1
    patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    out = []
    for raw in values:
        value = _parse_resolution(raw)
        if value == "default":
            size = base
        elif isinstance(value, float):
            size = max(patch, int(round(base * value / patch)) * patch)
        else:
            size = int(value)
        if size % patch:
            raise VlmadError(
                f"resolution {size} px is not a multiple of the patch size {patch}",
                f"use a multiple of {patch}, or a factor like '1.5x' (rounded for you)",
            )
        default = size == base
        out.append(
            Variant(
                "resolution",
                "default" if default else f"{size}px",
                default,
                {} if default else {"image_size": size},
                detail=f"{size} px input",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# backbone

_WEIGHT_KEYS = ("pretrained", "checkpoint", "random_weights")
_BACKBONE_DROP = ("model", "pretrained", "checkpoint", "random_weights", "image_size", "quick_gelu")


def _backbone_value(value: Any, base_dir: str | None) -> dict[str, Any] | str:
    if isinstance(value, str):
        return "default" if value.strip().lower() == "default" else {"model": value}
    if not isinstance(value, Mapping) or "model" not in value:
        raise VlmadError(
            f"backbone value {value!r} needs a 'model'",
            "e.g. {model: ViT-B-16, pretrained: laion2b_s34b_b88k} or 'default'",
        )
    extra = sorted(set(value) - {"model", "pretrained", "checkpoint", "name", "quick_gelu", "image_size"})
    if extra:
        raise VlmadError(
            f"backbone value: unknown key {extra[0]!r}",
            "keys: model, pretrained, checkpoint, name, quick_gelu, image_size",
        )
    out = dict(value)
    if out.get("checkpoint"):
        out["checkpoint"] = _resolve_file(str(out["checkpoint"]), base_dir)
    return out


def _check_backbone(values: list[Any], base_dir: str | None) -> None:
    for v in values:
        _backbone_value(v, base_dir)


def _expand_backbone(values: list[Any], method: str, kwargs: dict[str, Any], base_dir: str | None) -> list[Variant]:
    base_model = _model_of(method, kwargs)
    out = []
    for raw in values:
        value = _backbone_value(raw, base_dir)
        if value == "default":
            out.append(Variant("backbone", "default", True, detail=base_model))
            continue
        patch = {k: v for k, v in value.items() if k != "name"}
        if not any(patch.get(k) for k in _WEIGHT_KEYS):
            if kwargs.get("random_weights"):
                patch["random_weights"] = True
            else:
                from vlmad.methods.registry import get_spec

                if patch["model"] != get_spec(method).default_model:
                    raise VlmadError(
                        f"backbone ablation value {value['model']!r} has no weights",
                        "add pretrained: TAG or checkpoint: PATH to the value",
                    )
        name = str(value.get("name") or value["model"] + (f"/{value['pretrained']}" if value.get("pretrained") else ""))
        same = patch.get("model") == base_model and all(patch.get(k) == kwargs.get(k) for k in patch)
        out.append(
            Variant(
                "backbone",
                "default" if same else name,
                same,
                {} if same else patch,
                drop=() if same else _BACKBONE_DROP,
                detail=str(patch.get("model")),
            )
        )
    return out


AXES: dict[str, Axis] = {
    "prompts": Axis(
        "prompts",
        "Prompt ensemble",
        "compositional prompt ensemble (state words x templates) vs reduced ensembles and user sets",
        PROMPT_MODES,
        None,
        _expand_prompts,
        _check_prompts,
    ),
    "window_scales": Axis(
        "window_scales",
        "WinCLIP window scales",
        "which window scales (and the full-image score) enter WinCLIP's harmonic mean",
        ("2", "3", "2,3", "2,3+image"),
        None,
        _expand_scales,
        _check_scales,
        "zero-shot image scores come from the full-image embedding, so at K=0 only the pixel metrics can move",
    ),
    "stages": Axis(
        "stages",
        "APRIL-GAN stages",
        "each single feature stage vs all stages (same heads)",
        ("each", "all"),
        None,
        _expand_stages,
        _check_stages,
        "the zero-shot image score is the CLS probability, which does not use the heads: at K=0 only the "
        "pixel metrics can move",
    ),
    "resolution": Axis(
        "resolution",
        "Input resolution",
        "model input side (positional embeddings interpolated)",
        ("default", "0.75x", "1.5x"),
        None,
        _expand_resolution,
        _check_resolution,
    ),
    "backbone": Axis(
        "backbone", "Backbone", "CLIP architecture / weights", ("default",), None, _expand_backbone, _check_backbone
    ),
}
