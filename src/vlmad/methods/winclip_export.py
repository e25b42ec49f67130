"""WinCLIP / WinCLIP+ as one exportable graph: preprocessed batch -> (image scores, anomaly maps).

The same equations as :mod:`vlmad.methods.winclip` (see docs/export.md), written so an ONNX/OpenVINO exporter can
trace them: the window incidence is a dense 0/1 buffer instead of a sparse matrix, and the text embeddings and
the few-shot memory (window and patch banks, L2-normalised once) are constant buffers of the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vlmad.backbones.export_trunk import ExportTrunk

if TYPE_CHECKING:
    from vlmad.methods.winclip import WinClip


class WinClipGraph(nn.Module):
    """Complete WinCLIP: full image + sliding windows, harmonic aggregation, optional few-shot association."""

    def __init__(self, detector: WinClip) -> None:
        super().__init__()
        bb = detector.backbone
        self.trunk = ExportTrunk(bb)
        self.grid = tuple(bb.grid_size)
        self.size = int(bb.image_size)
        self.n_patches = detector.n_patches
        self.scales = tuple(detector.scales)
        self.use_image_scale = detector.use_image_scale
        self.temperature = detector.temperature
        self.shots = detector.shots
        self.register_buffer("text", F.normalize(detector.text_embeddings.float(), dim=-1))
        for s in self.scales:
            win = detector.windows[s]
            seq = torch.cat([win.new_zeros(win.shape[0], 1), win + 1], dim=1)
            self.register_buffer(f"seq{s}", seq)
            self.register_buffer(f"inc{s}", detector.incidence[s].to_dense().float())
            if self.shots:
                self.register_buffer(f"wbank{s}", F.normalize(detector._window_bank[s].float(), dim=-1))
        if self.shots:
            self.register_buffer("pbank", F.normalize(detector._patch_bank.float(), dim=-1))

    def _class_scores(self, emb: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb, dim=-1) @ self.text.T
        return (cos / self.temperature).softmax(dim=-1)[..., 1]

    @staticmethod
    def _harmonic(scores: torch.Tensor, inc: torch.Tensor) -> torch.Tensor:
        """(B, n_windows) -> (B, P): harmonic mean over covering windows; 0 where a window scores 0."""
        out = inc.sum(dim=1) / ((1.0 / scores) @ inc.T)
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))

    @staticmethod
    def _assoc(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.normalize(queries, dim=-1) @ bank.T).amin(dim=-1) / 2.0

    def _windows(self, embedded: torch.Tensor, scale: int) -> torch.Tensor:
        """Projected [CLS] of every window sequence of one scale: (B, n_windows, E)."""
        tr = self.trunk
        seq = getattr(self, f"seq{scale}")
        x0 = tr.visual.ln_pre(embedded)
        qkv0 = tr.qkv(0, x0)
        b, n_win, length = x0.shape[0], seq.shape[0], seq.shape[1]
        x = x0[:, seq].reshape(b * n_win, length, -1)
        qkv = qkv0[:, seq].reshape(b * n_win, length, -1)
        last = len(tr.blocks) - 1
        for i in range(len(tr.blocks)):
            x = tr.block(i, x, qkv=qkv if i == 0 else None, cls_only=i == last)
        return tr.pool(x[:, 0]).reshape(b, n_win, -1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.trunk
        embedded = tr.embed(images)
        x = tr.visual.ln_pre(embedded)
        last = len(tr.blocks) - 1
        for i in range(len(tr.blocks)):
            x = tr.block(i, x, cls_only=(i == last and not self.shots))
        image_scores = self._class_scores(tr.pool(x[:, 0]))
        windows = {s: self._windows(embedded, s) for s in self.scales}
        per_scale = [image_scores[:, None].expand(-1, self.n_patches)] if self.use_image_scale else []
        per_scale += [self._harmonic(self._class_scores(windows[s]), getattr(self, f"inc{s}")) for s in self.scales]
        grid_map = len(per_scale) / (1.0 / torch.stack(per_scale)).sum(dim=0)
        if self.shots:
            few = [self._assoc(tr.visual.ln_post(x[:, 1:]), self.pbank)]
            few += [
                self._harmonic(self._assoc(windows[s], getattr(self, f"wbank{s}")), getattr(self, f"inc{s}"))
                for s in self.scales
            ]
            few_shot = torch.stack(few).mean(dim=0)
            grid_map = (grid_map + few_shot) / 2
            image_scores = (image_scores + few_shot.amax(dim=-1)) / 2
        maps = F.interpolate(grid_map.reshape(-1, 1, *self.grid), size=(self.size, self.size), mode="bilinear")
        return image_scores, maps[:, 0]
