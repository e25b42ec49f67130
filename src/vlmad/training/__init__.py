"""Training of learned method parts: APRIL-GAN's projection heads, their artefact files and the leakage guard.

``heads_io`` and ``losses`` are light and imported eagerly; the trainer is imported on first use (it imports
the method module, which itself reads heads files through ``heads_io``).
"""

from __future__ import annotations

from typing import Any

from vlmad.training.heads_io import (
    DataLeakageError,
    HeadsFileError,
    backbone_meta,
    check_compatible,
    check_leakage,
    heads_paths,
    import_reference_heads,
    load_heads,
    read_heads_meta,
    save_heads,
)
from vlmad.training.losses import aprilgan_loss, dice_loss, focal_loss

_LAZY = {
    "TrainConfig",
    "TrainItem",
    "TrainResult",
    "REGIMES",
    "train_aprilgan",
    "training_items",
    "split_held_out",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from vlmad.training import aprilgan

        return getattr(aprilgan, name)
    raise AttributeError(f"module 'vlmad.training' has no attribute {name!r}")


__all__ = [
    "REGIMES",
    "DataLeakageError",
    "HeadsFileError",
    "TrainConfig",
    "TrainItem",
    "TrainResult",
    "aprilgan_loss",
    "backbone_meta",
    "check_compatible",
    "check_leakage",
    "dice_loss",
    "focal_loss",
    "heads_paths",
    "import_reference_heads",
    "load_heads",
    "read_heads_meta",
    "save_heads",
    "split_held_out",
    "train_aprilgan",
    "training_items",
]
