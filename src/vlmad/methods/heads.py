"""APRIL-GAN's trained part: one linear projection head per feature stage, and the backbone fact its files record.

Its own module so that the heads file I/O (:mod:`vlmad.training.heads_io`) and the detector
(:mod:`vlmad.methods.aprilgan`) both import it without importing each other (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from vlmad_runtime.errors import VlmadError

__all__ = ["ProjectionHeads", "backbone_activation"]


class ProjectionHeads(nn.Module):
    """One ``Linear(width, embed_dim)`` per stage: the only trained parameters of APRIL-GAN.

    ``forward`` takes the per-stage patch tokens (CLS already dropped), (B, P, width) each.
    """

    def __init__(self, width: int, embed_dim: int, n_stages: int) -> None:
        super().__init__()
        self.width, self.embed_dim = int(width), int(embed_dim)
        self.heads = nn.ModuleList(nn.Linear(self.width, self.embed_dim) for _ in range(int(n_stages)))

    @classmethod
    def seeded(cls, width: int, embed_dim: int, n_stages: int, seed: int = 0) -> ProjectionHeads:
        """Default nn.Linear init drawn from ``seed`` without touching the global RNG state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(width, embed_dim, n_stages)

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(tokens) != len(self.heads):
            raise VlmadError(f"{len(tokens)} token stages for {len(self.heads)} heads")
        return [head(t) for head, t in zip(self.heads, tokens, strict=True)]

    def digest(self) -> str:
        """sha256 of the parameters (fp32 bytes, in order): identifies the heads in results."""
        h = hashlib.sha256()
        for _, v in sorted(self.state_dict().items()):
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def backbone_activation(backbone: Any) -> str:
    """Name of the vision tower's MLP activation ("QuickGELU" or "GELU"; recorded in the protocol)."""
    mlp = backbone.visual.transformer.resblocks[0].mlp
    act = mlp.gelu if hasattr(mlp, "gelu") else mlp[1]
    return type(act).__name__
