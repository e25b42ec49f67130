"""APRIL-GAN as one exportable graph: preprocessed batch -> (image scores, anomaly maps).

The same equations as :mod:`vlmad.methods.aprilgan` (see docs/export.md): per stage the projected patch tokens'
logit gap, upsampled (align_corners=True) and squashed by a sigmoid, summed over stages; with K references the
per-stage nearest-neighbour distances to the memory bank (a constant of the graph, rows already unit length) are
summed on the grid and upsampled once, and the image score averages the [CLS] probability with the map maximum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vlmad.backbones.export_trunk import ExportTrunk

if TYPE_CHECKING:
    from vlmad.methods.aprilgan import AprilGan


class AprilGanGraph(nn.Module):
    """Stages, projection heads, text and memory bank of one ready APRIL-GAN detector."""

    def __init__(self, detector: AprilGan, logit_scale: float) -> None:
        super().__init__()
        bb = detector.backbone
        self.trunk = ExportTrunk(bb)
        self.grid = tuple(bb.grid_size)
        self.size = int(bb.image_size)
        self.stages = tuple(int(s) for s in detector.stages)
        self.heads = detector.heads
        self.scale = float(logit_scale)
        self.shots = detector.shots
        text = detector.text_embeddings.float()
        self.register_buffer("text", text)
        self.register_buffer("gap", (text[1] - text[0])[:, None])  # (E, 1): a 1-D MatMul trips OpenVINO
        for i, bank in enumerate(detector._banks):
            self.register_buffer(f"bank{i}", bank.float())

    def _upsample(self, values: torch.Tensor) -> torch.Tensor:
        x = values.reshape(-1, 1, *self.grid)
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=True)[:, 0]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.trunk
        x = tr.visual.ln_pre(tr.embed(images))
        tokens = []
        for i in range(len(tr.blocks)):
            x = tr.block(i, x)
            if i + 1 in self.stages:
                tokens.append(x[:, 1:])
        logits = self.scale * F.normalize(tr.pool(x[:, 0]), dim=-1) @ self.text.T
        cls = logits.softmax(dim=-1)[:, 1]
        maps = None
        for head, t in zip(self.heads.heads, tokens, strict=True):
            prob = torch.sigmoid(self._upsample(self.scale * (F.normalize(head(t), dim=-1) @ self.gap)[..., 0]))
            maps = prob if maps is None else maps + prob
        if not self.shots:
            return cls, maps
        dist = None
        for i, t in enumerate(tokens):
            d = 1.0 - (F.normalize(t, dim=-1) @ getattr(self, f"bank{i}").T).amax(dim=-1)
            dist = d if dist is None else dist + d
        maps = maps + self._upsample(dist)
        return 0.5 * (cls + maps.flatten(1).amax(dim=1)), maps
