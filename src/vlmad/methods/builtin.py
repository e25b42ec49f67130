"""Specs of the shipped methods (WinCLIP, APRIL-GAN, AnomalyCLIP): the single place that knows their defaults.

Imports nothing but :mod:`vlmad.methods.spec` (no torch); the registry reads :data:`BUILTIN_SPECS`, so the order in
which modules are imported never changes what is registered. Method behaviour: docs/methods.md.
"""

from __future__ import annotations

from typing import Any

from vlmad.methods.spec import BACKBONE_KEYS, GENERIC_AXES, ArtefactSpec, MethodSpec, OptionSpec

__all__ = ["BACKBONE_KEYS", "BUILTIN_SPECS", "WINCLIP", "APRILGAN", "ANOMALYCLIP"]

_PROMPT_TYPES: tuple[type, ...] = (str, dict, object)
_CACHE = OptionSpec("use_cache", bool, True, "read/write the on-disk text-embedding cache")


def _cache(kwargs: dict[str, Any]) -> Any:
    from vlmad.backbones.text_cache import TextEmbeddingCache

    return TextEmbeddingCache(enabled=kwargs.pop("use_cache", True))


def make_winclip(backbone: Any, **kwargs: Any) -> Any:
    """WinCLIP detector on a loaded backbone (``use_cache`` becomes the text-embedding cache)."""
    from vlmad.methods.winclip import WinClip

    cache = _cache(kwargs)
    return WinClip(backbone, cache=cache, **kwargs)


def make_aprilgan(backbone: Any, **kwargs: Any) -> Any:
    """APRIL-GAN detector on a loaded backbone (its heads file was already mapped to backbone options)."""
    from vlmad.methods.aprilgan import AprilGan

    cache = _cache(kwargs)
    return AprilGan(backbone, cache=cache, **kwargs)


WINCLIP = MethodSpec(
    name="winclip",
    factory=make_winclip,
    summary="WinCLIP/WinCLIP+: zero-shot window-text similarity, few-shot window memory (CVPR 2023)",
    default_model="ViT-B-16-plus-240",
    default_pretrained="laion400m_e31",
    default_prompt_set="winclip",
    options=(
        OptionSpec("scales", (list, tuple), (2, 3), "window scales (in patches) of the harmonic mean"),
        OptionSpec("prompt_set", _PROMPT_TYPES, "winclip", "named prompt set, YAML/JSON file or mapping"),
        OptionSpec("temperature", float, 0.07, "softmax temperature of the text similarity"),
        OptionSpec("use_image_scale", bool, True, "include the full-image score in the harmonic mean"),
        OptionSpec("batch_size", int, 8, "images per forward pass"),
        _CACHE,
    ),
    study_axes=GENERIC_AXES + ("window_scales",),
    published_settings={
        "prompt_set": "winclip",
        "precision": "fp32",
        "scales": [2, 3],
        "image_scale": True,
        "temperature": 0.07,
    },
)

APRILGAN = MethodSpec(
    name="aprilgan",
    factory=make_aprilgan,
    summary="APRIL-GAN (VAND 2023): trained linear heads on several stages, few-shot patch memory",
    default_model="ViT-L-14-336",
    default_pretrained="openai",
    # quick_gelu=False: the reference (VAND-APRIL-GAN) at 518 px rebuilds ViT-L-14-336 from its JSON config, which
    # has no QuickGELU, in both towers; its released heads and published numbers mean that (--quick-gelu is the
    # option; docs/methods.md)
    backbone_defaults={"image_size": 518, "quick_gelu": False},
    default_prompt_set="aprilgan",
    options=(
        OptionSpec("stages", (list, tuple), None, "vision blocks whose tokens feed the heads (default per depth)"),
        OptionSpec("prompt_set", _PROMPT_TYPES, None, "prompt set (default: the heads' training set)"),
        OptionSpec("transductive", bool, False, "declare the reference's test-set score normalisation"),
        OptionSpec("class_name_style", str, None, "'raw' folder names (the reference's) or 'display' names"),
        OptionSpec("batch_size", int, 4, "images per forward pass"),
        OptionSpec("head_seed", int, 0, "seed of untrained heads (smoke tests)"),
        OptionSpec("check_weights", bool, True, "refuse heads trained on other backbone weights"),
        OptionSpec("assoc_max_elems", int, 1 << 26, "memory bound of the few-shot association (elements)"),
        _CACHE,
    ),
    artefact=ArtefactSpec(
        kind="heads",
        option="heads",
        help="trained projection heads (.safetensors from `vlmad train aprilgan`)",
        backbone_kwargs="vlmad.methods.aprilgan:backbone_kwargs_from_heads",
        meta="vlmad.training.heads_io:read_heads_meta",
        required=True,
        skip_option="allow_untrained",
    ),
    study_axes=GENERIC_AXES + ("stages",),
    published_settings={
        "precision": "fp32",
        "prompt_set": "aprilgan",
        "heads_untrained": False,
        "class_name_style": "raw",
    },
    published_neutral=frozenset({"heads"}),
    train="vlmad.training.aprilgan:train_aprilgan",
    train_cli="vlmad.training.cli:train_aprilgan_command",
)


