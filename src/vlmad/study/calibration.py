"""Deployment thresholds: from held-out normal images (quantile) or a labelled validation split (F1-optimal).

A threshold turns a score into a decision (``score >= threshold`` -> anomalous, as ``vlmad detect --deploy`` and
the service do). It is only valid for the exact detector it was calibrated with (method, weights, prompts and, in
few-shot mode, the same reference images), so ``deploy.json`` records all of that.

**normal-quantile.** Scores of ``n`` normal images that the detector has not seen (for few-shot: not its
references). With ``k = ceil(q (n + 1))`` (capped at ``n``) the threshold is put between the ``k``-th and the
``k+1``-th smallest score (just above the largest when ``k = n``). For a new normal image exchangeable with the
calibration images, ``P(score >= threshold) = (n + 1 - k) / (n + 1)`` (split-conformal bound); that number is the
``expected_false_alarm_rate``. It cannot go below ``1 / (n + 1)``: 99 % needs at least 99 held-out normals, and a
smaller set is reported with a note rather than silently over-promised.

**f1-optimal.** Scores and labels of a labelled validation split; the threshold maximises F1 (anomalous =
positive), placed midway between the chosen score and the next lower one; the expected false-alarm rate is the
false-positive rate on the split's normal images (``None`` when it has none). Fitted and measured on the same
images, it is optimistic.

``deploy.json`` (fixed schema; tools rely on it)::

    {"threshold": float, "method": str, "class_name": str, "expected_false_alarm_rate": float | null,
     "calibration": {"mode": "normal-quantile" | "f1-optimal", "quantile"?: float, "n_images": int, ...},
     "detector": DetectorInfo.as_dict(), "created": ISO 8601, "vlmad_version": str}
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vlmad_runtime.errors import ImageLoadError, VlmadError

DEPLOY_KEYS = ("threshold", "method", "class_name", "expected_false_alarm_rate", "calibration", "detector",
               "created", "vlmad_version")
MODES = ("normal-quantile", "f1-optimal")


@dataclass
class Calibration:
    """A chosen threshold, its expected false-alarm rate and how it was obtained (the ``calibration`` dict)."""

    threshold: float
    expected_false_alarm_rate: float | None
    details: dict[str, Any]


def _finite(scores: Iterable[float | None]) -> np.ndarray:
    arr = np.asarray([s for s in scores if s is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def normal_quantile_threshold(scores: Sequence[float], quantile: float = 0.99) -> Calibration:
    """Threshold from scores of held-out normal images (see module docstring for the guarantee)."""
    if not 0.0 < quantile < 1.0:
        raise VlmadError(f"quantile must be in (0, 1), got {quantile}", "e.g. --quantile 0.99")
    s = np.sort(_finite(scores))
    n = int(s.size)
    if n == 0:
        raise VlmadError("no normal-image score to calibrate on", "pass a folder with held-out normal images")
    k = min(n, int(math.ceil(quantile * (n + 1) - 1e-9)))
    if k < n and s[k - 1] < s[k]:
        threshold = float((s[k - 1] + s[k]) / 2.0)
    else:
        threshold = float(np.nextafter(s[k - 1], np.inf))
    below = int(np.sum(s < threshold))
    expected = (n + 1 - below) / (n + 1)
    details: dict[str, Any] = {
        "mode": "normal-quantile", "quantile": float(quantile), "n_images": n,
        "k_below_threshold": below,
        "empirical_false_alarm_rate": float(np.mean(s >= threshold)),
        "min_achievable_rate": 1.0 / (n + 1),
        "score_range": [float(s[0]), float(s[-1])],
        "guarantee": "split-conformal: P(new normal score >= threshold) = (n + 1 - k) / (n + 1)",
    }
    if 1.0 / (n + 1) > 1.0 - quantile + 1e-12:
        details["note"] = (f"{n} normal image(s) cannot support a {100 * (1 - quantile):g} % false-alarm rate "
                           f"(at best {100 / (n + 1):.1f} %); add held-out normals "
                           f"(>= {int(math.ceil(1 / (1 - quantile))) - 1} needed)")
    return Calibration(threshold, float(expected), details)


def rates_at(threshold: float, scores: Sequence[float], labels: Sequence[bool]) -> dict[str, float | None]:
    """Decision quality of ``score >= threshold`` on labelled scores (anomalous = positive)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    pred = s >= threshold
    tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    n_norm, n_bad = int(np.sum(~y)), int(np.sum(y))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / n_bad if n_bad else None
    f1 = (2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else None
    return {"false_alarm_rate": fp / n_norm if n_norm else None, "recall": recall, "precision": precision,
            "f1": f1, "n_normal": n_norm, "n_anomalous": n_bad}


def f1_optimal_threshold(scores: Sequence[float], labels: Sequence[bool]) -> Calibration:
    """F1-optimal threshold on a labelled split (ties: the higher threshold, i.e. fewer false alarms)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    if not y.any():
        raise VlmadError("the validation split has no anomalous image: F1 is undefined",
                         "use normal-quantile calibration (--normal-dir) for normal-only data")
    values = np.unique(s)[::-1]  # descending candidate cut points: anomalous iff score >= value
    best_f1, best_i = -1.0, 0
    for i, v in enumerate(values):
        pred = s >= v
        tp = int(np.sum(pred & y))
        fp = int(np.sum(pred & ~y))
        fn = int(np.sum(~pred & y))
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best_f1 + 1e-12:
            best_f1, best_i = f1, i
    cut = values[best_i]
    lower = values[best_i + 1] if best_i + 1 < len(values) else None
    threshold = float((cut + lower) / 2.0) if lower is not None else float(np.nextafter(cut, -np.inf))
    rates = rates_at(threshold, s, y)
    details = {"mode": "f1-optimal", "n_images": int(s.size), **rates}
    return Calibration(threshold, rates["false_alarm_rate"], details)


# ---------------------------------------------------------------------------------------------------------------
# deploy.json


def deploy_record(calibration: Calibration, method: str, class_name: str, detector_info: Mapping[str, Any],
                  extra_calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from vlmad_runtime.version import __version__

    cal = {**calibration.details, **dict(extra_calibration or {})}
    return {
        "threshold": float(calibration.threshold),
        "method": str(method),
        "class_name": str(class_name),
        "expected_false_alarm_rate": None if calibration.expected_false_alarm_rate is None
        else float(calibration.expected_false_alarm_rate),
        "calibration": cal,
        "detector": dict(detector_info),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vlmad_version": __version__,
    }


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    strip = ("created", "vlmad_version")
    return ({k: v for k, v in a.items() if k not in strip}
            == json.loads(json.dumps({k: v for k, v in b.items() if k not in strip})))


def write_deploy(path: str | Path, record: Mapping[str, Any]) -> bool:
    """Write ``deploy.json`` atomically; an existing file with the same content (but its date) is left alone.

    Returns True when the file was (re)written."""
    from vlmad_runtime.fileio import atomic_write_text

    validate_deploy(record)
    p = Path(path)
    if p.is_file():
        try:
            if _same(json.loads(p.read_text()), record):
                return False
        except (OSError, ValueError):
            pass
    atomic_write_text(p, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return True


def validate_deploy(data: Any, where: str = "deploy.json") -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise VlmadError(f"{where} must hold a JSON object")
    missing = [k for k in DEPLOY_KEYS if k not in data]
    if missing:
        raise VlmadError(f"{where} lacks {', '.join(missing)}", "write it with `vlmad calibrate ... --out deploy.json`")
    try:
        threshold = float(data["threshold"])
    except (TypeError, ValueError):
        raise VlmadError(f"{where}: threshold {data['threshold']!r} is not a number") from None
    if not math.isfinite(threshold):
        raise VlmadError(f"{where}: threshold is not finite")
    far = data["expected_false_alarm_rate"]
    if far is not None and not (isinstance(far, (int, float)) and 0.0 <= float(far) <= 1.0):
        raise VlmadError(f"{where}: expected_false_alarm_rate must be null or in [0, 1], got {far!r}")
    cal = data["calibration"]
    if not isinstance(cal, Mapping) or cal.get("mode") not in MODES or not isinstance(cal.get("n_images"), int):
        raise VlmadError(f"{where}: calibration must hold mode ({' or '.join(MODES)}) and n_images")
    if not isinstance(data["detector"], Mapping):
        raise VlmadError(f"{where}: detector must be an object (DetectorInfo.as_dict())")
    return dict(data)


@dataclass
class Deployment:
    """A loaded ``deploy.json``: ``decide(score)`` -> "anomalous" | "normal"."""

    threshold: float
    method: str
    class_name: str
    expected_false_alarm_rate: float | None
    record: dict[str, Any]

    def decide(self, score: float) -> str:
        return "anomalous" if float(score) >= self.threshold else "normal"


def load_deploy(path: str | Path) -> Deployment:
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise VlmadError(f"cannot read {p}: {err}", "pass a deploy.json written by `vlmad calibrate`") from err
    rec = validate_deploy(data, str(p))
    return Deployment(float(rec["threshold"]), str(rec["method"]), str(rec["class_name"]),
                      rec["expected_false_alarm_rate"], rec)


# ---------------------------------------------------------------------------------------------------------------
# scoring images (for calibration)


def score_images(detector: Any, paths: Sequence[Path], batch_size: int = 8
                 ) -> tuple[list[float | None], list[str]]:
    """Image scores of a ready detector (setup/fit done) for ``paths``; unreadable files give None + reason."""
    from vlmad_runtime.images import load_image

    scores: list[float | None] = [None] * len(paths)
    errors = [""] * len(paths)
    for start in range(0, len(paths), max(1, batch_size)):
        idx, imgs = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                imgs.append(load_image(paths[i]))
                idx.append(i)
            except ImageLoadError as err:
                errors[i] = err.reason
        if imgs:
            pred = detector.predict(imgs)
            for i, s in zip(idx, pred.image_scores.detach().float().cpu().numpy(), strict=True):
                scores[i] = float(s)
    return scores, errors
