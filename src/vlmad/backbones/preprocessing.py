"""The image preprocessing pipelines of the methods' references (a decoded image -> a normalised model input).

They sit below both the backbone (:meth:`ClipBackbone.preprocess_tensor` reuses the primitives) and the methods
(:mod:`vlmad.methods.inputs` turns what users pass into a batch through them); docs/architecture.md has the layers.

File-to-tensor fidelity: each method declares the one :class:`Preprocessing` its reference applies to image files,
and every path into that method (``predict``/``fit`` on paths or PIL images, the benchmark loader, the service,
APRIL-GAN training) goes through it:

* :data:`PIL_BICUBIC` — VAND-APRIL-GAN (open_clip's eval transform as the reference builds it): PIL bicubic resize
  of the uint8 image straight to ``S x S`` (squashed, no crop; PIL antialiases when shrinking and rounds/clamps to
  uint8), ``/ 255``, CLIP mean/std.
* :data:`TENSOR_BICUBIC` — anomalib 2.7.0's WinCLIP pre-processor on its ``read_image`` tensors: the uint8 image
  as float32 ``/ 255``, ``torchvision.transforms.v2.Resize((S, S), bicubic, antialias=True)`` — on float tensors
  that is ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` *without* clamping (bicubic
  overshoot stays) — then CLIP mean/std.

The two differ by up to ~0.1 in normalised units (~7 grey levels) on a 640x480 image, so the choice matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def resize_tensor_bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) float -> (B, 3, size, size): bicubic, antialiased, not clamped (torchvision v2 on floats)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` of (B, 3, H, W) images."""
    m = torch.tensor(tuple(mean), dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s


def _pil_bicubic(image: Image.Image, size: int) -> torch.Tensor:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return pil_to_tensor(rgb.resize((size, size), Image.Resampling.BICUBIC)).unsqueeze(0)


def _tensor_bicubic(image: Image.Image, size: int) -> torch.Tensor:
    return resize_tensor_bicubic(pil_to_tensor(image).unsqueeze(0), size)


@dataclass(frozen=True)
class Preprocessing:
    """A method's reference pipeline from a decoded image to its model input (recorded by name in results)."""

    name: str
    #: what it reproduces, for docs and result footnotes
    reference: str
    #: decoded image, side -> (1, 3, side, side) float, before normalisation
    resize: Callable[[Image.Image, int], torch.Tensor]

    def __call__(self, image: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """One image -> (1, 3, size, size) normalised model input."""
        return normalize(self.resize(image, int(size)), mean, std)


PIL_BICUBIC = Preprocessing(
    "pil-bicubic", "VAND-APRIL-GAN: PIL bicubic resize of uint8 to SxS, /255, mean/std", _pil_bicubic
)
TENSOR_BICUBIC = Preprocessing(
    "tensor-bicubic-aa",
    "anomalib 2.7.0 WinCLIP pre-processor: float /255, bicubic antialiased resize to SxS (no clamp), mean/std",
    _tensor_bicubic,
)
