"""The one record every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Label = Literal["normal", "anomalous"]


@dataclass(frozen=True)
class Sample:
    """One image of a dataset split.

    ``mask_path`` is None for normal images and for datasets without masks; ``defect_type`` is "good" for
    normal images of MVTec-style layouts.
    """

    image_path: Path
    label: Label
    category: str
    split: Literal["train", "test"]
    defect_type: str = "good"
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.label == "anomalous"
