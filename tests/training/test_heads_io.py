"""Heads artefacts: safetensors + sidecar round trip, integrity and compatibility errors, the leakage
guard."""

from __future__ import annotations

import json

import pytest
import torch

from vlmad.backbones import ClipBackbone
from vlmad.methods.aprilgan import AprilGan, ProjectionHeads
from vlmad.training import (
    DataLeakageError,
    HeadsFileError,
    backbone_meta,
    check_compatible,
    check_leakage,
    import_reference_heads,
    load_heads,
    read_heads_meta,
    save_heads,
)
from vlmad_runtime.errors import CheckpointMismatchError, VlmadError

ARCH = "vlmad-tiny-vit"


@pytest.fixture()
def saved(tiny_backbone, tmp_path):
    heads = ProjectionHeads.seeded(tiny_backbone.width, tiny_backbone.embed_dim, 2, seed=7)
    meta = {
        "backbone": backbone_meta(tiny_backbone),
        "stages": [1, 2],
        "prompt_set": "aprilgan",
        "training": {
            "data": {
                "regime": "cross-dataset",
                "kind": "visa",
                "root_name": "visa",
                "categories": ["candle", "pcb1"],
            },
            "epochs": 3,
            "seed": 111,
        },
    }
    return heads, save_heads(heads, tmp_path / "run" / "epoch_003", meta)


def test_round_trip_is_bit_exact_and_sidecar_is_complete(saved, tiny_backbone):
    heads, path = saved
    assert path.name == "epoch_003.safetensors" and path.with_suffix(".json").exists()
    state, meta = load_heads(path)
    for k, v in heads.state_dict().items():
        assert torch.equal(state[k], v)
    assert load_heads(path.with_suffix(".json"))[1] == meta  # either file names the pair
    assert meta["format"] == "vlmad-aprilgan-heads" and meta["format_version"] == 1
    bb = meta["backbone"]
    assert bb["arch"] == ARCH and bb["image_size"] == 64 and bb["width"] == 64 and bb["embed_dim"] == 32
    assert bb["weights_kind"] == "checkpoint" and bb["activation"] == "GELU" and len(bb["weights_probe"]) > 8
    assert meta["stages"] == [1, 2] and meta["prompt_set"] == "aprilgan"
    assert meta["training"]["data"]["kind"] == "visa" and meta["training"]["seed"] == 111
    assert meta["n_parameters"] == 2 * (64 * 32 + 32) and len(meta["sha256"]) == 64
    from vlmad import __version__

    assert meta["vlmad_version"] == __version__
    check_compatible(meta, tiny_backbone)  # no error
    det = AprilGan(tiny_backbone, heads=path)
    assert det.stages == (1, 2) and det.info().extra["heads_training_data"]["kind"] == "visa"


def test_corrupt_or_incomplete_files_are_clear_errors(saved, tmp_path):
    heads, path = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(HeadsFileError, match="do not match their sidecar"):
        load_heads(path)
    lonely = save_heads(heads, tmp_path / "lonely", {"backbone": {}, "stages": [1, 2]})
    lonely.with_suffix(".json").unlink()
    with pytest.raises(HeadsFileError) as err:
        load_heads(lonely)
    assert "NAME.json" in err.value.hint
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(HeadsFileError, match="not an APRIL-GAN heads sidecar"):
        read_heads_meta(tmp_path / "bad.safetensors")


def test_mismatching_backbones_are_refused_with_a_hint(saved, weights_file):
    _, path = saved
    ckpt = str(weights_file(ARCH))
    other_arch = ClipBackbone.load("vlmad-tiny-vit-4l", checkpoint=str(weights_file("vlmad-tiny-vit-4l")))
    with pytest.raises(CheckpointMismatchError) as err:
        AprilGan(other_arch, heads=path)
    assert "architecture" in str(err.value) and "(vlmad-tiny-vit at 64 px)" in err.value.hint
    assert "leave out --model" in err.value.hint and "--image-size" not in err.value.hint  # detect has no such flag
    bigger = ClipBackbone.load(ARCH, checkpoint=ckpt, image_size=72)
    with pytest.raises(CheckpointMismatchError, match="input size 64 vs 72"):
        AprilGan(bigger, heads=path)
    quick = ClipBackbone.load(ARCH, checkpoint=ckpt, quick_gelu=True)
    with pytest.raises(CheckpointMismatchError, match="GELU") as err:
        AprilGan(quick, heads=path)
    assert "no-quick-gelu" in err.value.hint
    random = ClipBackbone.load(ARCH, random_weights=True)
    with pytest.raises(CheckpointMismatchError, match="backbone weights"):
        AprilGan(random, heads=path)


