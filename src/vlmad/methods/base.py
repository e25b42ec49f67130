"""The Detector contract every method implements.

One shape for every method lets the harness, the CLI and the service treat WinCLIP and APRIL-GAN alike:
``setup(class_name)`` builds text embeddings, ``fit(references)`` stores the few-shot memory, and
``predict(images)`` returns image scores plus anomaly maps at the model input resolution.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmad_runtime.errors import VlmadError

ImageInput = str | Path | Image.Image
Images = torch.Tensor | Sequence[ImageInput] | ImageInput


@dataclass
class Prediction:
    """Output of :meth:`Detector.predict`.

    ``image_scores``: (B,) float32, higher = more anomalous. ``anomaly_maps``: (B, H, W) float32 at the model input
    resolution; callers resize to the original image size when needed. ``inputs``: which input each row is (the
    path as given, a PIL image's file name, ``<image i>`` otherwise; None for a tensor batch). After
    :meth:`decide`, ``threshold`` and ``decisions`` ("anomalous"/"normal", score >= threshold) are set.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    inputs: list[str] | None = field(default=None, kw_only=True)
    threshold: float | None = field(default=None, kw_only=True)
    decisions: list[str] | None = field(default=None, kw_only=True)

    def decide(
        self,
        deploy: float | str | Path | dict[str, Any],
        detector: Detector | None = None,
        references: Sequence[str | Path] = (),
    ) -> Prediction:
        """Set ``decisions`` from a threshold: a number, its dict, or a deploy.json path (``vlmad calibrate``).

        A deploy file is bound to the detector it was calibrated on, so it needs ``detector`` (and the few-shot
        ``references`` it was fitted on): its fingerprint is checked exactly as ``vlmad detect --deploy`` does,
        and a mismatch raises DeployMismatchError naming every differing field."""
        if isinstance(deploy, (int, float)):
            threshold = float(deploy)
        elif isinstance(deploy, dict):
            threshold = float(deploy["threshold"])
        else:
            threshold = _checked_threshold(Path(deploy), detector, references)
        scores = self.image_scores.detach().float().cpu().tolist()
        self.threshold = threshold
        # a non-finite score is no decision (""), never "normal"
        self.decisions = ["" if not math.isfinite(s) else "anomalous" if s >= threshold else "normal" for s in scores]
        return self

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.image_scores.detach().float().cpu().numpy(),
            self.anomaly_maps.detach().float().cpu().numpy(),
        )

    def __len__(self) -> int:
        return int(self.image_scores.shape[0])


def _checked_threshold(path: Path, detector: Detector | None, references: Sequence[str | Path]) -> float:
    """The threshold of a deploy file after its fingerprint check against ``detector``."""
    from vlmad.fingerprint import detector_fingerprint, references_fingerprint
    from vlmad_runtime.deploy import load_deploy

    dep = load_deploy(path)
    if detector is None:
        raise VlmadError(
            f"{dep.where} is bound to the detector it was calibrated on",
            "pass it: pred.decide(path, detector=det, references=[...the few-shot references...]), "
            "or pass the threshold as a number to decide without the check",
        )
    class_name = str(getattr(detector, "class_name", None) or "")
    refs = [Path(r) for r in references]
    dep.check(detector_fingerprint(detector.info().as_dict(), class_name, references_fingerprint(refs)))
    return float(dep.threshold)


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


def input_ids(images: Images) -> list[str] | None:
    """What identifies each input of ``predict`` in its result (None for a preprocessed tensor batch)."""
    if isinstance(images, torch.Tensor):
        return None
    items = [images] if isinstance(images, (str, Path, Image.Image)) else list(images)
    return [
        str(x) if isinstance(x, (str, Path)) else (getattr(x, "filename", "") or f"<image {i}>")
        for i, x in enumerate(items)
    ]


def _recording_inputs(predict: Callable[..., Prediction]) -> Callable[..., Prediction]:
    @functools.wraps(predict)
    def wrapper(self: Detector, images: Images, *args: Any, **kwargs: Any) -> Prediction:
        pred = predict(self, images, *args, **kwargs)
        if isinstance(pred, Prediction) and pred.inputs is None:
            ids = input_ids(images)
            pred.inputs = ids if ids is not None and len(ids) == len(pred) else None
        return pred

    wrapper._records_inputs = True  # type: ignore[attr-defined]
    return wrapper


class Detector(ABC):
    """Zero-/few-shot anomaly detector. Subclasses live one per file in :mod:`vlmad.methods`.

    Every subclass's ``predict`` is wrapped once (``__init_subclass__``) so that its :class:`Prediction` says
    which input each row is, whatever the method.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("predict")
        if own is not None and not getattr(own, "__isabstractmethod__", False) and not hasattr(own, "_records_inputs"):
            cls.predict = _recording_inputs(own)  # type: ignore[method-assign]

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

        raise VlmadError(
            f"{self.name} has no feature stages to restrict",
            "the stages ablation applies to methods whose spec lists the 'stages' axis",
        )

    def export_references(self) -> dict[str, Any]:
        """The few-shot memory ``fit`` built, as a state that :meth:`load_references` makes active again.

        Lets a service keep several reference sets fitted and switch between them without re-encoding the images
        (the tensors are shared, not copied). A detector with a few-shot mode must override both methods.
        """
        if self.shots:
            raise NotImplementedError(f"{self.name} cannot export its few-shot memory")
        return {"shots": 0}

    def load_references(self, state: dict[str, Any]) -> None:
        """Make a state from :meth:`export_references` the active few-shot memory (replacing the current one)."""
        if int(state.get("shots", 0)):
            raise NotImplementedError(f"{self.name} cannot load a few-shot memory")
        self.reset_references()

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

    def check_protocol(
        self, dataset_kind: str, dataset_root: str, category: str, force: bool = False
    ) -> dict[str, Any]:
        """Called by the harness before evaluating ``category``: raise a VlmadError when the result would not be
        what its label claims (e.g. heads trained on this category reported as zero-shot); return extra protocol
        fields to record with the result (e.g. ``{"leakage_forced": True}``)."""
        return {}

    def finalize(self, image_scores: torch.Tensor, anomaly_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-processing over a whole category's predictions. Identity unless the method is transductive
        (uses test-set statistics), in which case ``transductive`` is True and results are labelled so."""
        return image_scores, anomaly_maps
