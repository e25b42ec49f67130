"""Deploy files (deploy.json): the one module that reads, validates, writes and matches them.

A threshold turns a score into a decision, and it only means something for the exact detector it was calibrated
on: same method, weights, input size, precision, prompts, class, options that change scores and, in few-shot
mode, the same reference images. ``vlmad calibrate`` (and ``vlmad study``) therefore record the detector's
**protocol fingerprint** next to the threshold; ``vlmad detect --deploy``, ``vlmad serve --deploy`` and every
other consumer compare it with the fingerprint of the detector they run (:func:`check_fingerprint`) and refuse a
mismatch with a :class:`DeployMismatchError` naming every differing field and the command that recalibrates.

Format ``FORMAT_VERSION`` (2)::

    {"format": 2, "threshold": float, "method": str, "class_name": str,
     "expected_false_alarm_rate": float | null,
     "calibration": {"mode": "normal-quantile" | "f1-optimal", "n_images": int, ...},
     "fingerprint": {field: JSON value, ...},          # compared field by field
     "pixel": null | {"map_scale": [lo, hi], "pixel_threshold": float, "pixel_fp_rate": float, ...},
     "detector": {...}, "created": ISO 8601, "vlmad_version": str}

``pixel`` holds the calibrated heatmap scale (normal pixels' median and a high quantile: overlays are drawn on
that fixed scale) and the pixel threshold at the target false-positive pixel rate (defect masks). Numbers must be
finite JSON numbers: ``true`` or ``"0.5"`` are refused, never coerced. This module is torch-free (vlmad-runtime).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmad_runtime.errors import VlmadError

FORMAT_VERSION = 2
MODES = ("normal-quantile", "f1-optimal")
REQUIRED_KEYS = (
    "format",
    "threshold",
    "method",
    "class_name",
    "expected_false_alarm_rate",
    "calibration",
    "fingerprint",
    "detector",
    "created",
    "vlmad_version",
)
NOT_CALIBRATED_NOTE = "threshold not calibrated for this detector"
RECALIBRATE = (
    "recalibrate for this detector: vlmad calibrate -c CLASS --normal-dir HELD_OUT_GOOD/ "
    "[--reference-dir REFS/] <the same --method/--model/--checkpoint/--precision/--prompt-set/--heads "
    "options as detect> --out deploy.json"
)


class DeployMismatchError(VlmadError):
    """The deploy file was calibrated on another detector; ``differences`` lists (field, recorded, running)."""

    def __init__(self, where: str, differences: list[tuple[str, Any, Any]], hint: str = RECALIBRATE) -> None:
        self.differences = differences
        lines = "; ".join(f"{k}: calibrated {_short(a)}, running {_short(b)}" for k, a, b in differences)
        super().__init__(
            f"{where} was calibrated for another detector ({len(differences)} field(s) differ: {lines})",
            f"{hint} (or pass --force-deploy to run anyway, every decision labelled '{NOT_CALIBRATED_NOTE}')",
        )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finite_number(value: Any, what: str, where: str = "deploy.json") -> float:
    """``value`` as a float when it is a finite JSON number; bool, str and NaN/inf raise (never coerced)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VlmadError(
            f"{where}: {what} must be a JSON number, got {value!r}",
            'write it as a number, e.g. "threshold": 0.57 (not true, not "0.57")',
        )
    if not math.isfinite(float(value)):
        raise VlmadError(f"{where}: {what} is not finite ({value!r})", RECALIBRATE)
    return float(value)


def normalize(value: Any) -> Any:
    """JSON round trip: tuples become lists, keys strings, so a live fingerprint compares equal to a stored one."""
    return json.loads(json.dumps(value, sort_keys=True))


