"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic learned text prompts, deep text prompt tokens and the
DPAM vision path. Reference behaviour: zqhang/AnomalyCLIP (test.py, AnomalyCLIP_lib/AnomalyCLIP.py,
prompt_ensemble.py); every choice between paper and code is listed in docs/methods.md ("AnomalyCLIP").

Equations (``S`` = model input side, ``G`` = patch grid, ``L`` = vision blocks, stages e.g. 6/12/18/24):

* text: two prompts, ``[SOS] c_1..c_n object . [EOT]`` (normal) and ``[SOS] c'_1..c'_n damaged object . [EOT]``
  (anomalous), the ``c`` learned token embeddings (n = 12). In text blocks ``j = 1 .. depth-1`` (0-based, depth
  9) the hidden states at positions ``1 .. t`` (t = 4) are *replaced* by learned tokens ``d_j`` before the block
  runs. ``T = normalize(text_projection(ln_final(h)[EOT]))`` (2, E).
* DPAM: from block ``dpam_start`` (the reference: 6 of 24, i.e. its ``DPAM_layer=20`` replaces the last 19) a
  second, V-V path runs next to the original one. With ``h = ln_1(x_ori)`` and per head ``q, k, v`` of ``h``:
  ``x_ori <- x_ori + out(softmax(q k^T / sqrt(d)) v)``, then ``x_ori <- x_ori + mlp(ln_2(x_ori))``;
  ``x_vv <- x_vv + out(softmax(v v^T / sqrt(d)) v)`` (no MLP; ``x_vv`` starts as the block's input). Dense
  features are the V-V path's tokens after each stage (the original path's before ``dpam_start``).
