"""APRIL-GAN losses against pixel-by-pixel implementations of the reference formulas."""

from __future__ import annotations

import math

import torch

from vlmad.training.losses import aprilgan_loss, dice_loss, focal_loss


def naive_focal(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> float:
    """Reference FocalLoss, alpha 1: clamped one-hot, pt = sum(onehot * p) + smooth, mean -(1-pt)^g log pt."""
    b_, c_, h_, w_ = probs.shape
    total = 0.0
    for b in range(b_):
        for y in range(h_):
            for x in range(w_):
                t = int(target[b, y, x])
                onehot = [smooth / (c_ - 1)] * c_
                onehot[t] = 1.0 - smooth
                pt = sum(onehot[c] * float(probs[b, c, y, x]) for c in range(c_)) + smooth
                total += -((1.0 - pt) ** gamma) * math.log(pt)
    return total / (b_ * h_ * w_)


def naive_dice(prob: torch.Tensor, target: torch.Tensor) -> float:
    scores = []
    for b in range(prob.shape[0]):
        p, t = prob[b].flatten().tolist(), target[b].flatten().tolist()
        inter = sum(a * c for a, c in zip(p, t, strict=True))
        scores.append((2 * inter + 1) / (sum(p) + sum(t) + 1))
    return 1 - sum(scores) / len(scores)


def test_focal_and_dice_match_pixel_loops():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 2, 5, 4, generator=g) * 3, dim=1)
    target = (torch.rand(2, 5, 4, generator=g) > 0.6).float()
    assert abs(float(focal_loss(probs, target)) - naive_focal(probs, target)) < 1e-6
    assert abs(float(focal_loss(probs, target, gamma=0.5)) - naive_focal(probs, target, 0.5)) < 1e-6
    assert abs(float(dice_loss(probs[:, 1], target)) - naive_dice(probs[:, 1], target)) < 1e-6
    # three classes: the clamp of the off classes is smooth / (C - 1)
    p3 = torch.softmax(torch.randn(1, 3, 3, 3, generator=g), dim=1)
    t3 = torch.randint(0, 3, (1, 3, 3), generator=g).float()
    assert abs(float(focal_loss(p3, t3)) - naive_focal(p3, t3)) < 1e-6


def test_stage_sum_and_gradients():
    g = torch.Generator().manual_seed(1)
    p1 = [torch.rand(2, 6, 6, generator=g).requires_grad_(True) for _ in range(3)]
    target = (torch.rand(2, 6, 6, generator=g) > 0.5).float()
    loss = aprilgan_loss(p1, target)
    expect = sum(
        naive_focal(torch.stack([1 - p.detach(), p.detach()], 1), target) + naive_dice(p.detach(), target) for p in p1
    )
    assert abs(float(loss.detach()) - expect) < 1e-5
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in p1)
    # a perfect prediction costs (almost) nothing
    assert float(aprilgan_loss([target.clone()], target)) < 1e-3
