"""Reading a deploy.json for inference: `vlmad detect --deploy` and `vlmad serve --deploy` share this.

Only ``threshold`` is required here, so a hand-written ``{"threshold": 0.7}`` works too; the full schema written
by `vlmad calibrate` is validated by :func:`vlmad.study.calibration.load_deploy`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vlmad_runtime.errors import VlmadError


def load_deploy(path: str | Path) -> dict[str, Any]:
    """The deploy record with ``threshold`` as a finite float; clear errors for unreadable or invalid files."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise VlmadError(f"cannot read {path}: {err.strerror or err}", "pass the deploy.json written by "
                         "`vlmad calibrate`") from None
    except ValueError as err:
        raise VlmadError(f"{path} is not valid JSON: {err}", "pass the deploy.json written by `vlmad calibrate`"
                         ) from None
    if not isinstance(data, dict) or "threshold" not in data:
        raise VlmadError(f"{path} has no \"threshold\"", "a deploy.json holds at least {\"threshold\": <float>}")
    try:
        threshold = float(data["threshold"])
    except (TypeError, ValueError):
        raise VlmadError(f"{path}: threshold {data['threshold']!r} is not a number") from None
    if not math.isfinite(threshold):
        raise VlmadError(f"{path}: threshold {threshold} is not finite")
    data["threshold"] = threshold
    return data
