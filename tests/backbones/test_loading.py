"""Weights sources: checkpoints (safetensors / weights_only pickles), mismatches, unknown names, offline."""

from __future__ import annotations

import time

import pytest
import torch

from vlmad.backbones import ClipBackbone, resolve_model
from vlmad_runtime.errors import CheckpointMismatchError, UnknownNameError, WeightsUnavailableError


def test_safetensors_checkpoint_loads_exactly(weights_file):
    from safetensors.torch import load_file

    path = weights_file("vlmad-tiny-vit")
    model, source = resolve_model("vlmad-tiny-vit", checkpoint=path)
    sd = load_file(str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert source.kind == "checkpoint" and source.fingerprint.startswith("sha256:")
    assert model.attn_mask.isinf().sum() == 77 * 76 // 2  # causal mask rebuilt (not in checkpoints)


def test_pt_checkpoint_with_weights_only(tmp_path, weights_file):
    from safetensors.torch import load_file

    sd = load_file(str(weights_file("vlmad-tiny-vit")))
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, pt)
    model, _ = resolve_model("vlmad-tiny-vit", checkpoint=pt)
    assert torch.equal(model.visual.proj, sd["visual.proj"])


class NotATensor:
    """Arbitrary objects in a pickle are what weights_only=True refuses to unpickle."""


def test_unsafe_pickle_and_garbage_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": NotATensor()}, evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a pickle")
    for bad in (evil, garbage):
        with pytest.raises(WeightsUnavailableError, match="cannot read checkpoint"):
            resolve_model("vlmad-tiny-vit", checkpoint=bad)


def test_wrong_architecture_checkpoint_is_a_clear_error(weights_file):
    with pytest.raises(CheckpointMismatchError) as err:
        resolve_model("vlmad-tiny-vit-4l", checkpoint=weights_file("vlmad-tiny-vit"))
    assert "vlmad-tiny-vit-4l" in str(err.value) and "--model" in err.value.hint


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        resolve_model("vlmad-tiny-vit", checkpoint=tmp_path / "nope.safetensors")


def test_unknown_architecture_and_tag():
    with pytest.raises(UnknownNameError, match="unknown model architecture"):
        resolve_model("ViT-Z-99", random_weights=True)
    with pytest.raises(UnknownNameError, match="unknown pretrained tag"):
        resolve_model("ViT-B-16-plus-240", pretrained="no_such_tag")


def test_exactly_one_weights_source(weights_file):
    with pytest.raises(WeightsUnavailableError, match="exactly one"):
        resolve_model("vlmad-tiny-vit")
    with pytest.raises(WeightsUnavailableError, match="exactly one"):
        resolve_model("vlmad-tiny-vit", checkpoint=weights_file("vlmad-tiny-vit"), random_weights=True)


def test_offline_pretrained_fails_fast_and_names_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-vlmad-hf-home")  # no cached copy to fall back on
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_model("ViT-B-16-plus-240", pretrained="laion400m_e31")
    assert time.monotonic() - start < 5.0
    assert "--checkpoint" in err.value.hint
    assert "cannot reach" in err.value.message or "offline" in err.value.message


def test_random_weights_are_seeded():
    a, sa = resolve_model("vlmad-tiny-vit", random_weights=True, seed=1)
    b, _ = resolve_model("vlmad-tiny-vit", random_weights=True, seed=1)
    assert torch.equal(a.visual.proj, b.visual.proj) and sa.is_random


def test_force_image_size_interpolates_positions(weights_file):
    bb = ClipBackbone.load("vlmad-tiny-vit", checkpoint=str(weights_file("vlmad-tiny-vit")), image_size=96)
    assert bb.image_size == 96 and bb.grid_size == (12, 12)
    assert bb.visual.positional_embedding.shape == (145, 64)
