"""Training APRIL-GAN heads on generated datasets: the loss falls, checkpoints reload bit-exactly, runs are
deterministic, the frozen-feature cache changes nothing, both regimes and the CLI work."""

from __future__ import annotations

import json

import pytest
import torch

from vlmad.data import load_dataset
from vlmad.methods.aprilgan import AprilGan
from vlmad.training import DataLeakageError, TrainConfig, check_leakage, load_heads, train_aprilgan
from vlmad_runtime.errors import VlmadError


def quiet(**kw) -> TrainConfig:
    kw.setdefault("mosaic_rate", 0.0)
    kw.setdefault("val_fraction", 0.25)
    kw.setdefault("seed", 0)
    return TrainConfig(**kw)


def test_training_reduces_loss_and_checkpoints_reload_bit_exactly(
    dataset_root, tiny_backbone, tmp_path, same_predictions
):
    seen = []
    result = train_aprilgan(
        load_dataset("mvtec", dataset_root),
        tmp_path / "run",
        backbone=tiny_backbone,
        config=quiet(epochs=6),
        on_epoch=seen.append,
    )
    hist = result.history
    assert [h["epoch"] for h in hist] == list(range(1, 7)) and seen == hist
    assert hist[-1]["train_loss"] < 0.75 * hist[0]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert all(h["val_pixel_auroc"] is not None and 0 <= h["val_pixel_auroc"] <= 1 for h in hist)
    assert all(h["val_aupro"] is not None for h in hist)
    assert hist[0]["backbone_images"] == hist[-1]["backbone_images"] == 18  # frozen features computed once
    assert result.best_epoch in range(1, 7)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == sorted(
        [f"epoch_{e:03d}.{ext}" for e in range(1, 7) for ext in ("safetensors", "json")] + ["train_log.json"]
    )
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert len(log["history"]) == 6 and log["data"]["regime"] == "cross-dataset"

    state, meta = load_heads(result.checkpoints[-1])
    for k, v in result.heads.state_dict().items():
        assert torch.equal(state[k], v.cpu())
    train = meta["training"]
    assert train["data"] == result.data
    assert train["data"]["kind"] == "mvtec" and train["data"]["root_name"] == dataset_root.name
    assert train["data"]["categories"] == ["demo_object", "demo_texture"] and train["data"]["split"] == "test"
    assert (train["epoch"], train["epochs"], train["seed"], train["batch_size"]) == (6, 6, 0, 8)
    assert train["lr"] == 1e-3 and train["betas"] == [0.5, 0.999] and train["mosaic_rate"] == 0.0
    assert train["metrics"]["val_pixel_auroc"] == hist[-1]["val_pixel_auroc"]

    # the saved file predicts exactly what the in-memory heads predict
    from_file = AprilGan(tiny_backbone, heads=result.checkpoints[-1])
    same_predictions(tiny_backbone, (from_file, AprilGan(tiny_backbone, heads=result.heads)))
    assert from_file.info().extra["heads_epoch"] == 6

    # the guard knows what these heads saw
    with pytest.raises(DataLeakageError):
        check_leakage(from_file.heads_meta, "mvtec", "demo_object")
    assert check_leakage(from_file.heads_meta, "visa", "demo_object") is None


def test_runs_are_deterministic_and_the_cache_changes_nothing(tiny_backbone, deterministic_runs):
    a, b = deterministic_runs(train_aprilgan, tiny_backbone, quiet)
    for k, v in a.heads.state_dict().items():
        assert torch.equal(v, b.heads.state_dict()[k])


def test_synthetic_regime_with_mosaics(dataset_root, tiny_backbone, tmp_path):
    result = train_aprilgan(
        ("mvtec", dataset_root),
        tmp_path / "synth",
        backbone=tiny_backbone,
        regime="synthetic",
        categories=["demo_object"],
        config=quiet(epochs=2, mosaic_rate=0.5, synthetic_per_image=2, prompt_set="winclip"),
    )
    data = result.data
    assert data["regime"] == "synthetic" and data["split"] == "train" and data["categories"] == ["demo_object"]
    assert data["n_source_images"] == 4 and data["n_items"] == 12  # each normal image + 2 pasted variants
    meta = load_heads(result.checkpoints[-1])[1]
    assert meta["training"]["mosaic_rate"] == 0.5 and meta["training"]["synthetic_per_image"] == 2
    # mosaics are new images every epoch: the backbone runs on them, cached items are not recomputed
    assert result.history[-1]["backbone_images"] > data["n_items"]
    with pytest.raises(DataLeakageError, match="normal train images"):
        check_leakage(meta, "mvtec", "demo_object")
    # heads trained with another prompt set carry it along
    assert meta["prompt_set"] == "winclip" and "templates" in meta["prompt_set_definition"]
    assert AprilGan(tiny_backbone, heads=result.checkpoints[-1]).prompt_set.name == "winclip"


def test_mosaic_default_follows_the_reference(dataset_root, tiny_backbone, tmp_path):
    from vlmad.training.aprilgan import resolve_mosaic_rate

    assert resolve_mosaic_rate(None, "cross-dataset", "mvtec") == 0.2
    assert resolve_mosaic_rate(None, "cross-dataset", "visa") == 0.0
    assert resolve_mosaic_rate(None, "synthetic", "mvtec") == 0.0
    assert resolve_mosaic_rate(0.4, "cross-dataset", "visa") == 0.4


def test_bad_inputs(dataset_root, tiny_backbone, tmp_path):
    reader = load_dataset("mvtec", dataset_root)
    with pytest.raises(VlmadError, match="regime"):
        train_aprilgan(reader, tmp_path / "x", backbone=tiny_backbone, regime="few-shot", config=quiet(epochs=1))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(VlmadError, match="not empty"):
        train_aprilgan(reader, tmp_path / "full", backbone=tiny_backbone, config=quiet(epochs=1))
    with pytest.raises(VlmadError):
        train_aprilgan(reader, tmp_path / "y", backbone=tiny_backbone, config=quiet(epochs=0))
    with pytest.raises(VlmadError):
        train_aprilgan(reader, tmp_path / "z", backbone=tiny_backbone, config=quiet(epochs=1, stages=(3,)))


def test_cli_train_aprilgan(dataset_root, weights_file, tmp_path):
    from typer.testing import CliRunner

    import vlmad.cli.train_cmd  # noqa: F401  (registers `vlmad train`)
    from vlmad.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "aprilgan",
            str(dataset_root),
            "--out",
            str(out),
            "--kind",
            "mvtec",
            "--categories",
            "demo_texture",
            "--model",
            "vlmad-tiny-vit",
            "--checkpoint",
            str(weights_file("vlmad-tiny-vit")),
            "--epochs",
            "2",
            "--seed",
            "3",
            "--stages",
            "1,2",
            "--val-fraction",
            "0.3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "epoch   2" in res.output and (out / "epoch_002.safetensors").exists()
    meta = load_heads(out / "epoch_002.safetensors")[1]
    assert meta["stages"] == [1, 2] and meta["training"]["seed"] == 3
    assert meta["training"]["data"]["categories"] == ["demo_texture"]
    assert meta["training"]["mosaic_rate"] == 0.2  # reference default for MVTec-kind cross-dataset training
