"""CLIP backbones: loading (hub tag, checkpoint, random), text encoding + cache, dense features."""

from vlmad.backbones.clip import ClipBackbone, ImageFeatures
from vlmad.backbones.loading import (
    WeightsSource,
    cache_dir,
    list_architectures,
    list_pretrained,
    register_tiny_configs,
    resolve_model,
)
from vlmad.backbones.text_cache import TextEmbeddingCache

__all__ = [
    "ClipBackbone",
    "ImageFeatures",
    "TextEmbeddingCache",
    "WeightsSource",
    "cache_dir",
    "list_architectures",
    "list_pretrained",
    "register_tiny_configs",
    "resolve_model",
]
