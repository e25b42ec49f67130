"""Turn what users pass to ``predict``/``fit`` (paths, PIL images, tensors) into one model-input batch.

Each method declares the one :class:`~vlmad.backbones.preprocessing.Preprocessing` its reference applies to image
files (the pipelines and why they differ: :mod:`vlmad.backbones.preprocessing`), and every path into that method
(``predict``/``fit`` on paths or PIL images, the benchmark loader, the service, APRIL-GAN training) goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from vlmad.backbones.preprocessing import PIL_BICUBIC, TENSOR_BICUBIC, Preprocessing
from vlmad_runtime.errors import VlmadError

#: the pipelines are defined in the backbone layer; methods import them from here with ``to_model_input``
__all__ = ["PIL_BICUBIC", "TENSOR_BICUBIC", "Preprocessing", "to_model_input"]


def to_model_input(
    images, backbone, size: int | None = None, preprocessing: Preprocessing = TENSOR_BICUBIC
) -> torch.Tensor:
    """Paths / PIL images are loaded robustly and run through ``preprocessing`` (the method's own, see the module
    docstring); a 4-D tensor is taken as already preprocessed and only checked."""
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
        raise VlmadError(
            f"cannot interpret {type(images).__name__} as images",
            "pass a path, a PIL image, a list of them, or a (B,3,S,S) tensor",
        )
    from vlmad_runtime.images import load_image

    tensors = []
    for item in images:
        img = item if isinstance(item, Image.Image) else load_image(item)
        tensors.append(preprocessing(img, size, backbone.mean, backbone.std))
    if not tensors:
        return torch.empty(0, 3, size, size)
    return torch.cat(tensors)
