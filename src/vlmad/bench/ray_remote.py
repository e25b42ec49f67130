"""The Ray side of the grid executor: an actor that keeps a :class:`~vlmad.bench.row_worker.WorkerState` across
rows, and a task that starts from an empty one. Built on first use, so ``ray`` stays an optional dependency."""

from __future__ import annotations

import os
from typing import Any

_CACHE: dict[str, Any] = {}


class RowActor:
    """A worker process holding the detector of its last method spec between rows."""

    def __init__(self) -> None:
        from vlmad.bench.row_worker import WorkerState

        self.state = WorkerState()

    def compute(self, config: Any, plan: Any) -> list[Any]:
        from vlmad.bench.row_worker import compute_row

        return compute_row(self.state, config, plan)

    def pid(self) -> int:
        return os.getpid()


def _row_task(config: Any, plan: Any) -> list[Any]:
    from vlmad.bench.row_worker import WorkerState, compute_row

    return compute_row(WorkerState(), config, plan)


def row_actor(ray: Any) -> Any:
    """``ray.remote(RowActor)``, made once per process."""
    if "actor" not in _CACHE:
        _CACHE["actor"] = ray.remote(RowActor)
    return _CACHE["actor"]


def row_task(ray: Any) -> Any:
    """``ray.remote(_row_task)``, made once per process."""
    if "task" not in _CACHE:
        _CACHE["task"] = ray.remote(_row_task)
    return _CACHE["task"]
