"""What ``vlmad serve`` configures: :class:`ServeConfig`, and how a deploy.json relates to the served model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad_runtime.deploy import NOT_CALIBRATED_NOTE, Deployment
from vlmad_runtime.drawing import MapScale
from vlmad_runtime.serve.guard import LOOPBACK_HOSTS
from vlmad_runtime.serve.limits import Limits


@dataclass
class ServeConfig:
    """Everything ``vlmad serve`` passes to the app besides the detector."""

    class_name: str
    data_dir: Path
    threshold: float | None = None
    deploy: dict[str, Any] | None = None  # the deploy.json content (for mismatch warnings)
    deploy_path: str | None = None
    deployment: Deployment | None = None  # the checked deploy file: its fingerprint is matched per request
    force_deploy: bool = False  # decide even where the fingerprint differs (labelled "not calibrated")
    api_key: str | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    limits: Limits = field(default_factory=Limits)
    memory_cache_bytes: int = 1 << 30
    #: Host header names served (``*``: any); see vlmad_runtime.serve.guard
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    #: browser origins (``scheme://host[:port]``) allowed to POST/DELETE besides the service's own page
    allowed_origins: tuple[str, ...] = ()
    #: set when the served model cannot take reference sets (a bundle): uploads and ?references= get this 409
    references_refusal: str | None = None


def deploy_warnings(deploy: dict[str, Any] | None, info: dict[str, Any], class_name: str) -> list[str]:
    """Where the calibrated threshold was computed for something other than what is served."""
    if not deploy:
        return []
    out = []

    def base(method: Any) -> str:
        return str(method or "").rstrip("+")

    if deploy.get("method") is not None and base(deploy["method"]) != base(info.get("method")):
        out.append(
            f"deploy.json threshold was calibrated for method {deploy['method']!r}, "
            f"but this server runs {base(info.get('method'))!r}"
        )
    if deploy.get("class_name") is not None and str(deploy["class_name"]) != class_name:
        out.append(
            f"deploy.json threshold was calibrated for class {deploy['class_name']!r}, "
            f"but this server scores {class_name!r}"
        )
    det = deploy.get("detector") if isinstance(deploy.get("detector"), dict) else {}
    for key in ("model", "weights_id", "prompt_set"):
        if det.get(key) is not None and info.get(key) is not None and str(det[key]) != str(info[key]):
            out.append(
                f"deploy.json threshold was calibrated with {key} {det[key]!r}, but this server uses {info[key]!r}"
            )
    shots = det.get("shots")
    if isinstance(shots, int) and shots > 0:
        out.append(
            f"deploy.json threshold was calibrated in {shots}-shot mode with specific reference images: its "
            "decisions only hold for requests that use a reference set of those images"
        )
    return out


#: without a deploy file heatmaps are drawn on this absolute scale (scores are in [0, 1]), never per image
UNCALIBRATED_SCALE = MapScale(0.0, 1.0, "absolute [0, 1], not calibrated: start the service with --deploy")


def map_scale(config: ServeConfig) -> tuple[MapScale, float | None]:
    """The heatmap scale and pixel threshold of the service (calibrated ones from the deploy file)."""
    dep = config.deployment
    if dep is not None and dep.pixel is not None:
        n = dep.pixel.details.get("n_images", "?")
        return MapScale(*dep.pixel.map_scale, f"calibrated on {n} normal image(s)"), dep.pixel.pixel_threshold
    return UNCALIBRATED_SCALE, None


def decide(config: ServeConfig, running: Callable[[], dict[str, Any]], score: float) -> dict[str, Any]:
    """Decision fields of a response: the deploy file's fingerprint must match ``running()``, the fingerprint of
    the model as used by this request (its reference set included); otherwise no decision, or a labelled one
    under --force-deploy."""
    dep = config.deployment
    if dep is None:
        threshold = config.threshold
        decision = None if threshold is None else ("anomalous" if score >= threshold else "normal")
        return {"decision": decision, "threshold": threshold, "calibrated": None, "decision_note": None}
    diffs = dep.mismatches(running())
    if not diffs:
        return {"decision": dep.decide(score), "threshold": dep.threshold, "calibrated": True, "decision_note": None}
    fields = ", ".join(d[0] for d in diffs)
    if config.force_deploy:
        return {
            "decision": dep.decide(score),
            "threshold": dep.threshold,
            "calibrated": False,
            "decision_note": f"{NOT_CALIBRATED_NOTE} (differs: {fields})",
        }
    return {
        "decision": None,
        "threshold": dep.threshold,
        "calibrated": False,
        "decision_note": f"{NOT_CALIBRATED_NOTE} (differs: {fields}): no decision; recalibrate with "
        "`vlmad calibrate` using these reference images",
    }


def deploy_summary(config: ServeConfig) -> dict[str, Any] | None:
    if config.deploy is None:
        return None
    d = config.deploy
    cal = d.get("calibration") if isinstance(d.get("calibration"), dict) else {}
    return {
        "path": config.deploy_path,
        "threshold": config.threshold,
        "method": d.get("method"),
        "class_name": d.get("class_name"),
        "expected_false_alarm_rate": d.get("expected_false_alarm_rate"),
        "calibration_mode": cal.get("mode"),
        "created": d.get("created"),
    }


def service_version() -> str:
    from vlmad_runtime.version import __version__

    return __version__
