"""Prometheus text exposition (format 0.0.4) without a client library: counters, gauges and histograms.

Thread-safe (the model worker thread observes batch sizes while the event loop counts requests). Label values are
escaped; callers keep label cardinality bounded (route templates, not raw paths; error codes, not messages).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

LabelKey = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(key: LabelKey, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = list(key) + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        self.name, self.help, self._lock = name, help_text, lock

    @staticmethod
    def key(labels: dict[str, str] | None) -> LabelKey:
        return tuple(sorted((k, str(v)) for k, v in (labels or {}).items()))

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, lock: threading.Lock) -> None:
        super().__init__(name, help_text, lock)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        k = self.key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self.key(labels), 0.0)

    def total(self) -> float:
        with self._lock:
            return sum(self._values.values())

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(k)} {_fmt(v)}" for k, v in items]


class Gauge(_Metric):
    """A gauge set directly, or read from a callback at scrape time."""

    kind = "gauge"

    def __init__(
        self, name: str, help_text: str, lock: threading.Lock, func: Callable[[], float] | None = None
    ) -> None:
        super().__init__(name, help_text, lock)
        self._values: dict[LabelKey, float] = {}
        self._func = func

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self.key(labels)] = float(value)

    def render(self) -> list[str]:
        if self._func is not None:
            try:
                value = float(self._func())
            except Exception:  # a broken callback must not break the scrape
                value = float("nan")
            return self.header() + [f"{self.name} {_fmt(value) if not math.isnan(value) else 'NaN'}"]
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(k)} {_fmt(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, lock: threading.Lock, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text, lock)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[LabelKey, list[float]] = {}  # per label set: bucket counts..., count, sum

    def observe(self, value: float, **labels: str) -> None:
        k = self.key(labels)
        with self._lock:
            s = self._series.get(k)
            if s is None:
                s = self._series[k] = [0.0] * (len(self.buckets) + 2)
            for i, b in enumerate(self.buckets):
                if value <= b:
                    s[i] += 1
            s[-2] += 1
            s[-1] += value

    def count_and_sum(self, **labels: str) -> tuple[float, float]:
        with self._lock:
            if labels:
                s = self._series.get(self.key(labels))
                return (s[-2], s[-1]) if s else (0.0, 0.0)
            return (sum(s[-2] for s in self._series.values()), sum(s[-1] for s in self._series.values()))

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(s)) for k, s in self._series.items())
        lines = self.header()
        for k, s in items:
            for b, c in zip(self.buckets, s, strict=False):
                lines.append(f"{self.name}_bucket{_labels(k, [('le', _fmt(b))])} {_fmt(c)}")
            lines.append(f"{self.name}_bucket{_labels(k, [('le', '+Inf')])} {_fmt(s[-2])}")
            lines.append(f"{self.name}_count{_labels(k)} {_fmt(s[-2])}")
            lines.append(f"{self.name}_sum{_labels(k)} {_fmt(s[-1])}")
        return lines


class Registry:
    """The service's metrics; ``render()`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: list[_Metric] = []

    def counter(self, name: str, help_text: str) -> Counter:
        return self._add(Counter(name, help_text, self._lock))

    def gauge(self, name: str, help_text: str, func: Callable[[], float] | None = None) -> Gauge:
        return self._add(Gauge(name, help_text, self._lock, func))

    def histogram(self, name: str, help_text: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help_text, self._lock, buckets))

    def _add(self, metric):
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class ServiceMetrics:
    """The named metrics of ``vlmad serve``."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.counter("vlmad_http_requests_total", "HTTP requests by route template, method and status.")
        self.latency = r.histogram(
            "vlmad_http_request_duration_seconds", "Wall time from request start to response start, by route template."
        )
        self.errors = r.counter("vlmad_errors_total", "Error responses by error code.")
        self.images = r.counter("vlmad_images_scored_total", "Images scored, by reference mode (zero-shot/few-shot).")
        self.batch_size = r.histogram("vlmad_batch_size", "Images per model forward (dynamic batches).", BATCH_BUCKETS)
        self.inference = r.histogram("vlmad_inference_duration_seconds", "Model time per dynamic batch.")
        self.queue_wait = r.histogram("vlmad_queue_wait_seconds", "Time a detect request waits for the model worker.")
        self.reference_fits = r.counter(
            "vlmad_reference_fits_total", "Reference memories computed (detector.fit) per reference set version."
        )
        self.reference_cache = r.counter(
            "vlmad_reference_memory_cache_total", "Reference-memory lookups on the worker by result (hit/miss)."
        )
        self.reference_swaps = r.counter(
            "vlmad_reference_swaps_total", "Times the worker switched the detector to another reference memory."
        )

    def add_gauge(self, name: str, help_text: str, func: Callable[[], float]) -> Gauge:
        return self.registry.gauge(name, help_text, func)

    def render(self) -> str:
        return self.registry.render()
