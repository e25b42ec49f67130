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

**heatmap scale and pixel threshold.** ``vlmad calibrate`` also samples the pixel scores of the normal images:
their median and a high quantile become the fixed scale overlays are drawn on, and their ``1 - pixel_fp_rate``
quantile the pixel threshold of defect masks (:func:`pixel_calibration`).

``deploy.json``: format, validation and the detector fingerprint check live in :mod:`vlmad_runtime.deploy`
(one reader for detect, serve and every other consumer); :func:`deploy_record` builds a record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vlmad_runtime.deploy import (
    FORMAT_VERSION,
    MODES,
    Deployment,
    PixelCalibration,
    load_deploy,
    normalize,
    validate_deploy,
    write_deploy,
)
from vlmad_runtime.errors import ImageLoadError, VlmadError

__all__ = [
    "MODES",
    "Calibration",
    "CalibrationRequest",
    "CalibrationResult",
    "CalibrationSet",
    "Deployment",
    "calibrate_detector",
    "calibration_set",
    "check_calibration_source",
    "deploy_record",
    "f1_optimal_threshold",
    "load_deploy",
    "normal_quantile_threshold",
    "pixel_calibration",
    "rates_at",
    "score_images",
    "validate_deploy",
    "write_deploy",
]


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
        "mode": "normal-quantile",
        "quantile": float(quantile),
        "n_images": n,
        "k_below_threshold": below,
        "empirical_false_alarm_rate": float(np.mean(s >= threshold)),
        "min_achievable_rate": 1.0 / (n + 1),
        "score_range": [float(s[0]), float(s[-1])],
        "guarantee": "split-conformal: P(new normal score >= threshold) = (n + 1 - k) / (n + 1)",
    }
    if 1.0 / (n + 1) > 1.0 - quantile + 1e-12:
        details["note"] = (
            f"{n} normal image(s) cannot support a {100 * (1 - quantile):g} % false-alarm rate "
            f"(at best {100 / (n + 1):.1f} %); add held-out normals "
            f"(>= {int(math.ceil(1 / (1 - quantile))) - 1} needed)"
        )
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
    return {
        "false_alarm_rate": fp / n_norm if n_norm else None,
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "n_normal": n_norm,
        "n_anomalous": n_bad,
    }


def f1_optimal_threshold(scores: Sequence[float], labels: Sequence[bool]) -> Calibration:
    """F1-optimal threshold on a labelled split (ties: the higher threshold, i.e. fewer false alarms)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    if not y.any():
        raise VlmadError(
            "the validation split has no anomalous image: F1 is undefined",
            "use normal-quantile calibration (--normal-dir) for normal-only data",
        )
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
# deploy.json (format, validation and fingerprint matching: vlmad_runtime.deploy)

PIXEL_SAMPLES_PER_IMAGE = 4096
SCALE_HIGH_QUANTILE = 0.9999


def pixel_calibration(samples: Sequence[np.ndarray], fp_rate: float = 0.001) -> PixelCalibration:
    """Heatmap scale and pixel threshold from pixel scores of normal images.

    Scale: [median, max(q(0.9999), pixel threshold)] of the normal pixels, so a normal part is drawn cool and
    only pixels beyond what normal parts produce saturate. Pixel threshold: the (1 - ``fp_rate``) quantile, i.e.
    about ``fp_rate`` of a normal image's pixels are flagged by the defect mask."""
    if not 0.0 < fp_rate < 1.0:
        raise VlmadError(f"pixel false-positive rate must be in (0, 1), got {fp_rate}", "e.g. --pixel-fp-rate 0.001")
    pix = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples]) if samples else np.empty(0)
    pix = pix[np.isfinite(pix)]
    if pix.size == 0:
        raise VlmadError("no finite pixel score to calibrate the heatmap on", "check the weights (NaN outputs)")
    lo = float(np.median(pix))
    thr = float(np.quantile(pix, 1.0 - fp_rate))
    hi = max(float(np.quantile(pix, SCALE_HIGH_QUANTILE)), thr)
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-9)
    details = {
        "n_pixels": int(pix.size),
        "n_images": len(samples),
        "median": lo,
        "q99": float(np.quantile(pix, 0.99)),
        "max": float(pix.max()),
        "scale_rule": f"[median, max(q{SCALE_HIGH_QUANTILE}, pixel_threshold)] of normal pixels",
    }
    return PixelCalibration((lo, hi), thr, float(fp_rate), details)


