"""AnomalyCLIP as one exportable graph: preprocessed batch -> (image scores, anomaly maps).

The forward is :func:`vlmad.methods.anomalyclip.score_and_map` itself, traced (see docs/export.md); the detector
hands it over (``AnomalyClip.forward_tokens``), so this module imports the detector for type hints only
(docs/architecture.md: one-way dependency). The learned
prompts only change the text side, so the two text embeddings (normal, anomalous) are computed once at export and
stored as a constant; the DPAM V-V path, the per-stage softmax, the bilinear upsampling and the Gaussian filter
(scipy's kernel and reflect border, as a gather + separable convolution) are ordinary graph ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from vlmad.backbones.export_trunk import ExportTrunk

if TYPE_CHECKING:
    from vlmad.methods.anomalyclip import AnomalyClip


class AnomalyClipGraph(nn.Module):
    """Vision tower (shared parameters), learned text embeddings and map settings of one ready detector."""

    def __init__(self, detector: AnomalyClip) -> None:
        super().__init__()
        self.trunk = ExportTrunk(detector.backbone)  # its checks: standard pre-norm ViT blocks, fp32
        self.geometry = detector.map_geometry()
        self.forward_tokens = detector.forward_tokens
        self.register_buffer("text", detector.text_embeddings.float().clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_tokens(self.trunk.visual, self.trunk.embed(images), self.text, self.geometry)
