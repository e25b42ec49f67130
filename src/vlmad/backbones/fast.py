"""Batch-first re-expression of open_clip's transformer that skips work WinCLIP never uses.

open_clip runs every sequence through :class:`nn.MultiheadAttention`; WinCLIP runs 365 short window sequences per
image and only ever reads their [CLS] output. :class:`FastBlock` shares the parameters of an open_clip
``ResidualAttentionBlock`` (no copies) and adds three ways of running it:

* ``qkv=`` precomputed: in the first block the layer norm and q/k/v projection of a token are the same in every
  window containing it, so they are computed once per image and gathered;
* ``cls_only=True``: in the last block only the [CLS] row needs a query, an output projection and an MLP;
* ``causal=True``: the text tower's causal mask, via ``scaled_dot_product_attention(is_causal=True)``.

Residual branches ending in a plain linear layer are accumulated in place into the residual stream with one
``addmm_`` (the GEMM adds onto the residual: no bias broadcast copy, no separate add pass), so the block **may
overwrite its input** ``x``; callers pass tensors they own.

The parameters are exposed as :class:`nn.Linear` modules so dynamic int8 quantisation can replace them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _linear_sharing(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear whose parameters *are* the given tensors (views share storage; nothing is copied)."""
    out_features, in_features = weight.shape
    with torch.device("meta"):
        lin = nn.Linear(in_features, out_features, bias=bias is not None)
    lin.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias, requires_grad=False)
    return lin


def is_standard_block(block: nn.Module) -> bool:
    """True for open_clip ``ResidualAttentionBlock`` with a plain self-attention (what FastBlock mirrors)."""
    attn = getattr(block, "attn", None)
    mlp = getattr(block, "mlp", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.in_proj_bias is not None
        and not hasattr(block, "ln_attn")
        and not hasattr(block, "ln_1_kv")
        and mlp is not None
        and hasattr(mlp, "c_fc")
        and hasattr(mlp, "c_proj")
        and hasattr(block, "ln_1")
        and hasattr(block, "ln_2")
    )


class FastBlock(nn.Module):
    """One pre-norm transformer block, batch-first, sharing parameters with an open_clip block."""

    def __init__(self, block: nn.Module, cls_only_capable: bool = False) -> None:
        super().__init__()
        attn: nn.MultiheadAttention = block.attn
        self.width = attn.embed_dim
        self.num_heads = attn.num_heads
        self.head_dim = self.width // self.num_heads
        self.ln_1 = block.ln_1
        self.ln_2 = block.ln_2
        self.ls_1 = block.ls_1
        self.ls_2 = block.ls_2
        w, b = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
        self.qkv = _linear_sharing(w, b)
        self.out_proj = _linear_sharing(attn.out_proj.weight.detach(), attn.out_proj.bias.detach())
        self.c_fc = _linear_sharing(block.mlp.c_fc.weight.detach(), block.mlp.c_fc.bias.detach())
        self.act = block.mlp.gelu if hasattr(block.mlp, "gelu") else block.mlp[1]
        self.c_proj = _linear_sharing(block.mlp.c_proj.weight.detach(), block.mlp.c_proj.bias.detach())
        if cls_only_capable:
            d = self.width
            self.q_proj = _linear_sharing(w[:d], b[:d])
            self.kv_proj = _linear_sharing(w[d:], b[d:])

    @staticmethod
    def _add_linear_(x: torch.Tensor, inp: torch.Tensor, lin: nn.Module, scale: nn.Module) -> torch.Tensor:
        """``x + scale(lin(inp))``, computed in place on ``x`` when ``lin`` is a plain fp32/bf16 Linear."""
        if (
            type(lin) is nn.Linear
            and isinstance(scale, nn.Identity)
            and x.is_contiguous()
            and x.dtype == lin.weight.dtype == inp.dtype
            and not x.requires_grad
        ):
            flat = x.view(-1, x.shape[-1])
            if lin.bias is not None:
                flat.add_(lin.bias)
            flat.addmm_(inp.reshape(-1, inp.shape[-1]), lin.weight.t())
            return x
        return x + scale(lin(inp))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        qkv: torch.Tensor | None = None,
        cls_only: bool = False,
        causal: bool = False,
    ) -> torch.Tensor:
        """x: (N, L, D). Returns (N, L, D), or (N, 1, D) with ``cls_only`` (the first token's output)."""
        d = self.width
        if qkv is None:
            h = self.ln_1(x)
            if cls_only:
                q = self.q_proj(h[:, :1])
                kv = self.kv_proj(h)
            else:
                qkv = self.qkv(h)
        if qkv is not None:
            q = qkv[:, :1, :d] if cls_only else qkv[..., :d]
            kv = qkv[..., d:]
        k, v = kv[..., :d], kv[..., d:]
        o = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), is_causal=causal)
        o = o.transpose(1, 2).reshape(o.shape[0], -1, d)
        residual = x[:, :1].contiguous() if cls_only else x
        x = self._add_linear_(residual, o, self.out_proj, self.ls_1)
        return self._add_linear_(x, self.act(self.c_fc(self.ln_2(x))), self.c_proj, self.ls_2)