def test_probe_accepts_the_same_weights_from_another_source(saved, tiny_backbone, tmp_path):
    """A checkpoint copy of the weights (other weights_id) is accepted: identity is by parameter values."""
    _, path = saved
    from vlmad.testing import save_state_dict

    copy = save_state_dict(tiny_backbone.model.state_dict(), tmp_path / "copy.safetensors")
    bb = ClipBackbone.load(ARCH, checkpoint=str(copy))
    assert bb.source.weights_id != tiny_backbone.source.weights_id
    AprilGan(bb, heads=path)


def test_leakage_guard(saved):
    _, path = saved
    meta = read_heads_meta(path)
    with pytest.raises(DataLeakageError) as err:
        check_leakage(meta, "visa", "candle")
    assert "not zero-shot" in str(err.value) and "force" in err.value.hint
    label = check_leakage(meta, "visa", "candle", force=True)
    assert label.startswith("not-zero-shot") and "visa/candle" in label
    assert check_leakage(path, "VisA", "pcb1", force=True) is not None  # a path works too, names case-insensitive
    assert check_leakage(meta, "visa", "pcb2") is None  # category not trained on
    assert check_leakage(meta, "mvtec", "candle") is None  # another dataset: the paper's protocol
    assert check_leakage(None, "mvtec", "bottle") is None  # untrained heads
    assert check_leakage({"training": {"data": None}}, "mvtec", "bottle") is None
    synth = {
        "training": {
            "data": {
                "regime": "synthetic",
                "kind": "mvtec",
                "root_name": "mvtec_ad",
                "categories": ["bottle"],
            }
        }
    }
    with pytest.raises(DataLeakageError, match="normal train images"):
        check_leakage(synth, "mvtec", "bottle")
    folder = {"training": {"data": {"kind": "folder", "root_name": "line_a", "categories": ["part"]}}}
    assert check_leakage(folder, "folder", "part", dataset_root="/data/line_b") is None
    with pytest.raises(VlmadError):
        check_leakage(folder, "folder", "part", dataset_root="/data/line_a")


def test_import_reference_checkpoint(tiny_backbone, tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(2):
        sd[f"fc.{i}.weight"] = torch.randn(32, 64, generator=g)
        sd[f"fc.{i}.bias"] = torch.randn(32, generator=g)
    torch.save({"trainable_linearlayer": sd}, tmp_path / "visa_pretrained.pth")
    path = import_reference_heads(
        tmp_path / "visa_pretrained.pth",
        tmp_path / "imported",
        tiny_backbone,
        stages=(1, 2),
        trained_on={"kind": "visa", "categories": ["candle"], "regime": "cross-dataset"},
    )
    state, meta = load_heads(path)
    for i in range(2):
        assert torch.equal(state[f"heads.{i}.weight"], sd[f"fc.{i}.weight"])
    assert meta["class_name_style"] == "raw" and "VAND-APRIL-GAN" in meta["training"]["source"]
    # detectors default to the heads' prompt conventions; explicit options win
    assert AprilGan(tiny_backbone, heads=path).class_name_style == "raw"
    assert AprilGan(tiny_backbone, heads=path, class_name_style="display").class_name_style == "display"
    assert AprilGan(tiny_backbone, heads=path).prompt_set.name == "aprilgan"
    with pytest.raises(DataLeakageError):
        check_leakage(meta, "visa", "candle")
    with pytest.raises(CheckpointMismatchError):
        import_reference_heads(tmp_path / "visa_pretrained.pth", tmp_path / "x", tiny_backbone, stages=(1, 2, 2))


# --- the sidecar is checked, not trusted (issue 15 item 8) ---


def _edit_sidecar(path, edit):
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))


@pytest.mark.parametrize("drop", ["remove", "empty", "null"])
def test_sha256_is_mandatory_so_a_modified_weights_file_never_loads(saved, drop):
    """The reproduction: without the hash the integrity check was skipped and a flipped byte loaded silently."""
    _, path = saved

    def strip(meta):
        if drop == "remove":
            del meta["sha256"]
        else:
            meta["sha256"] = "" if drop == "empty" else None

    _edit_sidecar(path, strip)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(HeadsFileError, match="sha256") as err:
        load_heads(path)
    assert err.value.hint


