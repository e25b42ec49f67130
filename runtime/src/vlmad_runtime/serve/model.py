"""What the service needs from a model: the :class:`ServedModel` protocol (see docs/architecture.md).

The HTTP service (routes, limits, batching, reference sets, page) is torch-free and knows a model only through
this protocol. Two implementations exist: :class:`vlmad_runtime.serve.bundle_model.BundleModel` (an exported
bundle, `vlmad-runtime serve` and `vlmad serve --bundle`) and ``vlmad.serve.detector_model.DetectorModel`` (a
torch detector with its few-shot memory, `vlmad serve`). All calls except :meth:`ServedModel.preprocess` run on
the model worker's single thread, so an implementation never sees two threads at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image


@dataclass
class ReferenceMemory:
    """One reference set's few-shot memory as fitting left it in the model, ready to be re-activated.

    ``state``: whatever the model needs to restore it; ``shots``: K; ``nbytes``: bytes held (the cache budget).
    """

    state: Any
    shots: int
    nbytes: int


@runtime_checkable
class ServedModel(Protocol):
    """A model the service can run: preprocessing, batched prediction, its protocol fingerprint, references."""

    #: False: reference-set uploads are refused (the few-shot memory is fixed, e.g. baked into a bundle)
    supports_references: bool
    #: why uploads are refused when ``supports_references`` is False (the 4xx message)
    references_refusal: str

    def prepare(self, class_name: str) -> None:
        """Ready the model to score ``class_name`` (text embeddings, zero-shot state); worker thread."""

    def info(self) -> dict[str, Any]:
        """The protocol fields shown by /v1/info and recorded per response (method, model, weights, shots...)."""

    def preprocess(self, image: Image.Image) -> Any:
        """RGB image -> one model input; called on decode threads, so it must be thread-safe."""

    def predict(self, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """A batch of :meth:`preprocess` outputs -> (scores (B,), maps (B, S, S)) as numpy float32."""

    def fingerprint(self, info: dict[str, Any], class_name: str, reference_fp: str | None) -> dict[str, Any]:
        """The fingerprint a deploy file must match for a request answered with ``info`` and references."""

    def reset_references(self) -> None:
        """Back to the model's own memory (zero-shot, or what a bundle baked in)."""

    def fit_references(self, images: Sequence[Image.Image]) -> ReferenceMemory:
        """Fit on reference images (the fitted memory stays active) and return it for later reuse."""

    def use_references(self, memory: ReferenceMemory) -> None:
        """Make a memory from :meth:`fit_references` active again."""
