"""The grid's vocabulary: datasets, method specs, the run configuration and the planned rows (no model, no I/O).

A method spec is ``{"method": registry name, "label": unique display label, "kwargs": create_detector keyword
arguments}``; :class:`BenchmarkConfig` is everything a grid run needs; :class:`RowPlan` is one row of the grid
with its key (see :func:`vlmad.bench.runner.plan_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad.bench import protocol as P
from vlmad.methods.base import Detector
from vlmad_runtime.errors import VlmadError

DetectorFactory = Callable[[dict[str, Any]], Detector]


@dataclass
class DatasetSpec:
    """A dataset of the grid: reader kind ("mvtec", "visa", "folder"), root, optional category subset."""

    kind: str
    root: str | Path
    categories: list[str] | None = None


def method_spec(method: str, label: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """A method of the grid: registry name, a unique display label and ``create_detector`` keyword arguments."""
    return {"method": method, "label": label or method, "kwargs": dict(kwargs)}


def normalize_method_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, str):
        return method_spec(spec)
    if "method" not in spec:
        raise VlmadError(f"method spec {dict(spec)!r} has no 'method'", "e.g. {'method': 'winclip', 'kwargs': {}}")
    out = {k: v for k, v in spec.items() if k not in ("method", "label", "kwargs")}
    out.update(method=spec["method"], label=spec.get("label") or spec["method"], kwargs=dict(spec.get("kwargs") or {}))
    return out


def build_detector_from_spec(spec: Mapping[str, Any]) -> Detector:
    """Default detector factory: ``create_detector(spec["method"], **spec["kwargs"])``."""
    from vlmad.methods.registry import create_detector

    return create_detector(spec["method"], **dict(spec["kwargs"]))


@dataclass
class BenchmarkConfig:
    """Everything a grid run needs. ``methods`` are spec dicts (see :func:`method_spec`); ``detector_factory``
    turns one (with runtime keys ``device``/``batch_size``/``use_cache`` filled in) into a Detector, so other
    front ends (a study over prompt sets, say) reuse the runner with their own specs and ``tags``."""

    out: str | Path
    datasets: list[DatasetSpec]
    methods: list[Any]
    shots: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    batch_size: int = 8
    num_workers: int = 0
    limit: int | None = None
    eval_resolution: str | int = "input"
    aupro: str = "exact"
    on_error: str = "skip"
    force_protocol: bool = False
    retry_failed: bool = False
    use_cache: bool = True
    flops: bool = True
    progress: bool = False
    tags: dict[str, Any] = field(default_factory=dict)
    detector_factory: DetectorFactory | None = None
    argv: list[str] | None = None
    # where rows run (vlmad.bench.executors): "local" or "ray" with its address and per-row resources
    executor: str = "local"
    ray_address: str | None = None
    cpus_per_row: float = 1.0
    gpus_per_row: float = 0.0
    row_retries: int = 2
    ray_mode: str = "actors"  # or "tasks": a fresh worker per row (benchmarks/ray_overhead.py compares them)

    def public_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("detector_factory",)}
        d["datasets"] = [ds.__dict__ for ds in self.datasets]
        d["detector_factory"] = (
            None
            if self.detector_factory is None
            else getattr(self.detector_factory, "__qualname__", repr(self.detector_factory))
        )
        return P.canonical(d)


@dataclass
class RowPlan:
    key: str
    spec: dict[str, Any]
    dataset: DatasetSpec
    category: str
    shots: int
    seed: int | None
    n_test: int


# ---------------------------------------------------------------------------------------------------------------


def ds_id(ds: DatasetSpec) -> str:
    """The key of a dataset's reader: kind and resolved root."""
    return f"{ds.kind}:{ds.root}"
