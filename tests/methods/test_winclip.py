"""WinCLIP building blocks against brute-force loops, and the detector's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmad.methods.winclip import (
    WinClip,
    association_scores,
    class_scores,
    harmonic_aggregate,
    make_windows,
    window_incidence,
)
from vlmad.testing import random_images
from vlmad_runtime.errors import NotReadyError, VlmadError


def test_window_geometry_matches_brute_force():
    for grid, scale in (((15, 15), 2), ((15, 15), 3), ((4, 6), 3), ((8, 8), 1)):
        w = make_windows(grid, scale)
        h, wd = grid
        expect = [
            [(r + i) * wd + (c + j) for i in range(scale) for j in range(scale)]
            for r in range(h - scale + 1)
            for c in range(wd - scale + 1)
        ]
        assert w.tolist() == expect
    assert make_windows((15, 15), 2).shape == (196, 4) and make_windows((15, 15), 3).shape == (169, 9)
    with pytest.raises(VlmadError):
        make_windows((4, 4), 5)


def test_harmonic_aggregation_matches_loop():
    torch.manual_seed(0)
    grid, scale = (6, 5), 3
    windows = make_windows(grid, scale)
    scores = torch.rand(3, windows.shape[0]) * 0.9 + 0.05
    scores[1, 4] = 0.0  # a zero-score window zeroes the patches it covers
    got = harmonic_aggregate(scores, window_incidence(windows, 30))
    for b in range(3):
        for p in range(30):
            covering = [w for w in range(windows.shape[0]) if p in windows[w].tolist()]
            vals = [float(scores[b, w]) for w in covering]
            expect = 0.0 if (not vals or min(vals) == 0.0) else len(vals) / sum(1.0 / v for v in vals)
            assert got[b, p].item() == pytest.approx(expect, rel=1e-6, abs=1e-7)


def test_class_and_association_scores_brute_force():
    torch.manual_seed(1)
    emb, text = torch.randn(2, 5, 8), torch.randn(2, 8)
    got = class_scores(emb, text, 0.07)
    for b in range(2):
        for i in range(5):
            c = [float(torch.nn.functional.cosine_similarity(emb[b, i], text[k], dim=0)) for k in range(2)]
            e = np.exp(np.array(c) / 0.07)
            assert got[b, i].item() == pytest.approx(e[1] / e.sum(), rel=1e-5)
    bank = torch.randn(7, 8)
    got = association_scores(emb, bank)
    for b in range(2):
        for i in range(5):
            d = min((1 - float(torch.nn.functional.cosine_similarity(emb[b, i], bank[m], dim=0))) / 2 for m in range(7))
            assert got[b, i].item() == pytest.approx(d, rel=1e-5, abs=1e-6)


def test_contract_zero_and_few_shot(tiny_backbone):
    det = WinClip(tiny_backbone)
    with pytest.raises(NotReadyError):
        det.predict(torch.zeros(1, 3, 64, 64))
    det.setup("metal_nut")
    x = tiny_backbone.preprocess_tensor(random_images(5, 64, seed=7))
    zs = det.predict(x)
    assert zs.image_scores.shape == (5,) and zs.anomaly_maps.shape == (5, 64, 64)
    assert zs.anomaly_maps.dtype == torch.float32 and det.info().method == "winclip" and det.shots == 0
    # batching does not change results
    det.batch_size = 2
    torch.testing.assert_close(det.predict(x).anomaly_maps, zs.anomaly_maps, atol=1e-6, rtol=1e-6)
    det.fit(tiny_backbone.preprocess_tensor(random_images(2, 64, seed=8)))
    fs = det.predict(x)
    assert det.shots == 2 and det.info().method == "winclip+" and det.info().shots == 2
    assert not torch.allclose(fs.anomaly_maps, zs.anomaly_maps)
    # a reference image scored against its own memory has zero few-shot distance. The few-shot map is averaged
    # with the zero-shot one (and its max with the zero-shot image score), so a zero distance shows as exactly
    # half the zero-shot map and score; any non-zero distance breaks the equality.
    ref = tiny_backbone.preprocess_tensor(random_images(2, 64, seed=8))[:1]
    with_memory = det.predict(ref)
    det.reset_references()
    zero_shot_only = det.predict(ref)
    torch.testing.assert_close(with_memory.anomaly_maps, zero_shot_only.anomaly_maps / 2, atol=2e-6, rtol=0)
    torch.testing.assert_close(with_memory.image_scores, zero_shot_only.image_scores / 2, atol=2e-6, rtol=0)
    torch.testing.assert_close(det.predict(x).image_scores, zs.image_scores)


def test_predict_accepts_paths_and_pil(tiny_backbone, tmp_path):
    from PIL import Image

    det = WinClip(tiny_backbone)
    det.setup("bottle")
    arr = (random_images(1, 100, seed=9)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    by_path = det.predict([tmp_path / "a.png"])
    by_pil = det.predict(Image.fromarray(arr))
    torch.testing.assert_close(by_path.anomaly_maps, by_pil.anomaly_maps)
    assert by_path.anomaly_maps.shape == (1, 64, 64)
    with pytest.raises(VlmadError, match="preprocessed"):
        det.predict(torch.zeros(1, 3, 32, 32))


def test_scale_options(tiny_backbone):
    x = tiny_backbone.preprocess_tensor(random_images(2, 64, seed=10))
    maps = {}
    for scales, image_scale in (((2,), True), ((3,), True), ((2, 3), False), ((2, 3), True)):
        det = WinClip(tiny_backbone, scales=scales, use_image_scale=image_scale)
        det.setup("bottle")
        maps[(scales, image_scale)] = det.predict(x).anomaly_maps
    assert len({tuple(m.flatten()[:50].tolist()) for m in maps.values()}) == 4