* map: per stage ``z = normalize(ln_post(x_vv) @ proj)``, ``p = softmax(z @ T^T / 0.07)[anomalous]`` per patch
  (the reference's ``(p_anomalous + 1 - p_normal) / 2`` is the same number), reshaped to G x G, bilinearly
  upsampled to S x S (align_corners=False), **summed** over stages, then a Gaussian filter (sigma 4, scipy's
  ``gaussian_filter`` defaults) per image.
* image score: ``softmax(normalize(x_ori[CLS] @ proj) @ T^T / 0.07)[anomalous]`` — the reference projects the
  final [CLS] of the original path *without* ln_post (``global_ln_post=True`` applies it, as plain CLIP does).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmad.backbones.clip import ClipBackbone
from vlmad.backbones.fast import is_standard_block
from vlmad.methods.base import Detector, DetectorInfo, Images, Prediction
from vlmad.methods.heads import backbone_activation
from vlmad.methods.inputs import PIL_BICUBIC, to_model_input
from vlmad.methods.prompt_learner import ObjectAgnosticPrompts
from vlmad_runtime.errors import NotReadyError, VlmadError

#: the reference's defaults (test.py / train.py arguments)
SIGMA = 4.0
TEMPERATURE = 0.07
DEFAULT_IMAGE_SIZE = 518
#: the class word of the object-agnostic prompts and the anomalous state template
OBJECT_WORD = "object"
ANOMALOUS_TEMPLATE = "damaged {}"


# ------------------------------------------------------------------------------------------- learned prompts
def prompt_texts(n_ctx: int) -> list[str]:
    """The two prompt strings whose ``X`` placeholders are replaced by learned embeddings (normal, anomalous)."""
    prefix = " ".join(["X"] * n_ctx)
    return [f"{prefix} {OBJECT_WORD}.", f"{prefix} {ANOMALOUS_TEMPLATE.format(OBJECT_WORD)}."]


def _text_model(backbone: ClipBackbone) -> nn.Module:
    m = backbone.model
    if not hasattr(m, "token_embedding") or not all(is_standard_block(b) for b in m.transformer.resblocks):
        raise VlmadError(
            f"{backbone.arch} has no plain CLIP text tower to insert learned prompt tokens into",
            "AnomalyCLIP needs an open_clip CLIP model (e.g. ViT-L-14-336)",
        )
    return m


def text_block(blk: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One open_clip residual block on batch-first ``x`` (N, L, W) with an additive attention mask."""
    q, k, v = _heads_qkv(blk, blk.ln_1(x))
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits + mask[: x.shape[1], : x.shape[1]]
    x = x + blk.ls_1(_merge(blk, torch.softmax(logits, dim=-1) @ v))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def encode_learned_text(backbone: ClipBackbone, prompts: ObjectAgnosticPrompts) -> torch.Tensor:
    """(2, E) L2-normalised text embeddings (normal, anomalous) of the learned prompts with deep insertion."""
    m = _text_model(backbone)
    tokens = backbone.tokenize(prompt_texts(prompts.n_ctx)).to(backbone.device)
    emb = m.token_embedding(tokens).float()
    ctx = torch.stack([prompts.ctx_normal, prompts.ctx_anomalous]).to(emb)
    n, t = prompts.n_ctx, prompts.t_n_ctx
    x = torch.cat([emb[:, :1], ctx, emb[:, 1 + n :]], dim=1) + m.positional_embedding.float()
    mask = m.attn_mask.float() if getattr(m, "attn_mask", None) is not None else None
    deep = prompts.deep.to(x)
    for j, blk in enumerate(m.transformer.resblocks):
        if 1 <= j < prompts.depth:
            x = torch.cat([x[:, :1], deep[j - 1].expand(x.shape[0], -1, -1), x[:, 1 + t :]], dim=1)
        x = text_block(blk, x, mask)
    x = m.ln_final(x)[torch.arange(2, device=x.device), tokens.argmax(dim=-1)]
    proj = m.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj.float()
    return F.normalize(x, dim=-1)


# ------------------------------------------------------------------------------------------------ DPAM vision
def _heads_qkv(blk: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a block's attention on batch-first ``h`` (B, N, W), each (B, heads, N, W / heads)."""
    attn = blk.attn
    b, n, w = h.shape
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).reshape(b, n, 3, attn.num_heads, w // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    return q, k, v


def _merge(blk: nn.Module, y: torch.Tensor) -> torch.Tensor:
    b, _, n, _ = y.shape
    return blk.attn.out_proj(y.transpose(1, 2).reshape(b, n, -1))


def dpam_attention(blk: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(V-V attention output, original q-k attention output) of one block on ``h`` = ln_1(x), both projected."""
    q, k, v = _heads_qkv(blk, h)
    scale = 1.0 / math.sqrt(q.shape[-1])
    ori = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
    vv = torch.softmax((v @ v.transpose(-2, -1)) * scale, dim=-1) @ v
    return _merge(blk, vv), _merge(blk, ori)


def dpam_forward(
    backbone: ClipBackbone, images: torch.Tensor, stages: Sequence[int], dpam_start: int
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """(dense tokens after each stage (B, 1+P, W), final original-path tokens (B, 1+P, W)).

    Blocks before ``dpam_start`` run as usual; from it on the original path and the V-V path run side by side
    (module docstring). ``dpam_start > L`` switches DPAM off (dense tokens are then the plain residual stream).
    """
    return dpam_blocks(backbone.visual, backbone.embed_patches(images).float(), stages, dpam_start)


def dpam_blocks(
    visual: nn.Module, embedded: torch.Tensor, stages: Sequence[int], dpam_start: int
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """:func:`dpam_forward` from the embedded tokens (before ln_pre) on; plain tensor ops, so the exported graph
    (:mod:`vlmad.methods.anomalyclip_export`) traces this same code."""
    x = visual.ln_pre(embedded)
    x_vv: torch.Tensor | None = None
    out: dict[int, torch.Tensor] = {}
    wanted = {int(s) for s in stages}
    for i, blk in enumerate(visual.transformer.resblocks, start=1):
        if i < dpam_start:
            x = text_block(blk, x, None)
        else:
            vv, ori = dpam_attention(blk, blk.ln_1(x))
            x_vv = (x if x_vv is None else x_vv) + blk.ls_1(vv)
            x = x + blk.ls_1(ori)
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        if i in wanted:
            out[i] = x if x_vv is None else x_vv
    return out, x


# --------------------------------------------------------------------------------------------- map and score
def project_tokens(backbone: ClipBackbone, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post then the visual projection: (B, N, W) -> (B, N, E)."""
    return _project(backbone.visual, tokens)


def _project(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    v = visual
    x = v.ln_post(tokens)
    return x @ v.proj.float() if v.proj is not None else x


def stage_probability(projected: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Anomalous probability per token: softmax(normalize(z) @ T^T / temperature)[..., 1], (B, N, E) -> (B, N)."""
    return torch.softmax(F.normalize(projected, dim=-1) @ text.T / temperature, dim=-1)[..., 1]


def anomaly_map(stage_probs: Sequence[torch.Tensor], grid: tuple[int, int], size: int, sigma: float) -> torch.Tensor:
    """Sum over stages of the upsampled patch probabilities (CLS dropped), then a Gaussian filter: (B, S, S)."""
    total = None
    for p in stage_probs:
        g = p[:, 1:].reshape(p.shape[0], 1, grid[0], grid[1])
        up = F.interpolate(g, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        total = up if total is None else total + up
    if total is None:
        raise VlmadError("AnomalyCLIP needs at least one feature stage")
    return gaussian_smooth(total, sigma)


@functools.lru_cache(maxsize=16)
def gaussian_operands(sigma: float, side: int, truncate: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (2r+1,), padded indices (side+2r,)) of scipy.ndimage.gaussian_filter on one axis of length ``side``.

    scipy's kernel: ``exp(-x^2 / 2 sigma^2)`` normalised, radius ``int(truncate * sigma + 0.5)``; its default
    ``reflect`` border repeats the edge sample (``d c b a | a b c d``), extended periodically when the radius
    exceeds the side. Gathering rows/columns by these indices then correlating is exactly that filter."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / float(sigma)) ** 2)
    kernel /= kernel.sum()
    i = np.arange(-radius, side + radius) % (2 * side)
    return kernel.astype(np.float32), np.where(i < side, i, 2 * side - 1 - i).astype(np.int64)


def separable_filter(maps: torch.Tensor, kernel: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Correlate (B, S, S) maps with ``kernel`` along rows then columns, borders by gathering ``index`` (plain
    gather + conv ops: the exported graph runs the same code with the operands as constants)."""
    k = kernel.reshape(1, 1, -1, 1)
    x = torch.index_select(maps, 1, index).unsqueeze(1)
    x = F.conv2d(x, k)[:, 0]
    x = torch.index_select(x, 2, index).unsqueeze(1)
    return F.conv2d(x, k.reshape(1, 1, 1, -1))[:, 0]


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter per map (the reference's call: reflect border, truncate 4), computed in
    torch (fp32) so the exported graph contains it; sigma 0 = off. (B, S, S) square maps."""
    if sigma <= 0:
        return maps
    kernel, index = gaussian_operands(float(sigma), int(maps.shape[-1]))
    dev = maps.device
    return separable_filter(maps.float(), torch.from_numpy(kernel).to(dev), torch.from_numpy(index).to(dev))


def image_score(global_embedding: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """softmax(normalize(g) @ T^T / temperature)[anomalous]: (B, E) -> (B,)."""
    return torch.softmax(F.normalize(global_embedding, dim=-1) @ text.T / temperature, dim=-1)[:, 1]


def default_stages(num_layers: int) -> tuple[int, ...]:
    """The reference's 6/12/18/24 on 24 blocks, i.e. four evenly spaced blocks ending at the last one."""
    from vlmad.methods.aprilgan import default_stages as evenly_spaced

    return evenly_spaced(num_layers)


@dataclass(frozen=True)
class MapGeometry:
    """What turns the vision tower's tokens into a map and a score (the detector's settings)."""

    stages: tuple[int, ...]
    dpam_start: int
    grid: tuple[int, int]
    size: int
    sigma: float
    global_ln_post: bool


def score_and_map(
    visual: nn.Module, embedded: torch.Tensor, text: torch.Tensor, geo: MapGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scores (B,), maps (B, S, S)) from embedded tokens (before ln_pre) and the (2, E) text embeddings.

    The one implementation of the forward: the detector calls it eagerly, the export graph traces it."""
    dense, final = dpam_blocks(visual, embedded, geo.stages, geo.dpam_start)
    probs = [stage_probability(_project(visual, dense[s]), text) for s in geo.stages]
    cls = final[:, 0]
    if geo.global_ln_post:
        cls = visual.ln_post(cls)
    glob = cls @ visual.proj.float() if visual.proj is not None else cls
    return image_score(glob, text), anomaly_map(probs, geo.grid, geo.size, geo.sigma)


# ---------------------------------------------------------------------------------------------- the detector
class AnomalyClip(Detector):
    """AnomalyCLIP behind the Detector contract (zero-shot only: the learned prompts are object-agnostic, so
    ``setup(class_name)`` needs no class-specific text).

    ``prompts``: a prompts file (``.safetensors`` + ``.json`` sidecar, :mod:`vlmad.training.prompts_io`) or an
    :class:`ObjectAgnosticPrompts` module. Without learned prompts the maps come from random context vectors, so
    construction fails with a hint unless ``allow_untrained=True`` (smoke tests, speed checks; ``prompt_seed``
    seeds them); ``info()`` records it. ``stages``: 1-based blocks of the dense features (default 6/12/18/24 on
    24 blocks); ``dpam_start``: first block with the V-V path (default the first stage, the reference's);
    ``sigma``: Gaussian smoothing of the map (0 = off); ``global_ln_post``: apply ln_post to the global [CLS]
    embedding (off in the reference). ``check_weights``: refuse prompts learned on other backbone weights.
    """

    name = "anomalyclip"
    #: the forward from embedded tokens on, handed to the export graph (which does not import this module)
    forward_tokens = staticmethod(score_and_map)
    #: the reference resizes with PIL bicubic and normalises with the OpenAI mean/std
    preprocessing = PIL_BICUBIC

    def __init__(
        self,
        backbone: ClipBackbone,
        prompts: str | Path | ObjectAgnosticPrompts | None = None,
        allow_untrained: bool = False,
        prompt_seed: int = 0,
        stages: Sequence[int] | None = None,
        dpam_start: int | None = None,
        sigma: float = SIGMA,
        global_ln_post: bool = False,
        check_weights: bool = True,
        batch_size: int = 4,
    ) -> None:
        from vlmad.methods.aprilgan import check_stages

        if backbone.precision != "fp32":
            raise VlmadError(
                f"AnomalyCLIP runs its own DPAM and prompt forwards in fp32; got precision {backbone.precision}",
                "load the backbone with precision fp32 (the default)",
            )
        self.backbone = backbone
        self.batch_size = max(1, int(batch_size))
        self.sigma, self.global_ln_post = float(sigma), bool(global_ln_post)
        self.prompts_meta: dict[str, Any] | None = None
        self.prompts_path: Path | None = None
        self.untrained = False
        self.prompt_seed = int(prompt_seed)
        module = self._load_prompts(prompts, allow_untrained, check_weights)
        if module.ctx_normal.shape[1] != _text_model(backbone).token_embedding.weight.shape[1]:
            raise VlmadError(
                f"prompts of width {module.ctx_normal.shape[1]} do not fit {backbone.arch}'s text tower",
                "use prompts learned on this backbone",
            )
        self.prompts = module.to(backbone.device).float().eval().requires_grad_(False)
        self.stages = check_stages(
            stages if stages is not None else default_stages(backbone.num_layers), backbone.num_layers, backbone.arch
        )
        self.dpam_start = int(dpam_start) if dpam_start is not None else self.stages[0]
        if self.dpam_start < 1:
            raise VlmadError(
                f"dpam_start={self.dpam_start} must be a block number >= 1",
                f"the default is the first stage ({self.stages[0]}); {backbone.num_layers + 1} = off",
            )
        self.text_embeddings: torch.Tensor | None = None
        self.class_name: str | None = None

    def _load_prompts(self, prompts: Any, allow_untrained: bool, check_weights: bool) -> ObjectAgnosticPrompts:
        if isinstance(prompts, ObjectAgnosticPrompts):
            return prompts
        if isinstance(prompts, (str, Path)):
            from vlmad.training.prompts_io import load_prompts

            module, meta = load_prompts(prompts, self.backbone, check_weights=check_weights)
            self.prompts_meta, self.prompts_path = meta, Path(prompts)
            return module
        if prompts is not None:
            raise VlmadError(
                f"cannot use {type(prompts).__name__} as AnomalyCLIP prompts",
                "pass a prompts file path or an ObjectAgnosticPrompts module",
            )
        if not allow_untrained:
            raise NotReadyError(
                "AnomalyCLIP needs learned prompts; without them its maps come from random context vectors",
                "pass prompts=PATH (CLI: --artefact PATH), e.g. the official checkpoint converted with "
                "vlmad.training.prompts_io.import_reference_prompts; allow_untrained=True runs with random "
                "prompts (smoke tests, speed checks)",
            )
        self.untrained = True
        width = int(_text_model(self.backbone).token_embedding.weight.shape[1])
        return ObjectAgnosticPrompts.seeded(width, self.prompt_seed)

    # ------------------------------------------------------------------ contract
    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    def prompts_id(self) -> str:
        if self.untrained:
            return f"untrained(seed={self.prompt_seed})"
        if self.prompts_meta is not None and self.prompts_path is not None:
            return f"{self.prompts_path.name}@{str(self.prompts_meta.get('sha256', ''))[:12]}"
        return f"in-memory@{self.prompts.digest()[:12]}"

    def info(self) -> DetectorInfo:
        training = (self.prompts_meta or {}).get("training") or {}
        return DetectorInfo(
            method="anomalyclip",
            model=self.backbone.arch,
            weights_id=self.backbone.source.weights_id,
            image_size=self.image_size,
            prompt_set="anomalyclip-learned",
            shots=0,
            random_weights=self.backbone.source.is_random,
            extra={
                "stages": list(self.stages),
                "dpam_start": self.dpam_start,
                "sigma": self.sigma,
                "global_ln_post": self.global_ln_post,
                "prompts": self.prompts_id(),
                "prompts_untrained": self.untrained,
                "prompts_training_data": training.get("data"),
                "precision": self.backbone.precision,
                "activation": backbone_activation(self.backbone),
                "preprocessing": self.preprocessing.name,
            },
        )

    def setup(self, class_name: str) -> None:
        """Object-agnostic: the text embeddings do not depend on the class (computed once)."""
        if self.text_embeddings is None:
            with torch.inference_mode():
                self.text_embeddings = encode_learned_text(self.backbone, self.prompts)
        self.class_name = class_name

    def restrict_stages(self, stages: Sequence[int]) -> None:
        """Sum the map over a subset of the stages only (the study's stage ablation); DPAM still starts at the
        block it started at, so the remaining stages see the same features."""
        wanted = tuple(int(s) for s in stages)
        bad = [s for s in wanted if s not in self.stages]
        if bad or not wanted:
            raise VlmadError(
                f"stage {bad[0] if bad else '(none)'} is not one of the detector's stages {list(self.stages)}",
                "pick a non-empty subset of the stages",
            )
        self.stages = wanted

    def check_protocol(
        self, dataset_kind: str, dataset_root: str, category: str, force: bool = False
    ) -> dict[str, Any]:
        """Refuse "zero-shot" rows on data the prompts were learned on (the APRIL-GAN heads' leakage guard)."""
        from vlmad.training.heads_io import check_leakage

        label = check_leakage(
            self.prompts_meta,
            dataset_kind,
            category,
            force=force,
            dataset_root=dataset_root,
            artefact="AnomalyCLIP prompts",
        )
        return {"leakage": label} if label else {}

    @torch.inference_mode()
    def predict(self, images: Images) -> Prediction:
        if self.text_embeddings is None:
            raise NotReadyError(
                "AnomalyCLIP predict() called before setup(class_name)", "call setup() with the object class name first"
            )
        batch = to_model_input(images, self.backbone, preprocessing=self.preprocessing)
        scores, maps = [], []
        for start in range(0, batch.shape[0], self.batch_size):
            s, m = self._predict_batch(batch[start : start + self.batch_size])
            scores.append(s)
            maps.append(m)
        return Prediction(torch.cat(scores).float().cpu(), torch.cat(maps).float().cpu())

    def _predict_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.backbone.embed_patches(batch).float()
        return self.forward_tokens(self.backbone.visual, embedded, self.text_embeddings, self.map_geometry())

    def map_geometry(self) -> MapGeometry:
        """The detector's map settings, as the torch path and the exported graph both use them."""
        bb = self.backbone
        return MapGeometry(
            tuple(self.stages), self.dpam_start, tuple(bb.grid_size), self.image_size, self.sigma, self.global_ln_post
        )

    def export_module(self) -> nn.Module:
        """This detector (learned text embeddings, DPAM, smoothing) as one traceable graph, for `vlmad export`."""
        if self.text_embeddings is None:
            raise NotReadyError("export before setup(class_name)", "call setup() with the object class name first")
        from vlmad.methods.anomalyclip_export import AnomalyClipGraph

        return AnomalyClipGraph(self).eval()
