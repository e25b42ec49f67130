"""The Detector contract every method implements.

One shape for every method lets the harness, the CLI and the service treat WinCLIP and APRIL-GAN alike:
``setup(class_name)`` builds text embeddings, ``fit(references)`` stores the few-shot memory, and
``predict(images)`` returns image scores plus anomaly maps at the model input resolution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ImageInput = str | Path | Image.Image
Images = torch.Tensor | Sequence[ImageInput] | ImageInput


@dataclass
class Prediction:
    """Output of :meth:`Detector.predict`.

    ``image_scores``: (B,) float32, higher = more anomalous. ``anomaly_maps``: (B, H, W) float32 at the model input
    resolution; callers resize to the original image size when needed.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.image_scores.detach().float().cpu().numpy(),
            self.anomaly_maps.detach().float().cpu().numpy(),
        )

    def __len__(self) -> int:
        return int(self.image_scores.shape[0])


@dataclass
class DetectorInfo:
    """What a result row must record to be comparable: the protocol of the method."""

    method: str
    model: str
    weights_id: str
    image_size: int
    prompt_set: str
    shots: int = 0
    transductive: bool = False
    random_weights: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "extra"}
        out.update(self.extra)
        return out


class Detector(ABC):
    """Zero-/few-shot anomaly detector. Subclasses live one per file in :mod:`vlmad.methods`."""

    name: str = "detector"
    #: True when predictions use statistics of the whole test set (must be labelled in results)
    transductive: bool = False

    @abstractmethod
    def setup(self, class_name: str) -> None:
        """Build (or load from cache) the text embeddings for ``class_name``."""

    def fit(self, reference_images: Images) -> None:
        """Store the memory of K normal references (few-shot). Zero-shot methods may skip this."""
        raise NotImplementedError(f"{self.name} has no few-shot mode")

    def reset_references(self) -> None:
        """Forget the few-shot memory, back to zero-shot."""

    @property
    def shots(self) -> int:
        return 0

    def restrict_stages(self, stages: Sequence[int]) -> None:
        """Use only a subset of the detector's feature stages (study stage ablation); methods without stages
        refuse."""
        from vlmad_runtime.errors import VlmadError

        raise VlmadError(f"{self.name} has no feature stages to restrict",
                         "the stages ablation applies to methods whose spec lists the 'stages' axis")

    @abstractmethod
    def predict(self, images: Images) -> Prediction:
        """Score images (paths, PIL images or a preprocessed (B,3,S,S) tensor)."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the square model input."""

    @abstractmethod
    def info(self) -> DetectorInfo:
        """Protocol description recorded with every result."""

    def check_protocol(self, dataset_kind: str, dataset_root: str, category: str, force: bool = False
                       ) -> dict[str, Any]:
        """Called by the harness before evaluating ``category``: raise a VlmadError when the result would not be
        what its label claims (e.g. heads trained on this category reported as zero-shot); return extra protocol
        fields to record with the result (e.g. ``{"leakage_forced": True}``)."""
        return {}

    def finalize(self, image_scores: torch.Tensor, anomaly_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-processing over a whole category's predictions. Identity unless the method is transductive
        (uses test-set statistics), in which case ``transductive`` is True and results are labelled so."""
        return image_scores, anomaly_maps
