"""Where the rows of a grid are computed: in this process (``local``, the default) or on a Ray cluster (``ray``).

Both executors compute a row with the same code (:mod:`vlmad.bench.row_worker` runs the local runner on a
one-row grid), and both leave the driver as the only writer of ``results.jsonl`` and ``scores/``: a Ray worker
returns its finished row and score file as text, the driver writes the score file (temp file + rename) and then
appends the row, exactly as the local runner does. Resume rules are untouched: rows are keyed and skipped before
this module sees them, whichever executor wrote them.

Ray executor (the README section "Running on a cluster" is the user guide):

* rows run on a pool of actors (``mode="actors"``), each keeping the detector of its last method spec, so the rows
  of one model pay its load once per actor; ``mode="tasks"`` runs every row as a fresh task (one model load per
  row; ``benchmarks/ray_overhead.py`` measures both). Each actor asks for ``cpus_per_row`` CPUs and
  ``gpus_per_row`` GPUs; the pool has as many actors as the cluster's resources hold (at most one per row).
* a worker that dies mid-row (process killed, node lost) is replaced and its row resubmitted, at most
  ``row_retries`` times; after that the row is recorded as ``error`` with the reason, so no row is lost and,
  since only the driver writes and only once per row, none is duplicated.
* an exception raised by the row code itself (``--on-error stop``, a bug) stops the run as it would locally.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlmad_runtime.errors import VlmadError

EXECUTORS = ("local", "ray")
RAY_HINT = "install the extra: pip install 'vlmad[ray]'"
#: the module whose ``row_actor`` / ``row_task`` compute rows on a Ray worker (see :func:`_remote`)
WORKER_MODULE = "vlmad.bench.ray_remote"
# environment forwarded to the Ray workers (model caches, offline switches, thread counts)
FORWARD_ENV_PREFIXES = ("VLMAD_", "HF_", "TRANSFORMERS_", "TORCH_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def check_executor(config: Any) -> None:
    """Refuse bad executor options before anything is written."""
    kind = getattr(config, "executor", "local")
    if kind not in EXECUTORS:
        raise VlmadError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if kind == "local":
        return
    if getattr(config, "cpus_per_row", 1.0) <= 0 and getattr(config, "gpus_per_row", 0.0) <= 0:
        raise VlmadError("a row needs some resource", "pass --cpus-per-row > 0 or --gpus-per-row > 0")
    if getattr(config, "gpus_per_row", 0.0) < 0 or getattr(config, "cpus_per_row", 1.0) < 0:
        raise VlmadError("--gpus-per-row and --cpus-per-row must be >= 0")
    if getattr(config, "row_retries", 2) < 0:
        raise VlmadError("--row-retries must be >= 0")
    import_ray()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise VlmadError("the Ray executor needs the 'ray' package", RAY_HINT) from None
    return ray


def run_rows(runner: Any, specs: list[dict[str, Any]], pending: list[Any]) -> None:
    """Compute ``pending`` rows with the executor named by the runner's config."""
    cfg = runner.cfg
    if getattr(cfg, "executor", "local") == "local":
        runner.run(specs, pending)
        return
    with RayConnection(cfg.ray_address) as ray:
        RayExecutor(ray, cfg, log=runner.ui.log, mode=getattr(cfg, "ray_mode", "actors")).run(pending, _Sink(runner))


# ---------------------------------------------------------------------------------------------------------------
# connecting


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}


class RayConnection:
    """``ray.init`` for the run and ``ray.shutdown`` after it, unless this process was connected already.

    ``address`` None starts a private local instance; ``auto`` or ``ray://host:port`` or ``host:port`` joins a
    running cluster (whose nodes must have vlmad installed and the datasets at the same paths)."""

    def __init__(self, address: str | None, num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.owned = False

    def __enter__(self) -> Any:
        ray = import_ray()
        if ray.is_initialized():
            return ray
        env = {"env_vars": worker_env()}
        try:
            if self.address:
                ray.init(address=self.address, runtime_env=env, log_to_driver=False, logging_level="warning")
            else:
                ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    runtime_env=env,
                    log_to_driver=False,
                    logging_level="warning",
                )
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise VlmadError(
                f"could not connect to Ray at {self.address or 'a new local instance'}: {err}",
                "start the cluster first (`ray start --head`), or leave --ray-address out to run a local instance",
            ) from None
        self.owned = True
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.owned and not _HELD:  # inside executor_scope the scope shuts it down
            import_ray().shutdown()


