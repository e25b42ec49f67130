"""One grid row computed away from the driver (a Ray worker), by the very code the local executor runs.

The row computation lives in one place, :class:`vlmad.bench.runner._Runner`: a worker runs that runner on a
one-row grid whose output folder is a private scratch folder, then hands the finished row and its per-image score
file back as text. The driver (the only writer of ``results.jsonl`` and ``scores/``) writes them. So a row computed
on a worker is the row the local executor computes, refusals and failures included.

:class:`WorkerState` is what a long-lived worker (a Ray actor) keeps between rows: the detector of the last
method spec (building a CLIP backbone costs seconds to minutes; the rows of one method share it, as they do in a
local run), the opened dataset readers and the per-(method, shots) FLOP counts. A short-lived worker (a Ray task)
starts from an empty state every row.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlmad.bench.protocol import canonical

RowResult = tuple[dict[str, Any], "str | None"]


class WorkerState:
    """Caches of one worker process, reused across the rows it computes (see module docstring)."""

    def __init__(self, max_detectors: int = 1) -> None:
        self.max_detectors = max(1, int(max_detectors))
        self.detectors: dict[str, Any] = {}
        self.readers: dict[str, Any] = {}
        self.flops: dict[tuple[str, int], float | None] = {}
        self.builds = 0
        self.rows = 0

    def factory(self, base: Any) -> Any:
        """A detector factory that returns the cached detector of an identical runtime spec, else builds one with
        ``base`` (evicting the oldest: one model in memory at a time, like the local runner)."""

        def build(spec: dict[str, Any]) -> Any:
            key = json.dumps(
                {"spec": canonical(spec), "factory": getattr(base, "__qualname__", type(base).__name__)},
                sort_keys=True,
                default=str,
            )
            if key not in self.detectors:
                while len(self.detectors) >= self.max_detectors:
                    self.detectors.pop(next(iter(self.detectors)))
                self.detectors[key] = base(spec)
                self.builds += 1
            return self.detectors[key]

        return build

    def reader(self, kind: str, root: str, categories: list[str] | None) -> Any:
        from vlmad.data import load_dataset

        key = json.dumps([kind, str(root), categories])
        if key not in self.readers:
            self.readers[key] = load_dataset(kind, root, categories)
        return self.readers[key]


def compute_row(state: WorkerState, config: Any, plan: Any) -> list[RowResult]:
    """Compute one planned row (``RowPlan``) of ``config`` (a ``BenchmarkConfig``); returns the rows the runner
    recorded (one: ok, refused or error) each with its score file's text (None when the row has none)."""
    from vlmad.bench.results import RESULTS_FILE, ResultsStore
    from vlmad.bench.runner import _ds_id, _Runner, _validate, build_detector_from_spec

    scratch = Path(tempfile.mkdtemp(prefix="vlmad-row-"))
    try:
        base = config.detector_factory or build_detector_from_spec
        cfg = dataclasses.replace(
            config, out=scratch, progress=False, executor="local", detector_factory=state.factory(base)
        )
        _, variants, eval_res = _validate(cfg)
        reader = state.reader(plan.dataset.kind, str(plan.dataset.root), plan.dataset.categories)
        runner = _Runner(
            cfg, scratch, ResultsStore(scratch / RESULTS_FILE), {_ds_id(plan.dataset): reader}, variants, eval_res
        )
        if hasattr(runner, "_flops"):  # the FLOP count of a (method, shots) is measured once per worker
            runner._flops = state.flops
        runner.run([plan.spec], [plan])
        state.rows += 1
        out: list[RowResult] = []
        for row in runner.store.rows():
            scores = scratch / row["scores_file"] if row.get("scores_file") else None
            out.append((row, scores.read_text(encoding="utf-8") if scores is not None and scores.exists() else None))
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
