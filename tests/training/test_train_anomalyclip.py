"""Training AnomalyCLIP's prompts: the glocal loss against a step-by-step re-implementation of the reference's
formula (zqhang/AnomalyCLIP train.py + loss.py: per-stage two-channel maps, focal, two dice terms, x4, image
cross-entropy), a few epochs reduce the loss while only the prompts change, the per-epoch artefact loads into the
detector and `vlmad detect`, the leakage guard, and the CLI in both regimes."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from vlmad.backbones import ClipBackbone
from vlmad.data import load_dataset
from vlmad.methods.anomalyclip import AnomalyClip
from vlmad.training import DataLeakageError, PromptTrainConfig, glocal_loss, train_anomalyclip
from vlmad.training.anomalyclip import stage_maps
from vlmad.training.prompts_io import load_prompts
from vlmad_runtime.errors import VlmadError

ARCH = "vlmad-tiny-vit-4l"


@pytest.fixture(scope="module")
def bb(weights_file):
    return ClipBackbone.load(ARCH, checkpoint=str(weights_file(ARCH)))


def small(**kw) -> PromptTrainConfig:
    """A tiny prompt shape (the 4-layer text tower) and a held-out quarter."""
    for key, value in (("n_ctx", 4), ("depth", 3), ("t_n_ctx", 2), ("seed", 0), ("val_fraction", 0.25)):
        kw.setdefault(key, value)
    return PromptTrainConfig(**kw)


# ------------------------------------------------------------------------------- the reference's formula, by hand
def reference_focal(logit, target, gamma=2, smooth=1e-5):
    """loss.py FocalLoss (apply_nonlin None, alpha None) step by step on (N, C, H, W) probabilities."""
    n_class = logit.shape[1]
    logit = logit.view(logit.size(0), n_class, -1).permute(0, 2, 1).contiguous().view(-1, n_class)
    target = target.reshape(-1, 1)
    alpha = torch.ones(n_class, 1)
    idx = target.long()
    one_hot = torch.zeros(target.size(0), n_class).scatter_(1, idx, 1)
    one_hot = torch.clamp(one_hot, smooth / (n_class - 1), 1.0 - smooth)
    pt = (one_hot * logit).sum(1) + smooth
    alpha = torch.squeeze(alpha[idx])
    return (-1 * alpha * torch.pow(1 - pt, gamma) * pt.log()).mean()


def reference_dice(inp, targets):
    n = targets.size()[0]
    i, t = inp.reshape(n, -1), targets.reshape(n, -1)
    eff = (2 * (i * t).sum(1) + 1) / (i.sum(1) + t.sum(1) + 1)
    return 1 - eff.sum() / n


def reference_similarity_map(patch_feature, text_features, size):
    """model_load.compute_similarity + get_similarity_map: softmax of the (token, class) cosine / 0.07, CLS
    dropped, both channels upsampled bilinearly (align_corners unset) -> (B, 2, S, S)."""
    feats = patch_feature.unsqueeze(2) * text_features.reshape(1, 1, 2, -1)
    sm = (feats.sum(-1) / 0.07).softmax(-1)[:, 1:, :]
    side = int(sm.shape[1] ** 0.5)
    sm = sm.reshape(sm.shape[0], side, side, -1).permute(0, 3, 1, 2)
    return F.interpolate(sm, (size, size), mode="bilinear")


def reference_glocal(patch_features, image_features, text_features, gt, label, size, lam=4):
    """train.py's loop body: image cross-entropy + lam * sum over stages of focal + dice(1) + dice(0, 1 - gt)."""
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    logits = image_features @ text_features.T / 0.07
    image_loss = -(logits.log_softmax(-1)[torch.arange(len(label)), label]).mean()
    loss = 0
    for pf in patch_features:
        sim = reference_similarity_map(pf / pf.norm(dim=-1, keepdim=True), text_features, size)
        loss += reference_focal(sim, gt)
        loss += reference_dice(sim[:, 1, :, :], gt)
        loss += reference_dice(sim[:, 0, :, :], 1 - gt)
    return lam * loss + image_loss, lam * loss, image_loss


