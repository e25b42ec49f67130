"""AnomalyCLIP's trained part: the object-agnostic learned prompt tokens.

Its own module so that the prompts file I/O (:mod:`vlmad.training.prompts_io`) and the detector
(:mod:`vlmad.methods.anomalyclip`) both import it without importing each other (docs/architecture.md).
"""

from __future__ import annotations

import torch
from torch import nn

from vlmad_runtime.errors import VlmadError

__all__ = ["DEPTH", "N_CTX", "T_N_CTX", "ObjectAgnosticPrompts"]

#: the reference's defaults (zqhang/AnomalyCLIP test.py / train.py: --n_ctx 12 --depth 9 --t_n_ctx 4)
N_CTX = 12
DEPTH = 9
T_N_CTX = 4


class ObjectAgnosticPrompts(nn.Module):
    """AnomalyCLIP's learned part: ``ctx_normal`` / ``ctx_anomalous`` (n_ctx, W) token embeddings that precede
    "object." / "damaged object.", and ``deep`` (depth - 1, t_n_ctx, W) tokens inserted in text blocks 1..depth-1.
    """

    def __init__(self, width: int, n_ctx: int = N_CTX, depth: int = DEPTH, t_n_ctx: int = T_N_CTX) -> None:
        super().__init__()
        if n_ctx < 1 or depth < 1 or t_n_ctx < 0 or t_n_ctx > n_ctx:
            raise VlmadError(
                f"invalid prompt shape n_ctx={n_ctx}, depth={depth}, t_n_ctx={t_n_ctx}",
                "the reference uses n_ctx=12, depth=9, t_n_ctx=4 (t_n_ctx <= n_ctx)",
            )
        self.ctx_normal = nn.Parameter(torch.empty(n_ctx, width))
        self.ctx_anomalous = nn.Parameter(torch.empty(n_ctx, width))
        self.deep = nn.Parameter(torch.empty(depth - 1, t_n_ctx, width))

    @classmethod
    def seeded(cls, width: int, seed: int = 0, **shape: int) -> ObjectAgnosticPrompts:
        """The reference's initialisation (normal, std 0.02) drawn from ``seed`` without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = cls(width, **shape)
            for p in module.parameters():
                nn.init.normal_(p, std=0.02)
        return module

    @property
    def n_ctx(self) -> int:
        return int(self.ctx_normal.shape[0])

    @property
    def depth(self) -> int:
        return int(self.deep.shape[0]) + 1

    @property
    def t_n_ctx(self) -> int:
        return int(self.deep.shape[1])

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for _, v in sorted(self.state_dict().items()):
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
