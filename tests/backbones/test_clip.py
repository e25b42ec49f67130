"""Backbone surfaces: fast path vs open_clip's own modules, windows vs single-sequence forwards, no hooks left."""

from __future__ import annotations

import torch

from vlmad.backbones import ClipBackbone
from vlmad.methods.winclip import make_windows
from vlmad.testing import random_images


def _plain_block(block, x):
    """One open_clip block applied to a single (1, L, D) sequence, honouring the attention module's own layout."""
    h = block.ln_1(x)
    q = h if block.attn.batch_first else h.transpose(0, 1)
    a = block.attn(q, q, q, need_weights=False)[0]
    a = a if block.attn.batch_first else a.transpose(0, 1)
    x = x + block.ls_1(a)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _single_window_embedding(bb: ClipBackbone, embedded: torch.Tensor, b: int, patches: torch.Tensor):
    v = bb.visual
    seq = torch.cat([torch.zeros(1, dtype=torch.long), patches + 1])
    x = v.ln_pre(embedded[b : b + 1, seq])
    for blk in v.transformer.resblocks:
        x = _plain_block(blk, x)
    return v.ln_post(x[:, 0]) @ v.proj


def test_fast_and_reference_paths_agree(tiny_backbone):
    ref = ClipBackbone(tiny_backbone.model, tiny_backbone.arch, tiny_backbone.source, fast=False)
    assert tiny_backbone.fast and not ref.fast
    x = tiny_backbone.preprocess_tensor(random_images(3, 64, seed=3))
    a, b = tiny_backbone.encode_image(x, layers=[1, 2]), ref.encode_image(x, layers=[1, 2])
    torch.testing.assert_close(a.pooled, b.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.patch_tokens, b.patch_tokens, atol=1e-5, rtol=1e-5)
    for i in (1, 2):
        torch.testing.assert_close(a.intermediates[i], b.intermediates[i], atol=1e-5, rtol=1e-5)
    for scale in (2, 3):
        w = make_windows(tiny_backbone.grid_size, scale)
        torch.testing.assert_close(
            tiny_backbone.window_embeddings(a.embedded, w), ref.window_embeddings(b.embedded, w), atol=1e-5, rtol=1e-5
        )


def test_each_window_equals_its_own_single_sequence_forward(tiny_backbone):
    """Catches any batch/sequence axis mix-up: a window must only attend within itself."""
    x = tiny_backbone.preprocess_tensor(random_images(2, 64, seed=4))
    feats = tiny_backbone.encode_image(x)
    for scale in (2, 3):
        windows = make_windows(tiny_backbone.grid_size, scale)
        emb = tiny_backbone.window_embeddings(feats.embedded, windows)
        for b in range(2):
            for w in (0, 7, windows.shape[0] - 1):
                single = _single_window_embedding(tiny_backbone, feats.embedded, b, windows[w])
                torch.testing.assert_close(emb[b, w], single[0], atol=1e-5, rtol=1e-5)
        # windows must differ from each other (an axis mix-up makes them all identical)
        assert (emb[0] - emb[0].mean(0)).abs().max() > 1e-3


def test_chunking_does_not_change_results(tiny_backbone):
    x = tiny_backbone.preprocess_tensor(random_images(2, 64, seed=5))
    feats = tiny_backbone.encode_image(x)
    windows = make_windows(tiny_backbone.grid_size, 3)
    small = ClipBackbone(tiny_backbone.model, tiny_backbone.arch, tiny_backbone.source, chunk_tokens=25)
    torch.testing.assert_close(
        small.window_embeddings(feats.embedded, windows),
        tiny_backbone.window_embeddings(feats.embedded, windows),
        atol=1e-6,
        rtol=1e-6,
    )


def test_no_hooks_left_behind(tiny_backbone):
    x = tiny_backbone.preprocess_tensor(random_images(1, 64))
    feats = tiny_backbone.encode_image(x, layers=[1])
    tiny_backbone.window_embeddings(feats.embedded, make_windows(tiny_backbone.grid_size, 2))
    for m in tiny_backbone.model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_text_encoding_matches_open_clip_with_cut_context(tiny_backbone):
    prompts = [
        "a photo of a bottle.",
        "a",
        "a close-up photo of the damaged metal nut for anomaly detection.",
        "a photo of a bottle.",
    ]
    ours = tiny_backbone.encode_text(prompts)
    theirs = tiny_backbone.model.encode_text(tiny_backbone.tokenize(prompts))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[0], ours[3])


def test_intermediate_layers_and_geometry(tiny_backbone):
    assert tiny_backbone.grid_size == (8, 8) and tiny_backbone.image_size == 64
    assert tiny_backbone.width == 64 and tiny_backbone.embed_dim == 32 and tiny_backbone.num_layers == 2
    x = tiny_backbone.preprocess_tensor(random_images(1, 64))
    feats = tiny_backbone.encode_image(x, layers=[1], need_final=False)
    assert feats.intermediates[1].shape == (1, 65, 64) and feats.pooled.numel() == 0


def test_int8_runs_and_stays_close(weights_file):
    fp32 = ClipBackbone.load("vlmad-tiny-vit", checkpoint=str(weights_file("vlmad-tiny-vit")))
    int8 = ClipBackbone.load("vlmad-tiny-vit", checkpoint=str(weights_file("vlmad-tiny-vit")), precision="int8")
    x = fp32.preprocess_tensor(random_images(2, 64, seed=6))
    a, b = fp32.encode_image(x), int8.encode_image(x)
    cos = torch.nn.functional.cosine_similarity(a.pooled, b.pooled, dim=-1)
    assert torch.isfinite(b.pooled).all() and cos.min() > 0.95
    assert int8.fingerprint != fp32.fingerprint  # never shares a text cache entry with fp32


def test_bf16_runs_on_the_cast_weights_and_stays_close(weights_file):
    """Reduced precision must reach the fast blocks too (they hold the model's parameters themselves)."""
    from vlmad.methods.winclip import WinClip

    path = str(weights_file("vlmad-tiny-vit"))
    maps = {}
    for precision in ("fp32", "bf16"):
        bb = ClipBackbone.load("vlmad-tiny-vit", checkpoint=path, precision=precision)
        assert all(p.dtype == bb.compute_dtype for p in bb.fast_blocks.parameters())
        det = WinClip(bb)
        det.setup("bottle")
        maps[precision] = det.predict(bb.preprocess_tensor(random_images(2, 64, seed=13))).anomaly_maps
    assert maps["bf16"].dtype == torch.float32 and torch.isfinite(maps["bf16"]).all()
    assert (maps["bf16"] - maps["fp32"]).abs().max() < 0.05