def make_anomalyclip(backbone: Any, **kwargs: Any) -> Any:
    """AnomalyCLIP detector on a loaded backbone (its prompts file was already mapped to backbone options)."""
    from vlmad.methods.anomalyclip import AnomalyClip

    return AnomalyClip(backbone, **kwargs)


ANOMALYCLIP = MethodSpec(
    name="anomalyclip",
    factory=make_anomalyclip,
    summary="AnomalyCLIP (ICLR 2024): learned object-agnostic prompts, DPAM V-V attention, zero-shot only",
    default_model="ViT-L-14-336",
    default_pretrained="openai",
    # the reference (zqhang/AnomalyCLIP) loads the OpenAI ViT-L/14@336px (QuickGELU) and runs it at 518 px
    backbone_defaults={"image_size": 518, "quick_gelu": True},
    options=(
        OptionSpec("stages", (list, tuple), None, "vision blocks of the dense features (default 6,12,18,24)"),
        OptionSpec("dpam_start", int, None, "first block with the V-V attention path (default: the first stage)"),
        OptionSpec("sigma", float, 4.0, "Gaussian smoothing of the anomaly map in pixels (0 = off)"),
        OptionSpec("global_ln_post", bool, False, "apply ln_post to the global embedding (the reference does not)"),
        OptionSpec("prompt_seed", int, 0, "seed of untrained prompts (smoke tests)"),
        OptionSpec("check_weights", bool, True, "refuse prompts learned on other backbone weights"),
        OptionSpec("batch_size", int, 4, "images per forward pass"),
    ),
    artefact=ArtefactSpec(
        kind="prompts",
        option="prompts",
        help="learned prompts (.safetensors + .json sidecar)",
        backbone_kwargs="vlmad.methods.builtin:backbone_kwargs_from_prompts",
        meta="vlmad.training.prompts_io:read_prompts_meta",
        required=True,
        skip_option="allow_untrained",
    ),
    study_axes=("resolution", "backbone", "stages"),
    few_shot=False,  # object-agnostic prompts, no reference memory (docs/methods.md)
    published_settings={"precision": "fp32", "prompts_untrained": False, "sigma": 4.0, "global_ln_post": False},
    published_neutral=frozenset({"prompts"}),
    train="vlmad.training.anomalyclip:train_anomalyclip",
    train_cli="vlmad.training.cli:train_anomalyclip_command",
)


def backbone_kwargs_from_prompts(path: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill the backbone options a prompts file was learned with (explicit options win)."""
    from vlmad.training.prompts_io import read_prompts_meta

    bb = read_prompts_meta(path)["backbone"]
    out = dict(kwargs)
    if "model" not in out:
        out["model"] = bb["arch"]
        out.setdefault("image_size", bb["image_size"])
        if bb.get("activation"):
            out.setdefault("quick_gelu", bb["activation"] == "QuickGELU")
        weights_given = any(out.get(k) not in (None, False) for k in ("pretrained", "checkpoint", "random_weights"))
        if not weights_given and bb.get("weights_kind") == "pretrained" and bb.get("pretrained"):
            out["pretrained"] = bb["pretrained"]
    return out


#: the methods vlmad ships, in display order (the first is the default of every command)
BUILTIN_SPECS: tuple[MethodSpec, ...] = (WINCLIP, APRILGAN, ANOMALYCLIP)