def fingerprint_differences(recorded: Mapping[str, Any], running: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every field whose value differs (a field missing on one side counts as ``None``), in a stable order."""
    rec, run = normalize(dict(recorded)), normalize(dict(running))
    keys = list(rec) + [k for k in run if k not in rec]
    return [(k, rec.get(k), run.get(k)) for k in keys if rec.get(k) != run.get(k)]


@dataclass
class PixelCalibration:
    """Heatmap scale (lo, hi) for overlays and the pixel threshold for defect masks."""

    map_scale: tuple[float, float]
    pixel_threshold: float
    pixel_fp_rate: float
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.details,
            "map_scale": list(self.map_scale),
            "pixel_threshold": self.pixel_threshold,
            "pixel_fp_rate": self.pixel_fp_rate,
        }


@dataclass
class Deployment:
    """A validated deploy file: ``decide(score)`` and ``check(running_fingerprint)``."""

    threshold: float
    method: str
    class_name: str
    expected_false_alarm_rate: float | None
    fingerprint: dict[str, Any]
    pixel: PixelCalibration | None
    record: dict[str, Any]
    where: str = "deploy.json"

    def decide(self, score: float) -> str:
        """ "anomalous" iff ``score >= threshold``; a non-finite score is an error, never a decision."""
        if not math.isfinite(float(score)):
            raise VlmadError(f"non-finite score {score!r}: no decision", "check the weights (NaN/inf outputs)")
        return "anomalous" if float(score) >= self.threshold else "normal"

    def __getitem__(self, key: str) -> Any:
        """A field of the validated record (``dep["threshold"]``), as callers of the old dict reader read it."""
        return self.threshold if key == "threshold" else self.record[key]

    def mismatches(self, running: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        return fingerprint_differences(self.fingerprint, running)

    def check(self, running: Mapping[str, Any], force: bool = False) -> list[tuple[str, Any, Any]]:
        """Raise :class:`DeployMismatchError` when ``running`` differs, unless ``force`` (then return the diffs)."""
        diffs = self.mismatches(running)
        if diffs and not force:
            raise DeployMismatchError(self.where, diffs)
        return diffs


def _pixel(data: Any, where: str) -> PixelCalibration | None:
    if data is None:
        return None
    if not isinstance(data, Mapping) or not isinstance(data.get("map_scale"), list) or len(data["map_scale"]) != 2:
        raise VlmadError(
            f"{where}: pixel must be null or hold map_scale [lo, hi], pixel_threshold, pixel_fp_rate", RECALIBRATE
        )
    lo, hi = (finite_number(v, "pixel.map_scale", where) for v in data["map_scale"])
    if not hi > lo:
        raise VlmadError(f"{where}: pixel.map_scale needs lo < hi, got {[lo, hi]}", RECALIBRATE)
    rate = finite_number(data.get("pixel_fp_rate"), "pixel.pixel_fp_rate", where)
    details = {k: v for k, v in data.items() if k not in ("map_scale", "pixel_threshold", "pixel_fp_rate")}
    return PixelCalibration(
        (lo, hi), finite_number(data.get("pixel_threshold"), "pixel.pixel_threshold", where), rate, details
    )


def validate_deploy(data: Any, where: str = "deploy.json") -> Deployment:
    """Check every field of a deploy record (format, numbers, calibration, fingerprint); clear errors."""
    if not isinstance(data, Mapping):
        raise VlmadError(f"{where} must hold a JSON object", RECALIBRATE)
    if data.get("format") != FORMAT_VERSION:
        found = data.get("format", "none (vlmad <= 0.1 or hand-written)")
        raise VlmadError(
            f"{where} has deploy format {found}, this vlmad reads format {FORMAT_VERSION} only: older "
            "files do not record which detector they were calibrated on",
            RECALIBRATE,
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise VlmadError(f"{where} lacks {', '.join(missing)}", RECALIBRATE)
    threshold = finite_number(data["threshold"], "threshold", where)
    far = data["expected_false_alarm_rate"]
    if far is not None and not 0.0 <= finite_number(far, "expected_false_alarm_rate", where) <= 1.0:
        raise VlmadError(f"{where}: expected_false_alarm_rate must be null or in [0, 1], got {far!r}")
    cal = data["calibration"]
    if (
        not isinstance(cal, Mapping)
        or cal.get("mode") not in MODES
        or isinstance(cal.get("n_images"), bool)
        or not isinstance(cal.get("n_images"), int)
    ):
        raise VlmadError(f"{where}: calibration must hold mode ({' or '.join(MODES)}) and n_images", RECALIBRATE)
    for key in ("fingerprint", "detector"):
        if not isinstance(data[key], Mapping) or (key == "fingerprint" and not data[key]):
            raise VlmadError(f"{where}: {key} must be a non-empty object", RECALIBRATE)
    return Deployment(
        threshold,
        str(data["method"]),
        str(data["class_name"]),
        None if far is None else float(far),
        dict(data["fingerprint"]),
        _pixel(data.get("pixel"), where),
        dict(data),
        where,
    )


def load_deploy(path: str | Path) -> Deployment:
    """Read and validate a deploy file (see the module docstring for the format)."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except OSError as err:
        raise VlmadError(
            f"cannot read {p}: {err.strerror or err}", "pass the deploy.json written by `vlmad calibrate`"
        ) from None
    except ValueError as err:
        raise VlmadError(f"{p} is not valid JSON: {err}", "pass the deploy.json written by `vlmad calibrate`") from None
    return validate_deploy(data, str(p))


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "created"} == normalize({k: v for k, v in b.items() if k != "created"})


def write_deploy(path: str | Path, record: Mapping[str, Any]) -> bool:
    """Validate and write atomically; an existing file equal but for its date is left alone (True: written)."""
    from vlmad_runtime.fileio import atomic_write_text

    validate_deploy(record)
    p = Path(path)
    if p.is_file():
        try:
            if _same(json.loads(p.read_text()), record):
                return False
        except (OSError, ValueError):
            pass
    atomic_write_text(p, json.dumps(record, indent=2) + "\n")
    return True
