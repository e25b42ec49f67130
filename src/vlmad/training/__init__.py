"""Training of learned method parts (APRIL-GAN's projection heads, AnomalyCLIP's prompts), their artefact files
and the leakage guard; what the trainers share is :mod:`vlmad.training.common`.

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
    **dict.fromkeys(("aprilgan_loss", "dice_loss", "focal_loss", "glocal_loss"), "vlmad.training.losses"),
    **dict.fromkeys(("TrainConfig", "TrainResult", "train_aprilgan"), "vlmad.training.aprilgan"),
    **dict.fromkeys(("TrainItem", "REGIMES", "training_items", "split_held_out"), "vlmad.training.common"),
    **dict.fromkeys(("PromptTrainConfig", "PromptTrainResult", "train_anomalyclip"), "vlmad.training.anomalyclip"),
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
    "PromptTrainConfig",
    "PromptTrainResult",
    "TrainConfig",
    "TrainItem",
    "TrainResult",
    "aprilgan_loss",
    "backbone_meta",
    "check_compatible",
    "check_leakage",
    "dice_loss",
    "focal_loss",
    "glocal_loss",
    "heads_paths",
    "import_reference_heads",
    "load_heads",
    "read_heads_meta",
    "save_heads",
    "split_held_out",
    "train_anomalyclip",
    "train_aprilgan",
    "training_items",
]
