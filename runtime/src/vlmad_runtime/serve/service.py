"""State shared by the routes: config, reference store, metrics, decode slots and the model worker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
from vlmad_runtime.serve.config import ServeConfig, deploy_warnings
from vlmad_runtime.serve.guard import RequestGuard
from vlmad_runtime.serve.limits import ApiError, BodyBudget
from vlmad_runtime.serve.metrics import ServiceMetrics
from vlmad_runtime.serve.references import ReferenceStore
from vlmad_runtime.serve.worker import ModelWorker

T = TypeVar("T")


class Service:
    """State shared by the routes: config, store, metrics and (while running) the model worker."""

    def __init__(self, config: ServeConfig, loader: Callable[[], Any]) -> None:
        self.config = config
        self.loader = loader
        self.metrics = ServiceMetrics()
        self.store = ReferenceStore(config.data_dir, max_sets=config.limits.max_reference_sets)
        self.guard = RequestGuard(config.allowed_hosts, config.allowed_origins)
        lim = config.limits
        self.bodies = BodyBudget(
            max(lim.max_body_bytes_in_flight, lim.max_reference_request_bytes, lim.max_detect_request_bytes)
        )
        self.worker: ModelWorker | None = None
        self.decode_slots: asyncio.Semaphore | None = None
        self._decode_lock = threading.Lock()
        self.decodes_running = 0  # decode threads running now (abandoned ones included)
        self.decodes_peak = 0
        self.started = time.time()
        self._ref_fps: dict[tuple[str, str], str | None] = {}  # (set, version) -> reference fingerprint
        self.metrics.add_gauge("vlmad_model_ready", "1 when the model is loaded.", lambda: float(self.ready))
        self.metrics.add_gauge(
            "vlmad_queue_depth",
            "Detect requests waiting for the model worker.",
            lambda: float(self.worker.batcher.depth if self.worker else 0),
        )
        self.metrics.add_gauge(
            "vlmad_decodes_running",
            "Image decodes running (those of timed-out requests included).",
            lambda: float(self.decodes_running),
        )
        self.metrics.add_gauge(
            "vlmad_request_body_bytes", "Request body bytes held now (all requests).", lambda: float(self.bodies.used)
        )
        self.metrics.add_gauge("vlmad_reference_sets", "Reference sets on disk.", lambda: float(len(self.store)))
        self.metrics.add_gauge(
            "vlmad_reference_memories_cached",
            "Reference memories held by the worker.",
            lambda: float(len(self.worker.memories) if self.worker else 0),
        )

    @property
    def ready(self) -> bool:
        return self.worker is not None and self.worker.ready.is_set()

    def stalled_for(self) -> float | None:
        """Seconds the current model batch has been running, when that is far beyond the request timeout."""
        busy = self.worker.batcher.busy_for() if self.worker is not None else None
        limit = max(60.0, 10.0 * self.config.limits.request_timeout_s)
        return busy if busy is not None and busy > limit else None

    def require_worker(self) -> ModelWorker:
        w = self.worker
        if w is None or not w.ready.is_set():
            if w is not None and w.load_error:
                raise ApiError(
                    503,
                    "model_failed",
                    f"the model failed to load: {w.load_error}",
                    "see the server log; fix the weights options and restart",
                )
            raise ApiError(
                503,
                "model_loading",
                "the model is still loading",
                "retry in a few seconds",
                headers={"Retry-After": "5"},
            )
        return w

    def require_references(self) -> None:
        """Refuse reference-set uploads and few-shot requests on a model that cannot take them (a bundle)."""
        refusal = self.config.references_refusal
        if refusal:
            raise ApiError(
                409,
                "references_not_supported",
                refusal,
                "export the bundle again with `vlmad export --reference-dir DIR`, or serve the detector with "
                "`vlmad serve` to use reference sets",
            )

    @property
    def random_weights(self) -> bool:
        return bool(self.worker and self.worker.info.get("random_weights"))

    async def reference_fingerprint(self, key: tuple[str, str] | None, version: str | None) -> str | None:
        """Content fingerprint of the reference set a request used (cached per set version); None: zero-shot
        or no deploy file to match."""
        if key is None or self.config.deployment is None:
            return None
        from starlette.concurrency import run_in_threadpool

        from vlmad_runtime.fingerprint import image_digest, reference_fingerprint

        cache_key = (key[0], version or key[1])
        if cache_key not in self._ref_fps:
            _, images = await run_in_threadpool(self.store.load_images, key[0])
            self._ref_fps[cache_key] = reference_fingerprint(image_digest(im) for im in images)
        return self._ref_fps[cache_key]

    def warnings(self) -> list[str]:
        out = []
        if self.random_weights:
            out.append(RANDOM_WEIGHTS_STAMP)
        if self.worker and self.worker.info:
            out.extend(deploy_warnings(self.config.deploy, self.worker.info, self.config.class_name))
        out.extend(f"unreadable reference set file {p}" for p in self.store.problems)
        return out

    async def run_decode(self, work: Callable[[], T]) -> T:
        """Run ``work`` (a decode) on a thread, at most ``max_concurrent_decodes`` at a time.

        The slot is held until the thread really ends: a request that times out stops waiting, but its decode keeps
        running (a thread cannot be stopped), so releasing the slot then would let timeouts pile up unbounded
        decodes (issue: 6 -> 32 threads, 3.3 GB with ``--request-timeout 0.1``).
        """
        slots = self.decode_slots
        assert slots is not None
        await slots.acquire()

        def counted() -> T:
            with self._decode_lock:
                self.decodes_running += 1
                self.decodes_peak = max(self.decodes_peak, self.decodes_running)
            try:
                return work()
            finally:
                with self._decode_lock:
                    self.decodes_running -= 1

        try:
            fut = asyncio.get_running_loop().run_in_executor(None, counted)
        except BaseException:
            slots.release()
            raise

        def done(f: asyncio.Future) -> None:
            slots.release()
            if not f.cancelled():
                f.exception()  # retrieved: an abandoned decode's error is not logged as "never retrieved"

        fut.add_done_callback(done)
        return await asyncio.shield(fut)

    def set_response(self, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        info = self.store.get(name)
        out = info.as_dict()
        out["memory_cached"] = bool(self.worker and (name, info.version) in self.worker.memories)
        out.update(extra or {})
        return out


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
