"""Factories of the shipped methods, registered with :mod:`vlmad.methods.registry`."""

from __future__ import annotations

from typing import Any

from vlmad.backbones.clip import ClipBackbone
from vlmad.backbones.text_cache import TextEmbeddingCache
from vlmad.methods.registry import DEFAULT_MODELS, register_method

BACKBONE_KEYS = ("model", "pretrained", "checkpoint", "random_weights", "seed", "quick_gelu", "image_size",
                 "device", "precision", "chunk_tokens", "fast")


def split_backbone_kwargs(method: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate backbone options from method options; fill the method's default model and weights."""
    bb = {k: kwargs.pop(k) for k in BACKBONE_KEYS if k in kwargs}
    defaults = DEFAULT_MODELS[method]
    bb.setdefault("model", defaults["model"])
    if bb.get("checkpoint") is None and not bb.get("random_weights") and bb.get("pretrained") is None:
        if bb["model"] == defaults["model"]:
            bb["pretrained"] = defaults["pretrained"]
    for key in ("image_size", "quick_gelu"):
        if key in defaults and key not in bb and bb["model"] == defaults["model"]:
            bb[key] = defaults[key]
    return bb, kwargs


def build_backbone(bb: dict[str, Any]) -> ClipBackbone:
    bb = dict(bb)
    arch = bb.pop("model")
    return ClipBackbone.load(arch, **bb)


def _cache(kwargs: dict[str, Any]) -> TextEmbeddingCache:
    return TextEmbeddingCache(enabled=kwargs.pop("use_cache", True))


@register_method("winclip", default_model="ViT-B-16-plus-240", default_pretrained="laion400m_e31")
def _winclip(backbone: ClipBackbone | None = None, **kwargs: Any):
    from vlmad.methods.winclip import WinClip

    bb_kwargs, method_kwargs = split_backbone_kwargs("winclip", kwargs)
    cache = _cache(method_kwargs)
    return WinClip(backbone or build_backbone(bb_kwargs), cache=cache, **method_kwargs)


# quick_gelu=False: the reference (VAND-APRIL-GAN) at 518 px rebuilds ViT-L-14-336 from its JSON config, which has
# no QuickGELU, in both towers; its released heads and published numbers mean that (--quick-gelu is the option)
@register_method("aprilgan", default_model="ViT-L-14-336", default_pretrained="openai", image_size=518,
                 quick_gelu=False)
def _aprilgan(backbone: ClipBackbone | None = None, **kwargs: Any):
    """APRIL-GAN; ``heads=PATH`` also supplies the backbone options the heads were trained with.

    Explicit options win (a mismatch with the heads is then reported when they are loaded).
    """
    from vlmad.methods.aprilgan import AprilGan, backbone_kwargs_from_heads

    if backbone is None and kwargs.get("heads") is not None and not hasattr(kwargs["heads"], "heads"):
        kwargs = backbone_kwargs_from_heads(kwargs["heads"], kwargs)
    bb_kwargs, method_kwargs = split_backbone_kwargs("aprilgan", kwargs)
    cache = _cache(method_kwargs)
    return AprilGan(backbone or build_backbone(bb_kwargs), cache=cache, **method_kwargs)
