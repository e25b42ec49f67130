"""APRIL-GAN against straightforward implementations of docs/methods.md's equations, and the detector's contract.

The independent implementation below uses open_clip's own ``forward_intermediates`` / ``encode_text`` (not
vlmad's fast blocks), explicit per-image / per-stage loops, a two-channel softmax after upsampling and
sklearn's cosine similarity for the memory bank, as the reference code does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmad.backbones import ClipBackbone
from vlmad.methods.aprilgan import (
    AprilGan,
    AprilGanPrediction,
    ProjectionHeads,
    default_stages,
    ensemble_text,
    min_cosine_distance,
)
from vlmad.prompts import load_prompt_set
from vlmad.testing import random_images
from vlmad_runtime.errors import CheckpointMismatchError, NotReadyError, VlmadError

ARCH = "vlmad-tiny-vit-4l"


@pytest.fixture(scope="module")
def images(bb4):
    return bb4.preprocess_tensor(random_images(3, bb4.image_size, seed=3))


@pytest.fixture(scope="module")
def refs(bb4):
    return bb4.preprocess_tensor(random_images(2, bb4.image_size, seed=11))


# ---------------------------------------------------------------------------------------------- the oracle
def design_text(model, tokenizer, prompt_set, name):
    """Each prompt embedding L2-normalised, averaged per class, re-normalised -> (2, E)."""
    normal, anomalous = prompt_set.build(name)
    out = []
    with torch.no_grad():
        for prompts in (normal, anomalous):
            emb = model.encode_text(tokenizer(prompts)).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            out.append(mean / mean.norm())
    return torch.stack(out)


def design_predict(model, heads: ProjectionHeads, text, x, stages, bank=None):
    """docs/methods.md's APRIL-GAN equations, one image and one stage at a time."""
    v = model.visual
    size = x.shape[-1]
    scores, maps = [], []
    with torch.no_grad():
        for i in range(x.shape[0]):
            out = v.forward_intermediates(x[i : i + 1], indices=[s - 1 for s in stages], output_fmt="NLC")
            tokens = out["image_intermediates"]  # raw residual stream, CLS dropped, (1, P, W) per stage
            pooled = out["image_features"][0]
            g = int(round(tokens[0].shape[1] ** 0.5))
            amap = torch.zeros(size, size)
            for k, tok in enumerate(tokens):
                lin = heads.heads[k]
                z = tok[0] @ lin.weight.T + lin.bias
                z = z / z.norm(dim=-1, keepdim=True)
                logits = 100.0 * z @ text.T  # (P, 2)
                up = F.interpolate(logits.T.reshape(1, 2, g, g), size=(size, size), mode="bilinear", align_corners=True)
                amap += torch.softmax(up, dim=1)[0, 1]
            cls = torch.softmax(100.0 * (pooled / pooled.norm()) @ text.T, dim=-1)[1]
            score = cls
            if bank is not None:
                from sklearn.metrics.pairwise import cosine_similarity

                few = torch.zeros(size, size)
                for k, tok in enumerate(tokens):
                    cos = cosine_similarity(bank[k].numpy(), tok[0].numpy())  # (K*P, P)
                    dist = torch.from_numpy(np.min(1 - cos, 0)).float().reshape(1, 1, g, g)
                    few += F.interpolate(dist, size=(size, size), mode="bilinear", align_corners=True)[0, 0]
                amap = amap + few
                score = 0.5 * (cls + amap.max())
            scores.append(float(score))
            maps.append(amap)
    return torch.tensor(scores), torch.stack(maps)


def design_bank(model, refs, stages):
    per_stage = [[] for _ in stages]
    with torch.no_grad():
        for i in range(refs.shape[0]):
            out = model.visual.forward_intermediates(refs[i : i + 1], indices=[s - 1 for s in stages], output_fmt="NLC")
            for k, tok in enumerate(out["image_intermediates"]):
                per_stage[k].append(tok[0])
    return [torch.cat(p) for p in per_stage]


# ---------------------------------------------------------------------------------------------- tests
def test_default_stages_are_evenly_spaced():
    assert default_stages(24) == (6, 12, 18, 24)
    assert default_stages(12) == (3, 6, 9, 12)
    assert default_stages(4) == (1, 2, 3, 4)
    assert default_stages(2) == (1, 2)
    assert default_stages(1) == (1,)


