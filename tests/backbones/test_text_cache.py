"""Text-embedding cache: hits, invalidation by prompts and by weights, bypass."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from vlmad.backbones import ClipBackbone, TextEmbeddingCache
from vlmad.backbones.text_cache import cache_key
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


# --- a cache that cannot be written, entries that cannot be trusted (issue 15 item 7) ---

PROMPTS = ["a photo of a flawless bottle", "a photo of a damaged bottle", "a bottle with a crack"]


def _unwritable_dir(tmp_path):
    """An existing directory in which creating a file fails: a read-only one for a normal user; for root (whom
    permissions do not stop) /proc, where no one can create files."""
    if os.geteuid() == 0:
        return Path("/proc")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def test_unwritable_cache_dir_warns_once_and_runs_uncached(tiny_backbone, tmp_path):
    root = _unwritable_dir(tmp_path)
    cache = TextEmbeddingCache(root)
    with pytest.warns(UserWarning, match="not writable.*continuing without caching") as caught:
        first = cache.embed(tiny_backbone, PROMPTS)
        again = TextEmbeddingCache(root).embed(tiny_backbone, PROMPTS[:2])  # same directory: no second warning
    assert len([w for w in caught if "not writable" in str(w.message)]) == 1
    assert cache.writable is False and cache.misses == 1
    assert torch.equal(first, tiny_backbone.encode_text(PROMPTS)) and again.shape[0] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failed cache is not tried again: no new error, no new warning
        cache.embed(tiny_backbone, PROMPTS)
    assert cache.misses == 2


def _write_entry(cache, backbone, prompts, tensor):
    from safetensors.torch import save_file

    path = cache.path_for(cache_key(backbone.fingerprint, prompts))
    save_file({"embeddings": tensor.contiguous()}, str(path))
    return path


@pytest.mark.parametrize("bad", ["wrong-width", "integer", "nan", "inf", "one-dim", "wrong-rows"])
def test_invalid_entry_is_a_miss_and_is_overwritten(tiny_backbone, tmp_path, bad):
    good = tiny_backbone.encode_text(PROMPTS)
    n, e = good.shape
    tensor = {
        "wrong-width": torch.randn(n, e + 8),
        "integer": torch.ones(n, e, dtype=torch.int64),
        "nan": good.clone().index_fill_(1, torch.tensor([3]), float("nan")),
        "inf": good.clone().index_fill_(0, torch.tensor([1]), float("inf")),
        "one-dim": torch.randn(n * e),
        "wrong-rows": torch.randn(n + 1, e),
    }[bad]
    cache = TextEmbeddingCache(tmp_path)
    path = _write_entry(cache, tiny_backbone, PROMPTS, tensor)
    emb = cache.embed(tiny_backbone, PROMPTS)
    assert (cache.hits, cache.misses) == (0, 1)
    torch.testing.assert_close(emb, good)
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(str(path))["embeddings"], good)  # overwritten by the recomputed one
    assert TextEmbeddingCache(tmp_path).get(tiny_backbone.fingerprint, PROMPTS, width=e) is not None


def test_valid_entry_is_a_hit_and_returned_unchanged(tiny_backbone, tmp_path):
    cache = TextEmbeddingCache(tmp_path)
    stored = torch.randn(len(PROMPTS), tiny_backbone.embed_dim)
    _write_entry(cache, tiny_backbone, PROMPTS, stored)
    assert torch.equal(cache.embed(tiny_backbone, PROMPTS), stored) and cache.hits == 1
