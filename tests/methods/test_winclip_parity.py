"""Parity with anomalib 2.7.0's WinClipModel (the oracle, in its own environment with open_clip 2.24).

Both load the same discriminative random weights and score the same preprocessed tensors; image scores and
anomaly maps must agree to 1e-5 (fp32) zero-shot and 1-, 2-, 4-shot. The oracle's maps are checked to vary first,
so a flat-map failure mode (e.g. the batch-first pitfall) cannot pass as "equal".
"""

from __future__ import annotations

import numpy as np
import pytest

from vlmad.backbones import ClipBackbone
from vlmad.methods.winclip import WinClip
from vlmad.testing import random_images

TOL = 1e-5


def _compare(arch, weights, oracle, tmp_path, n_images, shots, class_name="metal_nut"):
    bb = ClipBackbone.load(arch, checkpoint=str(weights))
    size = bb.image_size
    images = bb.preprocess_tensor(random_images(n_images, size, seed=11))
    refs = bb.preprocess_tensor(random_images(max(shots), size, seed=12)) if max(shots) else None
    # anomalib does not turn "_" into a space; give it the display name vlmad uses
    out = oracle(
        tmp_path / "oracle",
        arch,
        weights,
        images.numpy(),
        class_name.replace("_", " "),
        refs=None if refs is None else refs.numpy(),
        shots=shots,
    )
    det = WinClip(bb, batch_size=3)
    det.setup(class_name)
    np.testing.assert_allclose(det.text_embeddings.numpy(), out["text_embeddings"], atol=TOL, rtol=0)
    feats = bb.encode_image(images[:n_images])
    np.testing.assert_allclose(feats.pooled.numpy(), out["image_embeddings"], atol=TOL, rtol=0)
    np.testing.assert_allclose(feats.patch_tokens.numpy(), out["patch_embeddings"], atol=TOL, rtol=0)
    for s in (2, 3):
        ours = bb.window_embeddings(feats.embedded, det.windows[s]).numpy()
        np.testing.assert_allclose(ours, out[f"window_embeddings_{s}"], atol=TOL, rtol=0)
    gaps = {}
    for k in shots:
        maps_ref = out[f"maps_k{k}"]
        assert maps_ref.max() - maps_ref.min() > 1e-2, "oracle maps are flat: weights not discriminative"
        if k:
            det.fit(refs[:k])
        else:
            det.reset_references()
        scores, maps = det.predict(images).numpy()
        gaps[k] = (np.abs(scores - out[f"scores_k{k}"]).max(), np.abs(maps - maps_ref).max())
        assert gaps[k][0] <= TOL and gaps[k][1] <= TOL, f"{k}-shot: score gap {gaps[k][0]}, map gap {gaps[k][1]}"
    return gaps


@pytest.mark.oracle
@pytest.mark.parametrize("arch", ["vlmad-tiny-vit", "vlmad-tiny-vit-240"])
def test_parity_tiny_zero_and_few_shot(arch, weights_file, anomalib_winclip, tmp_path):
    _compare(arch, weights_file(arch), anomalib_winclip, tmp_path, n_images=5, shots=(0, 1, 2, 4))


@pytest.mark.oracle
@pytest.mark.slow
def test_parity_real_vit_b_16_plus_240(weights_file, anomalib_winclip, tmp_path):
    """The real WinCLIP architecture (random init, ~0.67 TFLOP per image): 2 images, zero- and 1-shot."""
    _compare(
        "ViT-B-16-plus-240", weights_file("ViT-B-16-plus-240"), anomalib_winclip, tmp_path, n_images=2, shots=(0, 1)
    )