def test_ensemble_text_formula():
    torch.manual_seed(0)
    emb = torch.randn(12, 16) * torch.rand(12, 1) * 5
    got = ensemble_text(emb, 5)
    for c, rows in enumerate((emb[:5], emb[5:])):
        mean = torch.stack([r / r.norm() for r in rows]).mean(0)
        torch.testing.assert_close(got[c], mean / mean.norm(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("stages", [None, (2, 4)])
def test_zero_shot_matches_design_equations(bb4, images, stages):
    det = AprilGan(bb4, stages=stages, allow_untrained=True, head_seed=5)
    det.setup("metal_nut")
    pred = det.predict(images)
    used = det.stages
    assert used == (stages or (1, 2, 3, 4))
    text = design_text(bb4.model, bb4.tokenizer, load_prompt_set("aprilgan"), "metal_nut")  # raw: the reference default
    torch.testing.assert_close(det.text_embeddings.cpu(), text, rtol=0, atol=1e-6)
    scores, maps = design_predict(bb4.model, det.heads.cpu(), text, images, used)
    assert pred.anomaly_maps.shape == (3, bb4.image_size, bb4.image_size)
    assert pred.image_scores.shape == (3,)
    assert (pred.anomaly_maps.amax() - pred.anomaly_maps.amin()) > 1e-3  # not a constant comparison
    assert float((pred.anomaly_maps - maps).abs().max()) <= 1e-5
    assert float((pred.image_scores - scores).abs().max()) <= 1e-5
    assert torch.equal(pred.cls_scores, pred.image_scores)  # zero-shot: the CLS probability alone


def test_few_shot_matches_brute_force(bb4, images, refs):
    det = AprilGan(bb4, allow_untrained=True, head_seed=1)
    det.setup("bottle")
    det.fit(refs)
    assert det.shots == 2 and det.info().shots == 2
    pred = det.predict(images)
    text = design_text(bb4.model, bb4.tokenizer, load_prompt_set("aprilgan"), "bottle")
    bank = design_bank(bb4.model, refs, det.stages)
    assert [b.shape for b in det._banks] == [b.shape for b in bank]
    scores, maps = design_predict(bb4.model, det.heads.cpu(), text, images, det.stages, bank)
    assert float((pred.anomaly_maps - maps).abs().max()) <= 1e-5
    assert float((pred.image_scores - scores).abs().max()) <= 1e-5
    torch.testing.assert_close(pred.map_max, maps.flatten(1).amax(1), rtol=0, atol=1e-5)
    # a reference image scored against its own bank has zero few-shot distance everywhere
    self_pred = det.predict(refs)
    zero = AprilGan(bb4, allow_untrained=True, head_seed=1)
    zero.setup("bottle")
    torch.testing.assert_close(self_pred.anomaly_maps, zero.predict(refs).anomaly_maps, rtol=0, atol=1e-5)
    det.reset_references()
    assert det.shots == 0
    torch.testing.assert_close(det.predict(images).image_scores, pred.cls_scores)


def test_min_cosine_distance_chunking_matches_brute_force():
    torch.manual_seed(2)
    q, bank = torch.randn(3, 10, 6), torch.randn(23, 6)
    from sklearn.metrics.pairwise import cosine_similarity

    expect = np.stack([np.min(1 - cosine_similarity(bank.numpy(), q[b].numpy()), 0) for b in range(3)])
    for max_elems in (1, 30, 31, 1000, 1 << 26):
        got = min_cosine_distance(q, bank, max_elems=max_elems)
        np.testing.assert_allclose(got.numpy(), expect, rtol=0, atol=1e-6)


def test_transductive_normalisation_is_explicit(bb4, images, refs):
    det = AprilGan(bb4, allow_untrained=True)
    det.setup("bottle")
    det.fit(refs)
    preds = [det.predict(images[:2]), det.predict(images[2:])]
    with pytest.raises(VlmadError, match="transductive=True"):
        det.normalize_scores_transductive(preds)
    assert det.info().transductive is False

    tdet = AprilGan(bb4, allow_untrained=True, transductive=True)
    tdet.setup("bottle")
    tdet.fit(refs)
    assert tdet.info().transductive is True
    preds = [tdet.predict(images[:2]), tdet.predict(images[2:])]
    out = tdet.normalize_scores_transductive(preds)
    cls = torch.cat([p.cls_scores for p in preds])
    mx = torch.cat([p.anomaly_maps for p in preds]).flatten(1).amax(1)
    expect = 0.5 * (cls + (mx - mx.min()) / (mx.max() - mx.min()))
    torch.testing.assert_close(out.image_scores, expect, rtol=0, atol=1e-6)
    # plain Predictions (e.g. re-assembled by a harness) give the same result from scores and maps
    from vlmad.methods.base import Prediction

    plain = [Prediction(p.image_scores, p.anomaly_maps) for p in preds]
    torch.testing.assert_close(tdet.normalize_scores_transductive(plain).image_scores, expect, rtol=0, atol=1e-5)
    # zero-shot: the reference's image score is the CLS probability, nothing to normalise
    tdet.reset_references()
    zp = tdet.predict(images)
    assert torch.equal(tdet.normalize_scores_transductive(zp).image_scores, zp.image_scores)


def test_untrained_heads_need_explicit_flag(bb4):
    with pytest.raises(NotReadyError) as err:
        AprilGan(bb4)
    assert "vlmad train aprilgan" in err.value.hint and "--heads" in err.value.hint
    det = AprilGan(bb4, allow_untrained=True, head_seed=3)
    info = det.info().as_dict()
    assert info["heads"] == "untrained(seed=3)" and info["heads_untrained"] is True
    assert info["method"] == "aprilgan" and info["stages"] == [1, 2, 3, 4]
    with pytest.raises(NotReadyError):
        det.predict(torch.zeros(1, 3, bb4.image_size, bb4.image_size))
    with pytest.raises(VlmadError):
        det.fit(torch.zeros(0, 3, bb4.image_size, bb4.image_size))
    with pytest.raises(VlmadError):
        AprilGan(bb4, allow_untrained=True, stages=(0, 5))
    with pytest.raises(VlmadError):
        AprilGan(bb4, allow_untrained=True, class_name_style="camel")


def test_heads_module_must_fit_backbone(bb4):
    with pytest.raises(VlmadError, match="heads map"):
        AprilGan(bb4, heads=ProjectionHeads(bb4.width, bb4.embed_dim, 2))  # 4 default stages
    det = AprilGan(bb4, heads=ProjectionHeads.seeded(bb4.width, bb4.embed_dim, 2, 0), stages=(1, 3))
    assert det.stages == (1, 3) and det.heads_id().startswith("in-memory@")


def test_class_name_styles(bb4):
    """The reference's raw folder names are the default; display names are a named option, recorded."""
    det = AprilGan(bb4, allow_untrained=True)
    assert det.prompt_class_name("metal_nut") == "metal_nut" and det.info().extra["class_name_style"] == "raw"
    display = AprilGan(bb4, allow_untrained=True, class_name_style="display")
    assert display.prompt_class_name("metal_nut") == "metal nut"
    assert display.info().extra["class_name_style"] == "display"


def test_seeded_heads_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    ProjectionHeads.seeded(8, 4, 2, seed=9)
    assert torch.equal(torch.rand(3), before)
    a, b = ProjectionHeads.seeded(8, 4, 2, 9), ProjectionHeads.seeded(8, 4, 2, 9)
    assert a.digest() == b.digest()


def test_registered_with_winclip_backbone_options():
    from vlmad import available_methods
    from vlmad.methods.registry import get_spec, split_backbone_kwargs

    assert "aprilgan" in available_methods()
    spec = get_spec("aprilgan")
    assert (spec.default_model, spec.default_pretrained) == ("ViT-L-14-336", "openai")
    assert dict(spec.backbone_defaults) == {"image_size": 518, "quick_gelu": False}
    bb, rest = split_backbone_kwargs("aprilgan", {"device": "cpu", "precision": "fp32", "allow_untrained": True})
    assert bb == {
        "model": "ViT-L-14-336",
        "pretrained": "openai",
        "image_size": 518,
        "quick_gelu": False,
        "device": "cpu",
        "precision": "fp32",
    }
    assert rest == {"allow_untrained": True}
    bb, _ = split_backbone_kwargs("aprilgan", {"model": "ViT-B-16", "pretrained": "openai"})
    assert "image_size" not in bb and "quick_gelu" not in bb
    bb, _ = split_backbone_kwargs("aprilgan", {"random_weights": True})
    assert bb["image_size"] == 518 and "pretrained" not in bb


def test_create_detector(weights_file):
    from vlmad import create_detector

    det = create_detector(
        "aprilgan",
        model=ARCH,
        checkpoint=str(weights_file(ARCH)),
        allow_untrained=True,
        device="cpu",
        precision="fp32",
        use_cache=False,
    )
    assert isinstance(det, AprilGan) and det.image_size == 56 and det.stages == (1, 2, 3, 4)
    det.setup("screw")
    pred = det.predict(det.backbone.preprocess_tensor(random_images(1, 56)))
    assert isinstance(pred, AprilGanPrediction) and pred.anomaly_maps.shape == (1, 56, 56)
    with pytest.raises(NotReadyError):
        create_detector("aprilgan", model=ARCH, checkpoint=str(weights_file(ARCH)))


def test_heads_file_drives_the_backbone(bb4, tmp_path, weights_file):
    from vlmad import create_detector
    from vlmad.training.heads_io import backbone_meta, save_heads

    heads = ProjectionHeads.seeded(bb4.width, bb4.embed_dim, 2, 4)
    path = save_heads(
        heads, tmp_path / "h", {"backbone": backbone_meta(bb4), "stages": [2, 4], "prompt_set": "aprilgan"}
    )
    det = create_detector("aprilgan", heads=str(path), checkpoint=str(weights_file(ARCH)))
    assert det.backbone.arch == ARCH and det.stages == (2, 4) and not det.untrained
    assert det.heads_id().startswith("h.safetensors@")
    for a, b in zip(det.heads.state_dict().values(), heads.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(VlmadError, match="differ from the stages"):
        AprilGan(bb4, heads=path, stages=(1, 2))
    # the same architecture with other weights is refused unless the check is waived
    other = ClipBackbone.load(ARCH, checkpoint=str(weights_file(ARCH, seed=1)))
    with pytest.raises(CheckpointMismatchError, match="weights"):
        AprilGan(other, heads=path)
    AprilGan(other, heads=path, check_weights=False)


@pytest.mark.slow
def test_real_vit_l14_336_at_518_random_init():
    """The real architecture at APRIL-GAN's resolution (random weights): stages, dims, shapes, a forward."""
    from vlmad import create_detector
    from vlmad.prompts import PromptSet

    one = PromptSet("one", ("{}",), ("damaged {}",), ("a photo of a {}.",))
    det = create_detector("aprilgan", random_weights=True, allow_untrained=True, prompt_set=one, use_cache=False)
    bb = det.backbone
    assert bb.arch == "ViT-L-14-336" and bb.image_size == 518 and bb.grid_size == (37, 37)
    assert det.stages == (6, 12, 18, 24) and bb.num_layers == 24
    assert [(h.in_features, h.out_features) for h in det.heads.heads] == [(1024, 768)] * 4
    assert sum(p.numel() for p in det.heads.parameters()) == 4 * (1024 * 768 + 768)
    from vlmad.methods.aprilgan import backbone_activation

    # the reference's default: no QuickGELU in either tower (recorded in the protocol)
    assert backbone_activation(bb) == "GELU" and det.info().extra["activation"] == "GELU"
    assert type(bb.model.transformer.resblocks[0].mlp[1]).__name__ == "GELU"
    det.setup("bottle")
    x = bb.preprocess_tensor(random_images(1, 518))
    pred = det.predict(x)
    assert pred.anomaly_maps.shape == (1, 518, 518) and pred.image_scores.shape == (1,)
    assert torch.isfinite(pred.anomaly_maps).all() and 0 <= float(pred.image_scores[0]) <= 1
    assert float(pred.anomaly_maps.max()) <= 4.0 + 1e-5  # sum of four probabilities
