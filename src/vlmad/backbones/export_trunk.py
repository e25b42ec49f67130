"""The CLIP vision tower in plain tensor ops, for graph export.

vlmad's fast path (:mod:`vlmad.backbones.fast`) updates tensors in place and uses sparse matmuls, which graph
exporters either reject or trace into slow code. :class:`ExportTrunk` computes the same numbers with ops every
ONNX/OpenVINO runtime has (linear, matmul, softmax, layer norm, gather), sharing the backbone's parameters (no
copies), with the two savings WinCLIP's window sequences need: the first block's q/k/v projection computed once
per image and gathered per window, and a last block that computes the [CLS] row only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmad.backbones.clip import ClipBackbone
from vlmad.backbones.fast import is_standard_block
from vlmad_runtime.errors import VlmadError


class ExportTrunk(nn.Module):
    """Patch embedding, blocks and ln_post/proj of an open_clip ViT, batch-first, export-friendly."""

    def __init__(self, backbone: ClipBackbone) -> None:
        super().__init__()
        v = backbone.visual
        blocks = list(v.transformer.resblocks)
        if not all(is_standard_block(b) for b in blocks) or getattr(v, "attn_pool", None) is not None:
            raise VlmadError(
                f"{backbone.arch} does not have the standard pre-norm ViT block layout",
                "export supports open_clip VisionTransformer towers (e.g. ViT-B-16-plus-240)",
            )
        if backbone.precision != "fp32":
            raise VlmadError(
                "export starts from the fp32 model",
                "load the detector with --precision fp32 and "
                "choose the bundle precision with `vlmad export --precision`",
            )
        self.visual = v
        self.blocks = nn.ModuleList(blocks)
        self.heads = blocks[0].attn.num_heads
        self.width = backbone.width

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) -> tokens after patch + positional embedding, before ln_pre (B, 1+P, W)."""
        v = self.visual
        x = v.conv1(images).flatten(2).transpose(1, 2)
        cls_tok = v.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        return torch.cat([cls_tok, x], dim=1) + v.positional_embedding

    def qkv(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """ln_1 + fused q/k/v projection of block ``index``: (..., W) -> (..., 3W)."""
        blk = self.blocks[index]
        return F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.reshape(n, length, self.heads, -1).transpose(1, 2)

    def block(
        self, index: int, x: torch.Tensor, qkv: torch.Tensor | None = None, cls_only: bool = False
    ) -> torch.Tensor:
        """One residual block on (N, L, W); ``cls_only`` returns only the first row (N, 1, W)."""
        blk = self.blocks[index]
        w = self.width
        qkv = self.qkv(index, x) if qkv is None else qkv
        q, k, v = qkv[..., :w], qkv[..., w : 2 * w], qkv[..., 2 * w :]
        if cls_only:
            q, x = q[:, :1], x[:, :1]
        q, k, v = self._split(q), self._split(k), self._split(v)
        attn = ((q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)).softmax(dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(x.shape[0], -1, w)
        o = F.linear(o, blk.attn.out_proj.weight, blk.attn.out_proj.bias)
        x = x + blk.ls_1(o)
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def pool(self, cls_rows: torch.Tensor) -> torch.Tensor:
        """ln_post + projection of [CLS] rows (..., W) -> (..., E)."""
        v = self.visual
        pooled = v.ln_post(cls_rows)
        return pooled @ v.proj if v.proj is not None else pooled
