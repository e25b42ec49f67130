"""The training losses of APRIL-GAN (VAND-APRIL-GAN ``loss.py``) and AnomalyCLIP (zqhang/AnomalyCLIP ``loss.py``,
``train.py``; the same focal and dice losses), vectorised.

* focal loss on **probabilities** (the softmax output, not logits): with the one-hot target clamped to
  ``[smooth / (C - 1), 1 - smooth]``, ``pt = sum_c onehot_c * p_c + smooth`` and ``loss = mean over pixels of
  -(1 - pt)^gamma * log(pt)`` (alpha = 1 for every class, gamma = 2, smooth = 1e-5);
* binary dice loss on the anomalous channel: ``1 - mean over images of (2 |p * t| + 1) / (|p| + |t| + 1)``.

APRIL-GAN sums focal + dice over the stages; AnomalyCLIP's glocal loss is :func:`glocal_loss`
(docs/methods.md, "AnomalyCLIP training").
"""

from __future__ import annotations

import torch


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """probs (B, C, H, W) summing to 1 over C; target (B, H, W) with class indices (0/1 for APRIL-GAN)."""
    n_class = probs.shape[1]
    idx = target.long().unsqueeze(1)
    p_target = probs.gather(1, idx).squeeze(1)
    lo, hi = smooth / (n_class - 1), 1.0 - smooth
    # sum_c onehot_c * p_c with the clamped one-hot: hi * p_target + lo * (sum of the other probabilities)
    pt = hi * p_target + lo * (probs.sum(1) - p_target) + smooth
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """prob (B, H, W) anomalous-class probability, target (B, H, W) 0/1."""
    n = target.shape[0]
    p = prob.reshape(n, -1)
    t = target.reshape(n, -1).to(p.dtype)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1.0 - dice.sum() / n


def aprilgan_loss(stage_probs: list[torch.Tensor], target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Sum over stages of focal (two-class probabilities) + dice (anomalous channel).

    ``stage_probs``: anomalous-class probability per stage, (B, H, W) each; the normal class is ``1 - p``.
    """
    total = stage_probs[0].new_zeros(())
    for p1 in stage_probs:
        probs = torch.stack([1.0 - p1, p1], dim=1)
        total = total + focal_loss(probs, target, gamma) + dice_loss(p1, target)
    return total


def glocal_loss(
    stage_maps: list[torch.Tensor],
    target: torch.Tensor,
    image_logits: torch.Tensor,
    labels: torch.Tensor,
    local_weight: float = 4.0,
    gamma: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AnomalyCLIP's glocal loss as its ``train.py`` sums it: (total, weighted local part, image part).

    ``image = cross_entropy(image_logits, labels)`` on the global (normal, anomalous) logits (cosine / 0.07);
    ``local = local_weight * sum over stages of focal(two channels) + dice(anomalous, target) +
    dice(normal, 1 - target)``, each stage's anomalous probability (B, H, W) at the target's resolution, the
    normal channel ``1 - p`` (the reference upsamples both softmax channels, which sum to 1 as bilinear
    interpolation keeps). ``local_weight`` = 4 in the reference since April 2025 (1 before: the paper's sum).
    """
    local = stage_maps[0].new_zeros(())
    for p1 in stage_maps:
        p0 = 1.0 - p1
        local = local + focal_loss(torch.stack([p0, p1], dim=1), target, gamma)
        local = local + dice_loss(p1, target) + dice_loss(p0, 1.0 - target)
    local = local_weight * local
    image = torch.nn.functional.cross_entropy(image_logits, labels.long())
    return local + image, local, image