def deploy_record(
    calibration: Calibration,
    method: str,
    class_name: str,
    detector_info: Mapping[str, Any],
    extra_calibration: Mapping[str, Any] | None = None,
    *,
    fingerprint: Mapping[str, Any],
    pixel: PixelCalibration | None = None,
) -> dict[str, Any]:
    """A deploy record (format of :mod:`vlmad_runtime.deploy`) for ``fingerprint``'s detector."""
    from vlmad_runtime.version import __version__

    cal = {**calibration.details, **dict(extra_calibration or {})}
    return {
        "format": FORMAT_VERSION,
        "threshold": float(calibration.threshold),
        "method": str(method),
        "class_name": str(class_name),
        "expected_false_alarm_rate": None
        if calibration.expected_false_alarm_rate is None
        else float(calibration.expected_false_alarm_rate),
        "calibration": cal,
        "fingerprint": normalize(dict(fingerprint)),
        "pixel": None if pixel is None else pixel.as_dict(),
        "detector": normalize(dict(detector_info)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vlmad_version": __version__,
    }


# ---------------------------------------------------------------------------------------------------------------
# scoring images (for calibration)


def score_images(
    detector: Any, paths: Sequence[Path], batch_size: int = 8, pixel_samples: list[np.ndarray] | None = None
) -> tuple[list[float | None], list[str]]:
    """Image scores of a ready detector (setup/fit done) for ``paths``; unreadable files give None + reason.

    With ``pixel_samples`` (a list), an evenly strided sample of each image's map pixels is appended to it (the
    normal pixel distribution that :func:`pixel_calibration` turns into a heatmap scale and pixel threshold)."""
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
            image_scores, maps = detector.predict(imgs).numpy()
            for i, s, amap in zip(idx, image_scores, maps, strict=True):
                scores[i] = float(s)
                if pixel_samples is not None:
                    flat = amap.ravel()
                    pixel_samples.append(flat[:: max(1, flat.size // PIXEL_SAMPLES_PER_IMAGE)].copy())
    return scores, errors


# ---------------------------------------------------------------------------------------------------------------
# one detector's deploy file (`vlmad calibrate`)


@dataclass
class CalibrationRequest:
    """What ``vlmad calibrate`` asks for: where the calibration images come from and how to pick the threshold."""

    class_name: str | None = None
    normal_dir: Path | None = None
    quantile: float = 0.99
    dataset: str | None = None
    root: Path | None = None
    category: str | None = None
    split: str | None = None
    mode: str | None = None
    shots: int = 0
    seed: int = 0
    limit: int | None = None
    batch_size: int = 8
    pixel_fp_rate: float = 0.001


@dataclass
class CalibrationSet:
    """The calibration images (labels for a labelled split, None for normals only), the references the
    deployment will use (never calibration images) and what the deploy file records about them."""

    mode: str
    class_name: str
    images: list[Path]
    labels: list[bool] | None
    refs: list[Path]
    extra: dict[str, Any]


def check_calibration_source(normal_dir: Path | None, dataset: str | None) -> None:
    """Exactly one source of calibration images."""
    if (normal_dir is None) == (dataset is None):
        raise VlmadError(
            "give either --normal-dir DIR or --dataset KIND --root PATH --category C",
            "--normal-dir: held-out normal images; --dataset: a labelled validation split",
        )


def _from_normal_dir(req: CalibrationRequest, refs: list[Path]) -> CalibrationSet:
    from vlmad.jobs import expand_images

    if req.mode not in (None, "normal-quantile"):
        raise VlmadError("--normal-dir only supports --mode normal-quantile", "use --dataset for f1-optimal")
    if not req.class_name:
        raise VlmadError("--class-name is required with --normal-dir", "e.g. --class-name bottle")
    if req.shots:
        raise VlmadError("--shots draws references from a dataset", "with --normal-dir pass --reference-dir")
    ref_set = {p.resolve() for p in refs}
    all_images = expand_images([req.normal_dir])
    images = [p for p in all_images if p.resolve() not in ref_set]
    extra = {
        "source": f"normal images in {req.normal_dir.resolve()}",
        "excluded_references": len(all_images) - len(images),
    }
    if req.limit:
        images = images[: req.limit]
    return CalibrationSet("normal-quantile", req.class_name, images, None, refs, extra)


def _from_dataset(req: CalibrationRequest, refs: list[Path]) -> CalibrationSet:
    """A labelled split (F1-optimal) or its normal images (normal-quantile); references drawn with --shots."""
    from vlmad.bench.protocol import limit_samples, select_references
    from vlmad.data import load_dataset

    if req.root is None or req.category is None:
        raise VlmadError("--dataset needs --root PATH and --category C")
    mode = req.mode or "f1-optimal"
    if mode not in ("f1-optimal", "normal-quantile"):
        raise VlmadError(f"unknown --mode {mode!r}", "use f1-optimal or normal-quantile")
    reader = load_dataset(req.dataset, req.root, [req.category])
    use_split = req.split or ("test" if mode == "f1-optimal" else "train")
    samples = reader.samples(req.category, use_split)
    extra: dict[str, Any] = {}
    if req.shots:
        if refs:
            raise VlmadError("--shots and --reference both given", "choose one way to pick references")
        order = select_references(reader.samples(req.category, "train"), req.shots, req.seed)
        refs = [s.image_path for s in order[: req.shots]]
        extra.update(reference_draw={"shots": req.shots, "seed": req.seed, "policy": "vlmad.bench reference policy"})
    ref_set = {p.resolve() for p in refs}
    samples = [s for s in samples if s.image_path.resolve() not in ref_set]
    if mode == "normal-quantile":
        samples = [s for s in samples if not s.is_anomalous]
    samples = limit_samples(samples, req.limit) if mode == "f1-optimal" else samples[: req.limit]
    root = str(Path(req.root).resolve())
    extra.update(
        source=f"{req.dataset} {root} / {req.category} / {use_split} split",
        dataset=req.dataset,
        root=root,
        category=req.category,
        split=use_split,
    )
    images, labels = [s.image_path for s in samples], [s.is_anomalous for s in samples]
    return CalibrationSet(mode, req.class_name or req.category, images, labels, refs, extra)


def calibration_set(req: CalibrationRequest, refs: list[Path]) -> CalibrationSet:
    """The images to calibrate on (checked before any model loads); ``refs`` are the deployment's references."""
    check_calibration_source(req.normal_dir, req.dataset)
    cset = _from_normal_dir(req, refs) if req.normal_dir is not None else _from_dataset(req, refs)
    if not cset.images:
        raise VlmadError("no calibration image left (after removing the references)", "add held-out images")
    return cset


@dataclass
class CalibrationResult:
    """The written deploy record, its threshold and pixel calibration, and the images that could not be read."""

    record: dict[str, Any]
    calibration: Calibration
    pixel: PixelCalibration | None
    failed: list[tuple[str, str]]


def calibrate_detector(
    detector: Any,
    cset: CalibrationSet,
    req: CalibrationRequest,
    out: Path,
    method: str | None = None,
    status: Callable[[str], AbstractContextManager] = lambda _message: nullcontext(),
) -> CalibrationResult:
    """Set the detector up for the class (and its references), score the calibration images, pick the threshold
    and the pixel calibration on the normal images, and write ``out``. ``status`` shows what is running."""
    from vlmad.fingerprint import detector_fingerprint, references_fingerprint
    from vlmad.methods.registry import default_method

    with status(f"text embeddings for {cset.class_name!r}"):
        detector.setup(cset.class_name)
    if cset.refs:
        with status(f"{len(cset.refs)}-shot reference memory"):
            detector.fit(cset.refs)
    images, labels, pixels = cset.images, cset.labels, []
    normal_images = set(images) if labels is None else {p for p, y in zip(images, labels, strict=True) if not y}
    with status(f"scoring {len(images)} calibration image(s)"):
        scores, errors = score_images(detector, images, req.batch_size, pixels)
    failed = [(str(p), e) for p, e in zip(images, errors, strict=True) if e]
    keep = [i for i, s in enumerate(scores) if s is not None]
    read = [p for p, e in zip(images, errors, strict=True) if not e]
    normal_pixels = [px for p, px in zip(read, pixels, strict=True) if p in normal_images]
    pixel = pixel_calibration(normal_pixels, req.pixel_fp_rate) if normal_pixels else None
    if cset.mode == "normal-quantile":
        cal = normal_quantile_threshold([scores[i] for i in keep], req.quantile)
    else:
        cal = f1_optimal_threshold([scores[i] for i in keep], [labels[i] for i in keep])
    extra = {**cset.extra, "references": [str(p.resolve()) for p in cset.refs]}
    extra["unreadable"] = [{"path": p, "reason": e} for p, e in failed]
    if detector.info().random_weights:
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        extra["warning"] = RANDOM_WEIGHTS_STAMP
    info = detector.info().as_dict()
    fingerprint = detector_fingerprint(info, cset.class_name, references_fingerprint(cset.refs))
    record = deploy_record(
        cal, method or default_method(), cset.class_name, info, extra, pixel=pixel, fingerprint=fingerprint
    )
    write_deploy(out, record)
    return CalibrationResult(record, cal, pixel, failed)
