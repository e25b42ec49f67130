"""AnomalyCLIP against straightforward re-implementations of the reference's per-image formulas (docs/methods.md):
DPAM attention against a per-token loop, the DPAM forward and the deep prompt insertion against step-by-step
forwards through open_clip's own blocks, map and score against the reference's two-channel formulas; the prompts
artefact (round trip, tamper refusal, reference import) and `vlmad detect` with the method."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from vlmad.backbones import ClipBackbone
from vlmad.methods.anomalyclip import (
    AnomalyClip,
    dpam_attention,
    dpam_forward,
    encode_learned_text,
    prompt_texts,
)
from vlmad.methods.prompt_learner import ObjectAgnosticPrompts
from vlmad.testing import random_images
from vlmad_runtime.errors import CheckpointMismatchError, NotReadyError, VlmadError

ARCH = "vlmad-tiny-vit-4l"


@pytest.fixture(scope="module")
def images(bb4):
    return bb4.preprocess_tensor(random_images(2, bb4.image_size, seed=3))


def small_prompts(bb, seed=1, n_ctx=4, depth=2, t_n_ctx=2):
    width = bb.model.token_embedding.weight.shape[1]
    return ObjectAgnosticPrompts.seeded(width, seed, n_ctx=n_ctx, depth=depth, t_n_ctx=t_n_ctx)


# --------------------------------------------------------------------------------------------- DPAM attention
def brute_force_vv(blk, h):
    """Per image, head and query token: softmax over keys of v_i . v_j / sqrt(d), weighted sum of v_j."""
    attn = blk.attn
    b, n, w = h.shape
    nh, d = attn.num_heads, w // attn.num_heads
    qkv = h @ attn.in_proj_weight.T + attn.in_proj_bias
    v = qkv[..., 2 * w :]
    out = torch.zeros(b, n, w)
    for bi in range(b):
        for head in range(nh):
            vh = v[bi, :, head * d : (head + 1) * d]
            for i in range(n):
                logits = torch.tensor([float(vh[i] @ vh[j]) / math.sqrt(d) for j in range(n)])
                weights = torch.exp(logits - logits.max())
                weights = weights / weights.sum()
                out[bi, i, head * d : (head + 1) * d] = (weights[:, None] * vh).sum(0)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def test_dpam_attention_matches_per_token_loop_and_torch_attention(bb4):
    blk = bb4.visual.transformer.resblocks[2]
    h = torch.randn(2, 9, bb4.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vv, ori = dpam_attention(blk, h)
        torch.testing.assert_close(vv, brute_force_vv(blk, h), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ori, blk.attn(h, h, h, need_weights=False)[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(vv, ori, atol=1e-3)  # the V-V path is a different attention


def reference_dual_forward(bb, images, stages, start):
    """The reference's ResidualAttentionBlock list protocol, step by step, plain blocks through open_clip."""
    v = bb.visual
    x = v.ln_pre(bb.embed_patches(images).float())
    out = {}
    for i, blk in enumerate(v.transformer.resblocks, start=1):
        if i < start:
            x = blk(x)
        elif not isinstance(x, list):  # start of the dual path
            vv, ori = dpam_attention(blk, blk.ln_1(x))
            x_ori = x + ori
            x_ori = x_ori + blk.mlp(blk.ln_2(x_ori))
            x = [x + vv, x_ori]
        else:
            x_vv, x_ori = x
            vv, ori = dpam_attention(blk, blk.ln_1(x_ori))
            x_ori = x_ori + ori
            x_ori = x_ori + blk.mlp(blk.ln_2(x_ori))
            x = [x_vv + vv, x_ori]
        if i in stages:
            out[i] = x[0] if isinstance(x, list) else x
    return out, (x[1] if isinstance(x, list) else x)


