"""Dynamic batching on one worker thread.

Requests are queued per *key* (here: the reference set a detect request uses, ``None`` for zero-shot). The worker
takes the key whose oldest request has waited longest (FIFO across keys), waits at most ``max_wait_s`` after that
request's arrival for more requests of the same key (up to ``max_batch_size``), and hands the batch to the handler.
Under load batches fill without waiting; when idle a lone request waits at most ``max_wait_s``.

The event loop only ever appends to the queue (a short lock) and awaits a future; all model work happens on the
worker thread. Requests cancelled (timed out) before their batch starts are skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` requests already."""


class BatcherClosedError(RuntimeError):
    """The batcher was shut down."""


@dataclass
class Job:
    key: Hashable
    payload: Any
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None


class _Call:
    """Key of a one-off call run exclusively on the worker (model loading, reference fitting)."""

    __slots__ = ()


class DynamicBatcher:
    """One worker thread; ``handler(key, payloads) -> results`` (one result, or an Exception, per payload)."""

    def __init__(
        self,
        handler: Handler,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 512,
        on_batch: Callable[[Hashable, int], None] | None = None,
        name: str = "vlmad-model-worker",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.handler = handler
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = max(0.0, float(max_wait_s))
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: dict[Hashable, deque[Job]] = {}
        self._size = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._busy_since: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, fail what is still queued, let the running batch finish, join the thread."""
        with self._cond:
            self._closed = True
            leftovers = [job for q in self._pending.values() for job in q]
            self._pending.clear()
            self._size = 0
            self._cond.notify_all()
        for job in leftovers:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosedError("the server is shutting down"))
        if self._started:
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Requests waiting (not yet handed to the handler)."""
        return self._size

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def busy_for(self) -> float | None:
        """Seconds the worker has been in the current handler call (None when idle)."""
        since = self._busy_since
        return None if since is None else time.perf_counter() - since

    # ------------------------------------------------------------------ submission
    def submit(self, key: Hashable, payload: Any) -> Job:
        """Queue one payload (thread-safe, never blocks on model work). Raises QueueFullError / BatcherClosedError."""
        job = Job(key, payload)
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if self._size >= self.max_queue:
                raise QueueFullError(f"{self._size} requests are already waiting")
            self._pending.setdefault(key, deque()).append(job)
            self._size += 1
            self._cond.notify()
        return job

    async def run(self, key: Hashable, payload: Any) -> Any:
        """Submit and await the result; cancelling the await cancels the job if its batch has not started."""
        job = self.submit(key, payload)
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.future.cancel()
            raise

    def call_soon(self, fn: Callable[[], Any]) -> Job:
        """Run ``fn()`` alone on the worker thread (not counted against ``max_queue``)."""
        job = Job(_Call(), fn)
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            self._pending[job.key] = deque([job])
            self._size += 1
            self._cond.notify()
        return job

    async def call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self.call_soon(fn).future)

    # ------------------------------------------------------------------ worker
    def _next_batch(self) -> tuple[Hashable, list[Job]] | None:
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                key = min(self._pending, key=lambda k: self._pending[k][0].enqueued)
                if not isinstance(key, _Call):
                    deadline = self._pending[key][0].enqueued + self.max_wait_s
                    while len(self._pending.get(key, ())) < self.max_batch_size and not self._closed:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if self._closed:
                        return None
                queue = self._pending.get(key)
                if not queue:  # cannot happen (only this thread removes), but never spin on an empty key
                    self._pending.pop(key, None)
                    continue
                jobs = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
                if not queue:
                    del self._pending[key]
                self._size -= len(jobs)
                return key, jobs

    def _run(self) -> None:
        while True:
            got = self._next_batch()
            if got is None:
                return
            self._busy_since = time.perf_counter()
            try:
                self._run_batch(*got)
            finally:
                self._busy_since = None

    def _run_batch(self, key: Hashable, jobs: list[Job]) -> None:
        now = time.perf_counter()
        live = []
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.started = now
                live.append(job)
        if not live:
            return
        if isinstance(key, _Call):
            self._finish(live[0], live[0].payload)
            return
        if self.on_batch is not None:
            self.on_batch(key, len(live))
        try:
            results = list(self.handler(key, [job.payload for job in live]))
            if len(results) != len(live):
                raise RuntimeError(f"batch handler returned {len(results)} results for {len(live)} jobs")
        except BaseException as err:  # the worker thread must survive anything the handler does
            results = [err] * len(live)
        for job, result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    @staticmethod
    def _finish(job: Job, fn: Callable[[], Any]) -> None:
        try:
            job.future.set_result(fn())
        except BaseException as err:
            job.future.set_exception(err)
