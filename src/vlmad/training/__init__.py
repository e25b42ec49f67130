"""Training of learned method parts: APRIL-GAN's projection heads, their artefact files and the leakage guard.

Every name is imported on first use, so that the `vlmad train` command module (:mod:`vlmad.training.cli`) loads
without torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    **dict.fromkeys(
        (
            "DataLeakageError",
            "HeadsFileError",
            "backbone_meta",
            "check_compatible",
            "check_leakage",
            "heads_paths",
            "import_reference_heads",
            "load_heads",
            "read_heads_meta",
            "save_heads",
        ),
        "vlmad.training.heads_io",
    ),
    **dict.fromkeys(("aprilgan_loss", "dice_loss", "focal_loss"), "vlmad.training.losses"),
    **dict.fromkeys(
        ("TrainConfig", "TrainItem", "TrainResult", "REGIMES", "train_aprilgan", "training_items", "split_held_out"),
        "vlmad.training.aprilgan",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
