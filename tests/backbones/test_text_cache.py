"""Text-embedding cache: hits, invalidation by prompts and by weights, bypass."""

from __future__ import annotations

import torch

from vlmad.backbones import ClipBackbone, TextEmbeddingCache
from vlmad.methods.winclip import WinClip
from vlmad.testing import discriminative_state_dict, save_state_dict


def test_second_setup_hits_the_cache(tiny_backbone, tmp_path):
    cache = TextEmbeddingCache(tmp_path)
    det = WinClip(tiny_backbone, cache=cache)
    det.setup("bottle")
    first = det.text_embeddings.clone()
    assert (cache.hits, cache.misses) == (0, 1) and len(list(tmp_path.glob("*.safetensors"))) == 1
    det2 = WinClip(tiny_backbone, cache=TextEmbeddingCache(tmp_path))
    det2.setup("bottle")
    assert det2.cache.hits == 1 and det2.cache.misses == 0
    assert torch.equal(first, det2.text_embeddings)


def test_prompt_change_invalidates(tiny_backbone, tmp_path):
    cache = TextEmbeddingCache(tmp_path)
    WinClip(tiny_backbone, cache=cache).setup("bottle")
    WinClip(tiny_backbone, cache=cache, prompt_set="winclip-paper").setup("bottle")
    WinClip(tiny_backbone, cache=cache).setup("metal_nut")
    assert cache.misses == 3 and cache.hits == 0


def test_weight_change_invalidates(tmp_path):
    cache = TextEmbeddingCache(tmp_path / "cache")
    path = tmp_path / "w.safetensors"
    save_state_dict(discriminative_state_dict("vlmad-tiny-vit", seed=0), path)
    a = WinClip(ClipBackbone.load("vlmad-tiny-vit", checkpoint=str(path)), cache=cache)
    a.setup("bottle")
    save_state_dict(discriminative_state_dict("vlmad-tiny-vit", seed=1), path)  # same path, new weights
    b = WinClip(ClipBackbone.load("vlmad-tiny-vit", checkpoint=str(path)), cache=cache)
    b.setup("bottle")
    assert cache.misses == 2 and cache.hits == 0
    assert not torch.allclose(a.text_embeddings, b.text_embeddings)


def test_disabled_cache_writes_nothing(tiny_backbone, tmp_path):
    cache = TextEmbeddingCache(tmp_path, enabled=False)
    WinClip(tiny_backbone, cache=cache).setup("bottle")
    WinClip(tiny_backbone, cache=cache).setup("bottle")
    assert not list(tmp_path.iterdir()) and cache.hits == 0


def test_corrupt_entry_is_recomputed(tiny_backbone, tmp_path):
    cache = TextEmbeddingCache(tmp_path)
    WinClip(tiny_backbone, cache=cache).setup("bottle")
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"garbage")
    det = WinClip(tiny_backbone, cache=cache)
    det.setup("bottle")
    assert cache.misses == 2 and torch.isfinite(det.text_embeddings).all()


def test_default_location_follows_env(tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMAD_CACHE_DIR", str(tmp_path / "envcache"))
    WinClip(tiny_backbone).setup("bottle")
    assert list((tmp_path / "envcache" / "text").glob("*.safetensors"))
