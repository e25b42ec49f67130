"""Turn what users pass to ``predict``/``fit`` (paths, PIL images, tensors) into one model-input batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmad_runtime.errors import VlmadError


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_model_input(images, backbone, size: int | None = None) -> torch.Tensor:
    """Paths / PIL images are loaded robustly, resized (bicubic, antialiased) and normalised; a 4-D tensor is
    taken as already preprocessed and only checked."""
    size = size or backbone.image_size
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise VlmadError(
                f"a tensor input must be preprocessed (B, 3, {size}, {size}); got {tuple(images.shape)}",
                "pass image paths or PIL images to let vlmad preprocess them",
            )
        return images.float()
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    if not isinstance(images, Sequence) or isinstance(images, (bytes, str)):
        raise VlmadError(f"cannot interpret {type(images).__name__} as images",
                         "pass a path, a PIL image, a list of them, or a (B,3,S,S) tensor")
    from vlmad_runtime.images import load_image

    tensors = []
    for item in images:
        img = item if isinstance(item, Image.Image) else load_image(item)
        tensors.append(backbone.preprocess_tensor(pil_to_tensor(img).unsqueeze(0), size))
    if not tensors:
        return torch.empty(0, 3, size, size)
    return torch.cat(tensors)
