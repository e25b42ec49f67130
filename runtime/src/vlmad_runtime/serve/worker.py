"""The model worker: one served model, one thread, dynamic batches per reference set.

Every call into the model (load, prepare, fit, predict, reference swaps; :mod:`vlmad_runtime.serve.model`) runs on the
batcher's worker thread, so the model never sees two threads. A batch carries one key, the reference set ``(name,
version)`` or ``None`` (zero-shot); before predicting, the worker makes that set's memory active: a cache hit restores
the memory computed earlier (attribute swap), a miss loads the set's images from the store and fits once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vlmad_runtime.serve.batching import DynamicBatcher
from vlmad_runtime.serve.limits import ApiError
from vlmad_runtime.serve.metrics import ServiceMetrics
from vlmad_runtime.serve.model import ReferenceMemory, ServedModel
from vlmad_runtime.serve.references import MemoryCache, ReferenceStore

log = logging.getLogger("vlmad_runtime.serve")

_UNSET = object()


@dataclass
class DetectResult:
    score: float
    anomaly_map: np.ndarray  # (S, S) float32, model input resolution
    batch_size: int
    inference_s: float
    queue_s: float
    info: dict[str, Any] = field(default_factory=dict)
    reference_version: str | None = None  # the set version actually used (newer than asked if replaced meanwhile)


class ModelWorker:
    """Owns the served model; ``await detect(model_input, key)`` from the event loop."""

    def __init__(
        self,
        loader: Callable[[], Any],
        class_name: str,
        store: ReferenceStore,
        metrics: ServiceMetrics,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 512,
        memory_cache_bytes: int = 1 << 30,
    ) -> None:
        self._loader = loader
        self.class_name = class_name
        self.store = store
        self.metrics = metrics
        self.memories = MemoryCache(memory_cache_bytes)
        self.model: ServedModel | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.info: dict[str, Any] = {}
        self._active: Any = _UNSET
        self.batcher = DynamicBatcher(
            self._handle,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            on_batch=self._on_batch,
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the thread and load the model on it (in the background; ``ready`` is set when done)."""
        self.batcher.start()
        self.batcher.call_soon(self._load)

    def close(self) -> None:
        self.batcher.close()

    def _load(self) -> None:
        try:
            model = self._loader()
            model.prepare(self.class_name)
            model.reset_references()
            self.model = model
            self._active = None
            self.info = model.info()
            self.ready.set()
        except Exception as err:
            self.load_error = str(err)
            log.error("model loading failed: %s", err)
            raise

    def preprocess(self, image: Image.Image) -> Any:
        """RGB image -> one model input; thread-safe (runs on request threads, off the worker)."""
        assert self.model is not None
        return self.model.preprocess(image)

    # ------------------------------------------------------------------ calls from the event loop
    async def detect(self, model_input: Any, key: tuple[str, str] | None) -> DetectResult:
        return await self.batcher.run(key, (model_input, time.perf_counter()))

    async def warm(self, name: str) -> ReferenceMemory:
        """Fit the current version of ``name`` now (after an upload) so the first detect does not pay for it."""
        return await self.batcher.call(lambda: self._memory_for(name, None)[0])

    def forget(self, name: str) -> None:
        self.memories.drop(name)

    # ------------------------------------------------------------------ worker thread
    def _on_batch(self, key: Hashable, size: int) -> None:
        self.metrics.batch_size.observe(size)

    def _memory_for(self, name: str, version: str | None) -> tuple[ReferenceMemory, str]:
        """(memory, version) of set ``name``: ``version`` if cached, else the current version on disk, fitted on a
        miss (the detector then holds it). Worker thread only."""
        if version is not None:
            mem = self.memories.get((name, version))
            if mem is not None:
                self.metrics.reference_cache.inc(result="hit")
                return mem, version
        info, images = self.store.load_images(name)  # raises 404 if deleted meanwhile
        mem = self.memories.get((name, info.version))
        if mem is not None:
            self.metrics.reference_cache.inc(result="hit")
            return mem, info.version
        self.metrics.reference_cache.inc(result="miss")
        t0 = time.perf_counter()
        self._active = _UNSET  # fit() changes the detector's memory; unknown until it returns
        mem = self.model.fit_references(images)
        self._active = (name, info.version)
        self.memories.put((name, info.version), mem)
        self.metrics.reference_fits.inc()
        log.info("fitted reference set %r (%d images) in %.2fs", name, info.count, time.perf_counter() - t0)
        return mem, info.version

    def _activate(self, key: tuple[str, str] | None) -> tuple[str, str] | None:
        """Make the memory of ``key`` active; returns the (name, version) actually used (None: zero-shot)."""
        if key is not None and key == self._active:
            return key
        if key is None:
            if self._active is not None:
                self.model.reset_references()
                self._active = None
                self.metrics.reference_swaps.inc()
            return None
        name, version = key
        mem, used = self._memory_for(name, version)
        if self._active != (name, used):
            self._active = _UNSET
            self.model.use_references(mem)
            self._active = (name, used)
            self.metrics.reference_swaps.inc()
        return (name, used)

    def _handle(self, key: Hashable, payloads: Sequence[Any]) -> list[Any]:
        started = time.perf_counter()
        try:
            used = self._activate(key)  # type: ignore[arg-type]
        except ApiError as err:
            return [err] * len(payloads)
        except Exception as err:
            self._active = _UNSET  # unknown state after a failed fit/restore: reset before the next batch
            log.exception("activating reference set %r failed", key)
            return [ApiError(500, "reference_memory_failed", f"could not build the reference memory: {err}")] * len(
                payloads
            )
        inputs = [p[0] for p in payloads]
        t0 = time.perf_counter()
        scores, maps = self.model.predict(inputs)
        inference_s = time.perf_counter() - t0
        self.metrics.inference.observe(inference_s)
        self.metrics.images.inc(len(payloads), mode="zero-shot" if key is None else "few-shot")
        info = self.model.info()
        out = []
        for (_, enqueued), score, amap in zip(payloads, scores, maps, strict=True):
            queue_s = max(0.0, started - enqueued)
            self.metrics.queue_wait.observe(queue_s)
            out.append(
                DetectResult(
                    float(score),
                    np.asarray(amap, dtype=np.float32),
                    len(payloads),
                    inference_s,
                    queue_s,
                    info,
                    used[1] if used else None,
                )
            )
        return out
