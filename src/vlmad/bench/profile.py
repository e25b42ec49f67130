"""Efficiency profile: time per image, memory, parameters, FLOPs, setup costs, and the environment.

Measured during the benchmark itself (no separate pass except one FLOP count per method and shot count):

* **ms/image, images/s**: wall time of ``predict`` calls only (data loading is timed separately, in the
  loader), warm: the first batch of each row is excluded; rows with a single batch report the cold number and
  are marked so. On CUDA the device is synchronised before each clock read.
* **memory**: on CPU the resident set size is sampled every few ms by a thread during each ``predict`` call;
  the row records the largest increase over the RSS right before the call, plus the process's lifetime peak
  (``getrusage``). On CUDA: ``torch.cuda.max_memory_allocated`` after a reset per row.
* **parameters**: the CLIP backbone (open_clip model) and the method's own modules (e.g. trained heads),
  counted once each even when shared.
* **GFLOPs/image**: ``torch.utils.flop_counter.FlopCounterMode`` around a one-image ``predict`` (counts matmuls,
  convolutions and attention; sparse aggregation and elementwise work are not counted).
* **setup**: text embeddings for a class (``setup``; a text-cache hit makes it near zero: recorded), reference
  memory (``fit``), and model construction.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

MB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------------------------------------------
# memory


def current_rss() -> int | None:
    """Resident set size of this process in bytes (psutil, else /proc), None when unavailable."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_peak_rss() -> int | None:
    """Lifetime peak RSS of this process in bytes: ``VmHWM`` on Linux (its own address space; ``ru_maxrss``
    carries a parent's peak over fork+exec), else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class MemorySampler:
    """Background RSS sampler: ``start()``/``stop()`` around a call gives the peak increase over the start RSS."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.baseline: int | None = None
        self.peak: int | None = None

    def start(self) -> None:
        self.baseline = current_rss()
        self.peak = self.baseline
        if self.baseline is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = current_rss()
            if rss is not None and (self.peak is None or rss > self.peak):
                self.peak = rss

    def stop(self) -> int | None:
        """Stop sampling; the peak increase in bytes over the RSS at ``start()``."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        rss = current_rss()
        if rss is not None and self.peak is not None:
            self.peak = max(self.peak, rss)
        if self.baseline is None or self.peak is None:
            return None
        return max(0, self.peak - self.baseline)


def cuda_device(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()


def sync(device: str | torch.device | None) -> None:
    if cuda_device(device):
        torch.cuda.synchronize(torch.device(device))


# ---------------------------------------------------------------------------------------------------------------
# model size


def _modules_of(obj: Any) -> Iterable[nn.Module]:
    if isinstance(obj, nn.Module):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            if isinstance(v, nn.Module):
                yield v
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            if isinstance(v, nn.Module):
                yield v


def count_parameters(detector: Any) -> dict[str, int]:
    """``{"backbone": n, "method": n, "total": n}``: the backbone's open_clip model, then every other module the
    detector holds (attributes, dicts and lists of modules); each parameter counted once."""
    seen: set[int] = set()

    def count(modules: Iterable[nn.Module]) -> int:
        n = 0
        for module in modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        return n

    backbone = getattr(detector, "backbone", None)
    bb_modules = [backbone.model] if isinstance(getattr(backbone, "model", None), nn.Module) else []
    n_backbone = count(bb_modules)
    if backbone is not None:  # fused copies the backbone keeps for its fast path are the same weights
        for value in vars(backbone).values():
            for module in _modules_of(value):
                for p in module.parameters():
                    seen.add(id(p))
    n_method = count(m for v in vars(detector).values() for m in _modules_of(v))
    return {"backbone": n_backbone, "method": n_method, "total": n_backbone + n_method}


def state_bytes(detector: Any) -> int:
    """Bytes of plain tensors the detector holds (text embeddings, reference memory, index buffers)."""
    total = 0
    seen: set[int] = set()

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter) and id(t) not in seen:
            seen.add(id(t))
            if t.is_sparse:
                total += t._values().numel() * t.element_size() + t._indices().numel() * 8
            else:
                total += t.numel() * t.element_size()

    for value in vars(detector).values():
        if isinstance(value, Mapping):
            for v in value.values():
                add(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                add(v)
        else:
            add(value)
    return total


def flops_per_image(detector: Any, one_input: Any) -> float | None:
    """GFLOPs of one ``predict`` on one image (FlopCounterMode), None when the counter fails."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover - very old torch
        return None
    try:
        with FlopCounterMode(display=False) as counter:
            detector.predict(one_input)
        return counter.get_total_flops() / 1e9
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------------
# environment


def environment(device: str | None = None) -> dict[str, Any]:
    import numpy

    from vlmad_runtime.version import __version__

    env: dict[str, Any] = {
        "vlmad": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    env["open_clip"] = _dist_version("open_clip_torch")  # without importing it (slow: torchvision)
    if device is not None:
        env["device"] = str(device)
        if cuda_device(device):
            dev = torch.device(device)
            env["cuda_device_name"] = torch.cuda.get_device_name(dev)
            env["cuda_version"] = torch.version.cuda
    return env


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
