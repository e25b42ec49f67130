"""A torch detector as a :class:`~vlmad_runtime.serve.model.ServedModel`: what `vlmad serve` runs.

The service itself is torch-free (:mod:`vlmad_runtime.serve`); this adapter is the only torch code of `vlmad
serve`. Few-shot memories go through the detector's own state protocol, ``export_references()`` /
``load_references(state)`` (vlmad.methods.base.Detector), never through its attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmad.fingerprint import detector_fingerprint
from vlmad_runtime.serve.model import ReferenceMemory


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def capture_memory(detector: Any, images: Sequence[Image.Image]) -> ReferenceMemory:
    """``fit`` the detector on ``images`` (it keeps that memory active) and return the memory for later reuse."""
    detector.reset_references()
    detector.fit(list(images))
    state = detector.export_references()
    return ReferenceMemory(state, int(detector.shots), _nbytes(state))


def restore_memory(detector: Any, memory: ReferenceMemory | None) -> None:
    """Make ``memory`` the detector's active few-shot memory (``None``: zero-shot)."""
    detector.reset_references()
    if memory is None:
        return
    detector.load_references(memory.state)
    if int(detector.shots) != memory.shots:
        raise RuntimeError(
            f"restoring a {memory.shots}-shot reference memory left the detector at {detector.shots} shots"
        )


class DetectorModel:
    """Serves a vlmad detector (any method: it is reached through the Detector interface only)."""

    supports_references = True
    references_refusal = ""

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    def prepare(self, class_name: str) -> None:
        det = self.detector
        if getattr(det, "class_name", None) != class_name or getattr(det, "text_embeddings", True) is None:
            det.setup(class_name)

    def info(self) -> dict[str, Any]:
        return self.detector.info().as_dict()

    def preprocess(self, image: Image.Image) -> Any:
        """The method's declared file pipeline -> (1, 3, S, S); detectors without one take PIL images."""
        own = getattr(self.detector, "preprocess", None)
        return own([image]) if callable(own) else image

    def predict(self, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        batch = torch.cat(list(inputs)) if isinstance(inputs[0], torch.Tensor) else list(inputs)
        return self.detector.predict(batch).numpy()

    def fingerprint(self, info: dict[str, Any], class_name: str, reference_fp: str | None) -> dict[str, Any]:
        return detector_fingerprint(info, class_name, reference_fp)

    def reset_references(self) -> None:
        self.detector.reset_references()

    def fit_references(self, images: Sequence[Image.Image]) -> ReferenceMemory:
        return capture_memory(self.detector, images)

    def use_references(self, memory: ReferenceMemory) -> None:
        restore_memory(self.detector, memory)
