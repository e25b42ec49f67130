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
    with pytest.raises(WeightsUnavailableError, match="cannot read checkpoint"):
        resolve_model("vlmad-tiny-vit", checkpoint=evil)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(WeightsUnavailableError, match="is a text file, not model weights"):
        resolve_model("vlmad-tiny-vit", checkpoint=garbage)


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


# --- files that are not float weights (issue 15 item 9, issue 16 "a text file as --checkpoint") ---


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_text_file_as_checkpoint_is_named_as_text(tmp_path, suffix):
    """Before: `cannot read checkpoint ...: 101` (a KeyError from the pickle reader, whatever the file said)."""
    path = tmp_path / f"weights{suffix}"
    path.write_text("hello, these are not weights\nsecond line\n")
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_model("vlmad-tiny-vit", checkpoint=path)
    assert "is a text file" in str(err.value) and "hello, these are not weights" in str(err.value)
    assert ": 101" not in str(err.value) and "fetch-weights" in err.value.hint


def test_lfs_pointer_empty_and_binary_junk_are_named(tmp_path):
    lfs = tmp_path / "ViT.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00ff\nsize 600000000\n")
    with pytest.raises(WeightsUnavailableError, match="Git LFS pointer") as err:
        resolve_model("vlmad-tiny-vit", checkpoint=lfs)
    assert "git lfs pull" in err.value.hint
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsUnavailableError, match="is empty"):
        resolve_model("vlmad-tiny-vit", checkpoint=empty)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(WeightsUnavailableError, match="neither a safetensors file nor a torch checkpoint"):
        resolve_model("vlmad-tiny-vit", checkpoint=junk)
    with pytest.raises(WeightsUnavailableError, match="is a directory"):
        resolve_model("vlmad-tiny-vit", checkpoint=tmp_path)


def test_format_is_read_from_the_content_not_the_name(tmp_path, weights_file):
    """A safetensors file named .pt (and a torch file named .safetensors) load as what they are."""
    from safetensors.torch import load_file

    sd = load_file(str(weights_file("vlmad-tiny-vit")))
    st_as_pt = tmp_path / "really_safetensors.pt"
    st_as_pt.write_bytes(weights_file("vlmad-tiny-vit").read_bytes())
    pt_as_st = tmp_path / "really_torch.safetensors"
    torch.save(sd, pt_as_st)
    for path in (st_as_pt, pt_as_st):
        model, _ = resolve_model("vlmad-tiny-vit", checkpoint=path)
        assert torch.equal(model.visual.proj, sd["visual.proj"])


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_tensors_are_a_clear_error_naming_tensor_and_dtype(tmp_path, weights_file, dtype):
    """Before: a raw RuntimeError from torch's copy ("Only Tensors of floating point ... can require gradients")."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(weights_file("vlmad-tiny-vit")))
    sd["visual.conv1.weight"] = (sd["visual.conv1.weight"] * 100).to(dtype)
    path = tmp_path / "quantised.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointMismatchError) as err:
        resolve_model("vlmad-tiny-vit", checkpoint=path)
    name = str(dtype).replace("torch.", "")
    assert "'visual.conv1.weight' has dtype " + name in str(err.value) and "float" in err.value.hint


def test_half_precision_checkpoints_still_load(tmp_path, weights_file):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(weights_file("vlmad-tiny-vit")))
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(path))
    model, _ = resolve_model("vlmad-tiny-vit", checkpoint=path)
    assert model.visual.proj.dtype == torch.float32
    torch.testing.assert_close(model.visual.proj, sd["visual.proj"].half().float())