@pytest.mark.parametrize("start", [1, 2, 5])
def test_dpam_forward_matches_step_by_step(bb4, images, start):
    with torch.no_grad():
        got, final = dpam_forward(bb4, images, (1, 2, 3, 4), start)
        want, want_final = reference_dual_forward(bb4, images, (1, 2, 3, 4), start)
    for s in (1, 2, 3, 4):
        torch.testing.assert_close(got[s], want[s], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final, want_final, rtol=1e-4, atol=1e-5)
    if start == 5:  # DPAM off: the plain forward of the backbone
        plain = bb4.encode_image(images, layers=(4,)).intermediates[4]
        torch.testing.assert_close(got[4], plain.float(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ deep prompt tokens
def stepwise_text(bb, prompts):
    """Sequence-first forward through open_clip's text blocks with the reference's replacement before block j."""
    m = bb.model
    tokens = bb.tokenize(prompt_texts(prompts.n_ctx))
    emb = m.token_embedding(tokens)
    n, t = prompts.n_ctx, prompts.t_n_ctx
    rows = []
    for c, ctx in enumerate((prompts.ctx_normal, prompts.ctx_anomalous)):
        rows.append(torch.cat([emb[c, :1], ctx, emb[c, 1 + n :]]))
    x = torch.stack(rows) + m.positional_embedding
    for j, blk in enumerate(m.transformer.resblocks):
        if j >= 1 and j - 1 < prompts.depth - 1:
            for c in range(2):
                x[c, 1 : 1 + t] = prompts.deep[j - 1]
        x = blk(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    eot = tokens.argmax(dim=-1)
    return F.normalize(torch.stack([x[c, eot[c]] for c in range(2)]) @ m.text_projection, dim=-1)


def test_deep_prompt_insertion_matches_stepwise_forward(bb4):
    prompts = small_prompts(bb4)
    with torch.no_grad():
        got = encode_learned_text(bb4, prompts)
        want = stepwise_text(bb4, prompts)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        shallow = small_prompts(bb4, depth=1)  # no deep tokens: the deep ones of `prompts` must matter
        shallow.ctx_normal.copy_(prompts.ctx_normal)
        shallow.ctx_anomalous.copy_(prompts.ctx_anomalous)
        assert not torch.allclose(encode_learned_text(bb4, shallow), got, atol=1e-4)


def test_context_of_the_placeholder_embeddings_is_plain_clip_text(bb4):
    """With depth 1 and the ``X`` token embeddings as context, the learned prompts are the plain CLIP text."""
    prompts = small_prompts(bb4, depth=1, t_n_ctx=0)
    tokens = bb4.tokenize(prompt_texts(prompts.n_ctx))
    with torch.no_grad():
        emb = bb4.model.token_embedding(tokens)
        prompts.ctx_normal.copy_(emb[0, 1 : 1 + prompts.n_ctx])
        prompts.ctx_anomalous.copy_(emb[1, 1 : 1 + prompts.n_ctx])
        got = encode_learned_text(bb4, prompts)
    want = F.normalize(bb4.encode_text(prompt_texts(prompts.n_ctx)), dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- map and score
def reference_map_and_score(bb, images, text, stages, start, sigma):
    """test.py's formulas: two-channel softmax at temperature 0.07, both channels upsampled, (p1 + 1 - p0) / 2,
    summed over stages, scipy Gaussian per image; score from the un-normalised [CLS] of the original path."""
    v = bb.visual
    dense, final = reference_dual_forward(bb, images, stages, start)
    size = bb.image_size
    total = 0
    for s in stages:
        feats = v.ln_post(dense[s]) @ v.proj
        feats = feats / feats.norm(dim=-1, keepdim=True)
        sim = ((feats[:, :, None, :] * text[None, None]).sum(-1) / 0.07).softmax(-1)[:, 1:]
        side = int(sim.shape[1] ** 0.5)
        sim = sim.reshape(sim.shape[0], side, side, -1).permute(0, 3, 1, 2)
        sim = F.interpolate(sim, (size, size), mode="bilinear").permute(0, 2, 3, 1)
        total = total + (sim[..., 1] + 1 - sim[..., 0]) / 2.0
    maps = np.stack([gaussian_filter(m, sigma=sigma) for m in total.numpy()])
    glob = final[:, 0] @ v.proj
    glob = glob / glob.norm(dim=-1, keepdim=True)
    score = ((glob @ text.T) / 0.07).softmax(-1)[:, 1]
    return score, torch.from_numpy(maps)


@pytest.mark.parametrize("sigma", [4.0, 1.5])
def test_map_and_score_match_reference_formulas(bb4, images, sigma):
    det = AnomalyClip(bb4, prompts=small_prompts(bb4), sigma=sigma, dpam_start=2)
    det.setup("anything")
    pred = det.predict(images)
    with torch.no_grad():
        score, maps = reference_map_and_score(bb4, images, det.text_embeddings, det.stages, 2, sigma)
    torch.testing.assert_close(pred.image_scores, score.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred.anomaly_maps, maps.float(), rtol=1e-4, atol=1e-4)
    assert pred.anomaly_maps.shape == (2, bb4.image_size, bb4.image_size)


def test_global_ln_post_option_changes_only_the_score(bb4, images):
    a = AnomalyClip(bb4, prompts=small_prompts(bb4))
    b = AnomalyClip(bb4, prompts=small_prompts(bb4), global_ln_post=True)
    for d in (a, b):
        d.setup("x")
    pa, pb = a.predict(images), b.predict(images)
    torch.testing.assert_close(pa.anomaly_maps, pb.anomaly_maps)
    assert not torch.allclose(pa.image_scores, pb.image_scores)
    assert b.info().extra["global_ln_post"] is True


def test_untrained_needs_the_explicit_option(bb4):
    with pytest.raises(NotReadyError, match="learned prompts"):
        AnomalyClip(bb4)
    det = AnomalyClip(bb4, allow_untrained=True, prompt_seed=3)
    assert det.info().extra["prompts"] == "untrained(seed=3)"
    with pytest.raises(VlmadError, match="dpam_start"):
        AnomalyClip(bb4, allow_untrained=True, dpam_start=0)
    det.restrict_stages([2, 4])
    assert det.stages == (2, 4) and det.dpam_start == 1
    with pytest.raises(VlmadError, match="not one of"):
        det.restrict_stages([3])


# -------------------------------------------------------------------------------------------------- artefact
def test_prompts_artefact_round_trip_and_tamper_refusal(bb4, images, tmp_path, weights_file):
    from vlmad.training.heads_io import HeadsFileError
    from vlmad.training.prompts_io import load_prompts, save_prompts

    prompts = small_prompts(bb4, seed=5)
    path = save_prompts(prompts, tmp_path / "p", bb4, training={"data": {"kind": "visa", "categories": ["pcb1"]}})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert len(meta["sha256"]) == 64 and meta["prompt_shape"] == {"n_ctx": 4, "depth": 2, "t_n_ctx": 2}
    assert meta["backbone"]["weights_probe"]
    loaded, _ = load_prompts(path, bb4)
    assert loaded.digest() == prompts.digest()
    det = AnomalyClip(bb4, prompts=str(path))
    ref = AnomalyClip(bb4, prompts=prompts)
    for d in (det, ref):
        d.setup("x")
    torch.testing.assert_close(det.predict(images).anomaly_maps, ref.predict(images).anomaly_maps)
    assert det.info().extra["prompts"].startswith("p.safetensors@")
    with pytest.raises(VlmadError, match="AnomalyCLIP prompts were trained on visa.*not zero-shot"):
        det.check_protocol("visa", "/data/visa", "pcb1")
    assert det.check_protocol("mvtec", "/data/mvtec", "bottle") == {}
    # another backbone's weights are refused through the weights probe
    other = ClipBackbone.load(ARCH, checkpoint=str(weights_file(ARCH, seed=1)))
    with pytest.raises(CheckpointMismatchError, match="AnomalyCLIP prompts"):
        load_prompts(path, other)
    # another input size: the hint names the backbone to use and the command that trains prompts
    bigger = ClipBackbone.load(ARCH, checkpoint=str(weights_file(ARCH)), image_size=bb4.image_size + 16)
    with pytest.raises(CheckpointMismatchError, match="input size") as err:
        load_prompts(path, bigger)
    assert "vlmad train anomalyclip" in err.value.hint and "aprilgan" not in err.value.hint
    # a modified weights file no longer matches its sidecar
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(HeadsFileError, match="do not match their sidecar"):
        load_prompts(path, bb4)


def test_sidecar_without_sha256_is_refused(bb4, tmp_path):
    from vlmad.training.heads_io import HeadsFileError
    from vlmad.training.prompts_io import load_prompts, save_prompts

    path = save_prompts(small_prompts(bb4), tmp_path / "p", bb4)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    del meta["sha256"]
    side.write_text(json.dumps(meta))
    with pytest.raises(HeadsFileError, match="sha256"):
        load_prompts(path, bb4)


def test_import_of_the_reference_checkpoint_layout(bb4, tmp_path):
    """A state dict shaped like the official prompt learner's (ctx_pos (1,1,n,W), compound_prompts_text.i, the
    unused projections and token buffers) converts to the same prompts."""
    from vlmad.training.prompts_io import import_reference_prompts, load_prompts

    prompts = small_prompts(bb4, seed=7, depth=3)
    w = prompts.ctx_normal.shape[1]
    state = {
        "ctx_pos": prompts.ctx_normal.detach().reshape(1, 1, 4, w).clone(),
        "ctx_neg": prompts.ctx_anomalous.detach().reshape(1, 1, 4, w).clone(),
        "token_prefix_pos": torch.zeros(1, 1, 1, w),
        **{f"compound_prompts_text.{i}": prompts.deep[i].detach().clone() for i in range(2)},
        **{f"compound_prompt_projections.{i}.weight": torch.zeros(896, w) for i in range(2)},
    }
    torch.save({"prompt_learner": state}, tmp_path / "epoch_15.pth")
    out = import_reference_prompts(
        tmp_path / "epoch_15.pth", tmp_path / "imported", bb4, trained_on={"kind": "mvtec", "categories": ["bottle"]}
    )
    loaded, meta = load_prompts(out, bb4)
    assert loaded.digest() == prompts.digest()
    assert meta["training"]["source"].startswith("imported from epoch_15.pth")
    torch.save({"prompt_learner": {"ctx_pos": state["ctx_pos"]}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="prompt learner"):
        import_reference_prompts(tmp_path / "bad.pth", tmp_path / "bad", bb4)


# ------------------------------------------------------------------------------------------------- via the CLI
def test_detect_command_with_the_method(tmp_path, mvtec_root, weights_file):
    from typer.testing import CliRunner

    import vlmad.cli.commands  # noqa: F401
    from vlmad.cli import app

    good = mvtec_root / "demo_object" / "test" / "good"
    args = [
        "detect",
        str(good),
        "--method",
        "anomalyclip",
        "--class-name",
        "demo_object",
        "--out",
        str(tmp_path / "o"),
        "--model",
        "vlmad-tiny-vit",
        "--random-weights",
    ]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and isinstance(refused.exception, NotReadyError)
    assert "learned prompts" in str(refused.exception)
    res = CliRunner().invoke(app, [*args, "--allow-untrained"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    with open(tmp_path / "o" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def test_spec_rejects_a_typo_before_loading():
    from vlmad.methods.registry import get_spec

    spec = get_spec("anomalyclip")
    with pytest.raises(VlmadError, match="did you mean 'sigma'"):
        spec.check_options({"sigmaa": 2.0})
    assert spec.resolved_backbone({})["image_size"] == 518
    assert spec.artefact.kind == "prompts" and spec.needs_artefact({})


def test_published_numbers_need_the_reference_protocol():
    """The published AnomalyCLIP rows sit next to a vlmad column only with the reference's backbone (QuickGELU),
    learned prompts and the default map settings."""
    from vlmad.bench.published import find_entry, protocol_mismatch
    from vlmad.data.mvtec import MVTEC_CATEGORIES

    entry = find_entry("anomalyclip", "mvtec", 0)
    assert entry["metrics"]["image_auroc"] == 91.5 and entry["metrics"]["aupro_legacy200"] == 81.4
    info = {
        "method": "anomalyclip",
        "activation": "QuickGELU",
        "precision": "fp32",
        "prompts_untrained": False,
        "sigma": 4.0,
        "global_ln_post": False,
    }
    facts = {
        "random_weights": False,
        "weights": {"model": "ViT-L-14-336", "tag": "openai"},
        "image_size": 518,
        "info": info,
        "method_options": {"prompts": "visa.safetensors"},
        "transductive": False,
        "categories": list(MVTEC_CATEGORIES),
        "complete": True,
    }
    assert protocol_mismatch(facts, entry) is None
    assert "activation GELU" in protocol_mismatch({**facts, "info": {**info, "activation": "GELU"}}, entry)
    assert "sigma=0.0" in protocol_mismatch({**facts, "info": {**info, "sigma": 0.0}}, entry)
    assert "prompts_untrained" in protocol_mismatch({**facts, "info": {**info, "prompts_untrained": True}}, entry)


@pytest.mark.slow
def test_real_vit_l14_336_at_518_random_init():
    """The reference's architecture and resolution (random weights): QuickGELU, stages 6/12/18/24, DPAM from
    block 6, 37 x 37 grid, reference prompt shape, one forward."""
    from vlmad import create_detector
    from vlmad.methods.heads import backbone_activation

    det = create_detector("anomalyclip", random_weights=True, allow_untrained=True)
    bb = det.backbone
    assert bb.arch == "ViT-L-14-336" and bb.image_size == 518 and bb.grid_size == (37, 37)
    assert backbone_activation(bb) == "QuickGELU"
    assert det.stages == (6, 12, 18, 24) and det.dpam_start == 6
    p = det.prompts
    assert (p.n_ctx, p.depth, p.t_n_ctx, p.ctx_normal.shape[1]) == (12, 9, 4, 768)
    det.setup("bottle")
    pred = det.predict(bb.preprocess_tensor(random_images(1, 518, seed=0)))
    assert pred.anomaly_maps.shape == (1, 518, 518) and torch.isfinite(pred.anomaly_maps).all()
    assert 0.0 <= float(pred.image_scores[0]) <= 1.0


def test_detect_with_a_prompts_artefact_takes_its_backbone(bb4, tmp_path, mvtec_root, weights_file):
    """`--artefact FILE` without --model: the sidecar supplies the architecture and input size."""
    from typer.testing import CliRunner

    import vlmad.cli.commands  # noqa: F401
    from vlmad.cli import app
    from vlmad.methods.registry import get_spec
    from vlmad.training.prompts_io import save_prompts

    path = save_prompts(small_prompts(bb4, seed=2), tmp_path / "learned", bb4)
    ckpt = str(weights_file(ARCH))
    assert get_spec("anomalyclip").resolved_backbone({"prompts": str(path), "checkpoint": ckpt})["model"] == ARCH
    good = mvtec_root / "demo_object" / "test" / "good"
    args = [
        "detect",
        str(good),
        "--method",
        "anomalyclip",
        "-c",
        "demo_object",
        "--out",
        str(tmp_path / "o"),
        "--artefact",
        str(path),
        "--checkpoint",
        ckpt,
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    with open(tmp_path / "o" / "scores.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