MALFORMED = {
    "format_version-string": (lambda m: m.update(format_version="x"), "'format_version' must be a positive integer"),
    "format_version-bool": (lambda m: m.update(format_version=True), "'format_version' must be"),
    "format_version-missing": (lambda m: m.pop("format_version"), "lacks 'format_version'"),
    "sha256-not-hex": (lambda m: m.update(sha256="z" * 64), "'sha256' must be the 64"),
    "stages-null": (lambda m: m.update(stages=None), "'stages' must be a non-empty list"),
    "stages-empty": (lambda m: m.update(stages=[]), "'stages' must be a non-empty list"),
    "stages-strings": (lambda m: m.update(stages=["6", "12"]), "'stages' must be"),
    "stages-zero": (lambda m: m.update(stages=[0, 1]), "'stages' must be"),
    "backbone-null": (lambda m: m.update(backbone=None), "'backbone' must be an object"),
    "backbone-missing": (lambda m: m.pop("backbone"), "lacks 'backbone'"),
    "arch-missing": (lambda m: m["backbone"].pop("arch"), "lacks backbone.'arch'"),
    "width-string": (lambda m: m["backbone"].update(width="64"), "backbone.'width' must be"),
    "image_size-negative": (lambda m: m["backbone"].update(image_size=-1), "backbone.'image_size' must be"),
    "probe-nan-string": (lambda m: m["backbone"].update(weights_probe=["nan"]), "backbone.'weights_probe'"),
    "activation-number": (lambda m: m["backbone"].update(activation=1), "backbone.'activation'"),
    "class_name_style": (lambda m: m.update(class_name_style="fancy"), "'class_name_style' must be"),
    "training-list": (lambda m: m.update(training=[1]), "'training' must be an object"),
    "categories-string": (lambda m: m["training"]["data"].update(categories="candle"), "'training.data'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_sidecar_fields_are_clear_errors(saved, tiny_backbone, case):
    _, path = saved
    edit, message = MALFORMED[case]
    _edit_sidecar(path, edit)
    with pytest.raises(HeadsFileError) as err:
        read_heads_meta(path)
    assert message in str(err.value) and str(path.with_suffix(".json")) in str(err.value)
    assert "sidecar written together with the weights" in err.value.hint
    with pytest.raises(HeadsFileError):  # what a user runs: a message, never a TypeError/KeyError traceback
        AprilGan(tiny_backbone, heads=path)


def test_newer_format_version_asks_for_an_upgrade(saved):
    _, path = saved
    _edit_sidecar(path, lambda m: m.update(format_version=99))
    with pytest.raises(HeadsFileError, match="newer than this vlmad supports") as err:
        read_heads_meta(path)
    assert err.value.hint == "upgrade vlmad"


def test_import_reference_heads_refuses_another_activation(weights_file, tmp_path):
    """The released heads were trained behind GELU (the reference builds the model without QuickGELU): a
    QuickGELU backbone is refused before anything is written, with the option that fixes it."""
    sd = {f"fc.{i}.{k}": torch.zeros(*shape) for i in range(2) for k, shape in (("weight", (32, 64)), ("bias", (32,)))}
    torch.save({"trainable_linearlayer": sd}, tmp_path / "ref.pth")
    quick = ClipBackbone.load(ARCH, checkpoint=str(weights_file(ARCH)), quick_gelu=True)
    with pytest.raises(CheckpointMismatchError, match="trained behind GELU .* uses QuickGELU") as err:
        import_reference_heads(tmp_path / "ref.pth", tmp_path / "out", quick, stages=(1, 2))
    assert "quick_gelu=False" in err.value.hint and "--no-quick-gelu" in err.value.hint
    assert not list(tmp_path.glob("out*"))
    # heads declared as trained behind QuickGELU go with a QuickGELU backbone, and the sidecar says so
    path = import_reference_heads(
        tmp_path / "ref.pth", tmp_path / "out", quick, stages=(1, 2), trained_activation="QuickGELU"
    )
    assert load_heads(path)[1]["backbone"]["activation"] == "QuickGELU"