_HELD: list[bool] = []


class _HoldRay:
    """Keeps a Ray instance that a grid inside the scope starts alive until the scope ends (see
    :func:`executor_scope`); starts nothing itself, so a study with nothing to compute never starts Ray."""

    def __enter__(self) -> _HoldRay:
        self.was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        _HELD.append(True)
        return self

    def __exit__(self, *exc: object) -> None:
        _HELD.pop()
        if not self.was_up and not _HELD and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()


def executor_scope(executor: str, address: str | None = None) -> Any:
    """One Ray connection across several grids (the phases of a study) instead of one per grid, made when the
    first grid needs it; nothing for the local executor."""
    from contextlib import nullcontext

    return _HoldRay() if executor == "ray" else nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# the driver side


class _Sink:
    """The driver's writer: score file first (atomic), then the row, then the progress line; as locally."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def write(self, row: dict[str, Any], scores: str | None) -> None:
        from vlmad.bench.results import SCORES_DIR
        from vlmad.bench.row_status import row_line
        from vlmad_runtime.fileio import atomic_write_text

        r = self.runner
        if scores is not None and row.get("scores_file"):
            rel = str(row["scores_file"])
            if not rel.startswith(f"{SCORES_DIR}/") or ".." in rel:
                raise VlmadError(f"a worker returned an unexpected score file name {rel!r}")
            atomic_write_text(r.out / rel, scores)
        r.store.append(row)
        if row.get("status") == "ok":
            r.computed += 1
            r.ui.log(row_line(row))
        else:
            seed = "" if row.get("seed") is None else f" seed {row['seed']}"
            r.ui.log(
                f"[yellow]{row.get('status')}[/] {row['method_label']} · {row['dataset']['kind']}/"
                f"{row['dataset']['category']} {row['shots']}-shot{seed}: {row.get('reason')}"
            )

    def failed(self, plan: Any, reason: str, hint: str) -> None:
        from vlmad.bench.row_status import RowFailed

        r = self.runner
        r._write_failed(plan, plan.spec, RowFailed("error", VlmadError(reason, hint)))
        r.ui.log(
            f"[red]error[/] {plan.spec['label']} · {plan.dataset.kind}/{plan.category} {plan.shots}-shot: {reason}"
        )

    def advance(self, n: int, status: str) -> None:
        ui = self.runner.ui
        ui.advance(n)
        if getattr(ui, "bar", None) is not None:
            ui.bar.update(ui.overall, description=status)


@dataclass
class _Slot:
    """One place a row can run: an actor (mode "actors") or a task slot (mode "tasks")."""

    handle: Any = None
    label: str | None = None


class RayExecutor:
    """Streams rows to Ray workers and their results back to the driver (see module docstring)."""

    def __init__(
        self,
        ray: Any,
        config: Any,
        log: Callable[[str], None] | None = None,
        mode: str = "actors",
        workers: int | None = None,
    ) -> None:
        if mode not in ("actors", "tasks"):
            raise VlmadError(f"Ray mode must be 'actors' or 'tasks', got {mode!r}")
        self.ray = ray
        self.cfg = config
        self.log = log or (lambda _m: None)
        self.mode = mode
        self.workers = workers
        self.cpus = float(getattr(config, "cpus_per_row", 1.0))
        self.gpus = float(getattr(config, "gpus_per_row", 0.0))
        self.retries = int(getattr(config, "row_retries", 2))
        self.deaths: dict[str, list[str]] = {}

    # ---------------------------------------------------------- pool
    def capacity(self) -> int:
        """Rows the cluster can hold at once with the requested per-row resources."""
        if self.workers:
            return int(self.workers)
        res = self.ray.cluster_resources()
        fits = []
        if self.cpus > 0:
            fits.append(int(res.get("CPU", 0) // self.cpus))
        if self.gpus > 0:
            fits.append(int(res.get("GPU", 0) // self.gpus))
        n = min(fits) if fits else 0
        if n < 1:
            raise VlmadError(
                f"the Ray cluster cannot hold one row ({self.cpus:g} CPU, {self.gpus:g} GPU per row; "
                f"cluster: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU)",
                "lower --cpus-per-row / --gpus-per-row or add nodes",
            )
        return n

    def _new_handle(self) -> Any:
        if self.mode == "tasks":
            return None
        return (
            _remote()
            .row_actor(self.ray)
            .options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_task_retries=0)
            .remote()
        )

    def _submit(self, slot: _Slot, cfg_ref: Any, plan: Any) -> Any:
        slot.label = plan.spec["label"]
        if self.mode == "tasks":
            return (
                _remote()
                .row_task(self.ray)
                .options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)
                .remote(cfg_ref, plan)
            )
        return slot.handle.compute.remote(cfg_ref, plan)

    # ---------------------------------------------------------- loop
    def run(self, pending: list[Any], sink: _Sink) -> None:
        """Compute every pending row; returns when each one is written (ok, refused, error) or raises."""
        import dataclasses

        if not pending:
            return
        ray = self.ray
        cfg_ref = ray.put(dataclasses.replace(self.cfg, progress=False))
        queue = deque(pending)
        slots = [_Slot(self._new_handle()) for _ in range(min(len(pending), self.capacity()))]
        self.log(
            f"ray: {len(pending)} row(s) on {len(slots)} {self.mode[:-1]}(s) "
            f"({self.cpus:g} CPU, {self.gpus:g} GPU per row)"
        )
        try:
            self._loop(queue, slots, cfg_ref, sink)
        finally:  # free the workers' CPUs/GPUs now, not when the handles are garbage-collected
            for slot in slots:
                if slot.handle is not None:
                    ray.kill(slot.handle)

    def _loop(self, queue: deque, slots: list[_Slot], cfg_ref: Any, sink: _Sink) -> None:
        ray = self.ray
        idle = list(range(len(slots)))
        inflight: dict[Any, tuple[int, Any]] = {}
        done = failed = 0
        while queue or inflight:
            while queue and idle:
                i = idle.pop()
                plan = _take(queue, slots[i].label)
                inflight[self._submit(slots[i], cfg_ref, plan)] = (i, plan)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                i, plan = inflight.pop(ref)
                idle.append(i)
                results = self._collect(ref, slots[i], plan, queue, sink)
                if results is None:
                    continue
                attempt = 1 + len(self.deaths.get(plan.key, []))
                for row, scores in results:
                    # provenance only (not part of the row key): where it ran and on which try
                    row["run"] = {**row.get("run", {}), "executor": "ray", "attempt": attempt}
                    sink.write(row, scores)
                    failed += row.get("status") != "ok"
                if not results:
                    failed += 1
                done += 1
                sink.advance(plan.n_test, f"ray: {done} done · {len(inflight)} running · {failed} failed")

    def _collect(self, ref: Any, slot: _Slot, plan: Any, queue: deque, sink: _Sink) -> list[Any] | None:
        """The row's results; None when its worker died and the row went back to the queue. A row whose worker
        died more than ``row_retries`` times is written as an error row with the reasons (and [] returned)."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the row code raised: stop, as a local run does
            raise err.as_instanceof_cause() from None
        except ray.exceptions.RayError as err:  # the worker process or its node is gone
            text = str(err).strip()
            reason = f"{type(err).__name__}: {text.splitlines()[0] if text else 'worker lost'}"
            tries = self.deaths.setdefault(plan.key, [])
            tries.append(reason)
            slot.handle = self._new_handle()
            slot.label = None
            where = f"{plan.spec['label']} {plan.dataset.kind}/{plan.category} {plan.shots}-shot seed {plan.seed}"
            if len(tries) <= self.retries:
                self.log(
                    f"[yellow]worker lost[/] on {where} (try {len(tries)} of {self.retries + 1}): {reason}; "
                    "row resubmitted"
                )
                queue.appendleft(plan)
                return None
            sink.failed(
                plan,
                f"the worker computing this row died {len(tries)} time(s); last: {reason}",
                "check the Ray logs of the lost workers (out of memory?); --retry-failed recomputes the row",
            )
            return []


def _remote() -> Any:
    """The worker side, :mod:`vlmad.bench.ray_remote`, named by its module path: the worker runs a runner (it sits
    above it) while the runner hands its rows to this module, so importing the worker here would close a loop. The
    driver only needs the remote handles; Ray ships the worker's code to the other process by module path anyway."""
    import importlib

    return importlib.import_module(WORKER_MODULE)


def _take(queue: deque, label: str | None) -> Any:
    """The next row, preferring one of the method the worker already holds (its detector is cached)."""
    if label is not None:
        for i, plan in enumerate(queue):
            if plan.spec["label"] == label:
                del queue[i]
                return plan
    return queue.popleft()