@pytest.mark.parametrize("lam", [4.0, 1.0])
def test_glocal_loss_matches_the_reference_formula(lam):
    g = torch.Generator().manual_seed(0)
    b, grid, size, e = 3, 5, 23, 8
    patch = [torch.randn(b, 1 + grid * grid, e, generator=g) for _ in range(3)]
    glob = torch.randn(b, e, generator=g)
    text = F.normalize(torch.randn(2, e, generator=g), dim=-1)
    gt = (torch.rand(b, size, size, generator=g) > 0.7).float()
    gt[0] = 0.0  # a normal image
    label = torch.tensor([0, 1, 1])
    ref = reference_glocal(patch, glob, text, gt, label, size, lam)

    maps = stage_maps(patch, text, (grid, grid), size)
    logits = F.normalize(glob, dim=-1) @ text.T / 0.07
    ours = glocal_loss(maps, gt, logits, label, local_weight=lam)
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)
    assert float(ref[1]) > 1.0 and float(ref[2]) > 0.1  # both parts are non-trivial here
    # the maps are the reference's anomalous channel, and the normal channel is their complement
    sim = reference_similarity_map(F.normalize(patch[1], dim=-1), text, size)
    torch.testing.assert_close(maps[1], sim[:, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(1 - maps[1], sim[:, 0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------- training
def test_training_reduces_loss_changes_only_the_prompts_and_the_artefact_loads(
    dataset_root, bb, tmp_path, same_predictions
):
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    flags = [p.requires_grad for p in bb.model.parameters()]
    seen = []
    result = train_anomalyclip(
        load_dataset("mvtec", dataset_root), tmp_path / "run", backbone=bb, config=small(epochs=4), on_epoch=seen.append
    )
    hist = result.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4] and seen == hist
    assert hist[-1]["train_loss"] < 0.9 * hist[0]["train_loss"] and hist[-1]["val_loss"] < hist[0]["val_loss"]
    for h in hist:
        assert h["train_loss"] == pytest.approx(h["train_local_loss"] + h["train_image_loss"], rel=1e-5)
        assert 0 <= h["val_pixel_auroc"] <= 1 and 0 <= h["val_image_auroc"] <= 1
    assert hist[-1]["backbone_images"] == 18  # the frozen vision features are computed once

    # the backbone is untouched (weights, requires_grad flags, no gradients); the prompts moved from their init
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in bb.model.parameters()] == flags
    assert all(p.grad is None for p in bb.model.parameters())
    from vlmad.methods.prompt_learner import ObjectAgnosticPrompts

    init = ObjectAgnosticPrompts.seeded(result.prompts.ctx_normal.shape[1], 0, n_ctx=4, depth=3, t_n_ctx=2)
    for name, p in result.prompts.named_parameters():
        assert not torch.equal(p.detach().cpu(), getattr(init, name).detach()), name

    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == sorted(
        [f"epoch_{e:03d}.{x}" for e in range(1, 5) for x in ("safetensors", "json")] + ["train_log.json"]
    )
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert [h["train_loss"] for h in log["history"]] == [h["train_loss"] for h in hist]
    assert log["run"]["local_weight"] == 4.0 and log["run"]["stages"] == [1, 2, 3, 4] and log["run"]["dpam_start"] == 1

    loaded, meta = load_prompts(result.checkpoints[-1], bb)
    assert loaded.digest() == result.prompts.digest()
    train = meta["training"]
    assert train["data"]["split"] == "test" and train["data"]["categories"] == ["demo_object", "demo_texture"]
    assert (train["epoch"], train["lr"], train["betas"], train["batch_size"]) == (4, 1e-3, [0.5, 0.999], 8)
    assert train["metrics"]["val_pixel_auroc"] == hist[-1]["val_pixel_auroc"]

    # the file predicts what the in-memory prompts predict; the leakage guard refuses the training data
    same_predictions(bb, (AnomalyClip(bb, prompts=result.checkpoints[-1]), AnomalyClip(bb, prompts=result.prompts)))
    det = AnomalyClip(bb, prompts=result.checkpoints[-1])
    with pytest.raises(DataLeakageError, match="AnomalyCLIP prompts"):
        det.check_protocol("mvtec", str(dataset_root), "demo_object")
    assert det.check_protocol("visa", "/data/visa", "demo_object") == {}
    assert "not-zero-shot" in det.check_protocol("mvtec", str(dataset_root), "demo_texture", force=True)["leakage"]


def test_runs_are_deterministic_and_the_cache_changes_nothing(bb, deterministic_runs):
    a, b = deterministic_runs(train_anomalyclip, bb, small)
    assert a.prompts.digest() == b.prompts.digest()


def test_bad_inputs(dataset_root, bb, tmp_path):
    reader = load_dataset("mvtec", dataset_root)
    with pytest.raises(VlmadError, match="regime"):
        train_anomalyclip(reader, tmp_path / "x", backbone=bb, regime="few-shot", config=small(epochs=1))
    for bad in ({"epochs": 0}, {"local_weight": -1.0}, {"val_fraction": 1.0}, {"dpam_start": 0}):
        with pytest.raises(VlmadError):
            train_anomalyclip(reader, tmp_path / "y", backbone=bb, config=small(**bad))
    with pytest.raises(VlmadError):
        train_anomalyclip(reader, tmp_path / "z", backbone=bb, config=small(epochs=1, stages=(7,)))


# --------------------------------------------------------------------------------------------------- the CLI
def _invoke(args):
    from typer.testing import CliRunner

    import vlmad.cli.commands  # noqa: F401  (registers `vlmad train` and `vlmad detect`)
    from vlmad.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


@pytest.mark.parametrize("regime", ["cross-dataset", "synthetic"])
def test_cli_train_then_detect(regime, dataset_root, weights_file, tmp_path):
    ckpt = str(weights_file(ARCH))
    out = tmp_path / "prompts"
    args = ["train", "anomalyclip", str(dataset_root), "--out", str(out), "--categories", "demo_texture"]
    args += ["--model", ARCH, "--checkpoint", ckpt, "--epochs", "1", "--regime", regime, "--val-fraction", "0.3"]
    args += ["--n-ctx", "4", "--depth", "2", "--t-n-ctx", "2", "--local-weight", "1", "--stages", "2,4"]
    res = _invoke(args)
    assert "epoch   1" in res.output and "image AUROC" in res.output
    meta = load_prompts(out / "epoch_001.safetensors")[1]
    train = meta["training"]
    assert train["data"]["regime"] == regime and train["data"]["categories"] == ["demo_texture"]
    assert train["local_weight"] == 1.0 and train["stages"] == [2, 4] and meta["prompt_shape"]["depth"] == 2
    if regime == "synthetic":
        assert train["data"]["split"] == "train" and train["data"]["n_items"] == 8  # 4 normals + 4 pasted

    good = dataset_root / "demo_object" / "test" / "good"
    det_args = ["detect", str(good), "--method", "anomalyclip", "-c", "demo_object", "--out", str(tmp_path / "o")]
    _invoke([*det_args, "--artefact", str(out / "epoch_001.safetensors"), "--checkpoint", ckpt])
    with open(tmp_path / "o" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
