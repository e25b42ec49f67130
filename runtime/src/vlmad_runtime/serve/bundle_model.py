"""An exported bundle as a :class:`~vlmad_runtime.serve.model.ServedModel`: what `vlmad-runtime serve` runs.

The bundle's graph holds its text embeddings and (for a few-shot export) its reference memory, so it scores the
class it was exported for and cannot take reference sets: uploads are refused with a 409 by the service
(``ServeConfig.references_refusal``), and the methods below that would change the memory raise the same error.
Deploy files are matched against the fingerprint the bundle recorded at export (``manifest["protocol"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from vlmad_runtime.bundle import Bundle, preprocess
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.serve.limits import ApiError
from vlmad_runtime.serve.model import ReferenceMemory


class BundleModel:
    """Serves a loaded :class:`~vlmad_runtime.bundle.Bundle` (numpy in, numpy out; no torch)."""

    supports_references = False

    def __init__(self, bundle: Bundle, references_refusal: str = "few-shot memory is baked into the bundle") -> None:
        self.bundle = bundle
        self.references_refusal = references_refusal
        self._spec = bundle.manifest["preprocessing"]

    @property
    def class_name(self) -> str:
        """The class the bundle's text embeddings were computed for."""
        return str(self.bundle.manifest.get("class_name") or self.bundle.manifest["protocol"].get("class_name"))

    def prepare(self, class_name: str) -> None:
        if class_name != self.class_name:
            raise VlmadError(
                f"bundle {self.bundle.folder} scores class {self.class_name!r}, not {class_name!r}",
                "export a bundle for that class with `vlmad export --class-name`",
            )

    def info(self) -> dict[str, Any]:
        return self.bundle.info().as_dict()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The manifest's preprocessing (the same as `vlmad-runtime detect`) -> (1, 3, S, S) float32."""
        return preprocess([image], self._spec)

    def predict(self, inputs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        return self.bundle.run(np.concatenate(list(inputs)))

    def fingerprint(self, info: dict[str, Any], class_name: str, reference_fp: str | None) -> dict[str, Any]:
        """What the bundle recorded at export: the exporting detector, its class and its baked-in references."""
        return dict(self.bundle.manifest.get("protocol") or {})

    def reset_references(self) -> None:
        """Nothing to reset: the bundle's memory is part of its graph."""

    def fit_references(self, images: Sequence[Image.Image]) -> ReferenceMemory:
        raise ApiError(409, "references_not_supported", self.references_refusal)

    def use_references(self, memory: ReferenceMemory) -> None:
        raise ApiError(409, "references_not_supported", self.references_refusal)
