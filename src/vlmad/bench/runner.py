"""The grid runner: methods x datasets x categories x shots x seeds -> one result row each.

Order of work (each expensive thing done once): per method spec build one detector; per (dataset, category)
check the protocol, build the text embeddings and stream the test images once (cached for the category's other
rows); per (shots, seed) draw references from the train split, ``fit``, ``predict`` every test image,
``finalize`` over the whole category, compute metrics, write the per-image scores and append the row.

Rows already in ``results.jsonl`` (same row key) are skipped before any model is built, so an interrupted run
resumes where it stopped and a finished grid reruns in seconds. Rows refused by a protocol check or failed
(e.g. a method without few-shot mode) are recorded with their reason and not retried unless ``retry_failed``.

This module plans the grid and runs its loops (methods, then categories, then rows); the vocabulary lives in
:mod:`vlmad.bench.grid`, the steps of one row in :mod:`vlmad.bench.row_steps`, what a row records in
:mod:`vlmad.bench.row_record`, the console output in :mod:`vlmad.bench.console`.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vlmad.bench import protocol as P
from vlmad.bench.console import RunProgress as _Progress
from vlmad.bench.grid import (
    BenchmarkConfig,
    DatasetSpec,
    DetectorFactory,
    RowPlan,
    build_detector_from_spec,
    method_spec,
    normalize_method_spec,
)
from vlmad.bench.grid import ds_id as _ds_id
from vlmad.bench.loading import TestSetCache, make_preprocess, stack_inputs
from vlmad.bench.profile import environment, flops_per_image
from vlmad.bench.results import RESULTS_FILE, ResultsStore, RunLock, append_invocation
from vlmad.bench.row_record import RowOutcome, base_row, completed_row, compute_metrics, row_efficiency
from vlmad.bench.row_record import now as _now
from vlmad.bench.row_status import RowFailed as _RowFailed
from vlmad.bench.row_status import row_line as _row_line
from vlmad.bench.row_steps import CategoryContext, fit_references, predict_all, write_row_scores
from vlmad.methods.base import Detector
from vlmad_runtime.errors import VlmadError

__all__ = [
    "BenchmarkConfig",
    "DatasetSpec",
    "DetectorFactory",
    "RowPlan",
    "build_detector_from_spec",
    "method_spec",
    "normalize_method_spec",
    "plan_grid",
    "run_benchmark",
]


# ---------------------------------------------------------------------------------------------------------------
# planning (no model needed)


def _validate(config: BenchmarkConfig) -> tuple[list[dict[str, Any]], tuple[str, ...], str | int]:
    if not config.datasets:
        raise VlmadError("no dataset given", "pass --dataset KIND --root PATH")
    specs = [normalize_method_spec(m) for m in config.methods]
    if not specs:
        raise VlmadError("no method given", "pass e.g. --methods winclip")
    labels = [s["label"] for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise VlmadError(f"method label {dup[0]!r} is used twice", "give every method spec a distinct label")
    if config.on_error not in ("skip", "stop"):
        raise VlmadError(f"--on-error must be 'skip' or 'stop', got {config.on_error!r}")
    if config.batch_size < 1:
        raise VlmadError("--batch-size must be >= 1")
    if config.num_workers < 0:
        raise VlmadError("--num-workers must be >= 0")
    P.parse_int_list(config.shots, "shots")
    P.parse_int_list(config.seeds, "seeds")
    from vlmad.bench.executors import check_executor

    check_executor(config)
    return specs, P.parse_aupro(config.aupro), P.parse_eval_resolution(config.eval_resolution)


def plan_grid(config: BenchmarkConfig) -> tuple[list[RowPlan], dict[str, Any]]:
    """Every row of the grid with its key, in execution order; plus the opened dataset readers by root."""
    from vlmad.data import load_dataset
    from vlmad.methods.registry import get_spec

    specs, _, eval_res = _validate(config)
    shots = P.parse_int_list(config.shots, "shots")
    seeds = P.parse_int_list(config.seeds, "seeds")
    readers: dict[str, Any] = {}
    datasets: list[DatasetSpec] = []
    for ds in config.datasets:
        root = Path(ds.root).expanduser().resolve()
        reader = load_dataset(ds.kind, root, ds.categories)
        resolved = DatasetSpec(ds.kind.lower(), root, reader.categories)
        readers[_ds_id(resolved)] = reader
        datasets.append(resolved)
    keyed = {s["label"]: P.keyed_kwargs(s["kwargs"]) for s in specs}
    plans: list[RowPlan] = []
    for spec in specs:
        # a zero-shot-only method (its spec's few_shot=False) gets no k-shot rows: nothing to fail, nothing to show
        method_shots = sorted(shots) if get_spec(spec["method"]).few_shot else [k for k in shots if k == 0]
        for ds in datasets:
            reader = readers[_ds_id(ds)]
            for cat in ds.categories or []:
                n_test = len(P.limit_samples(reader.samples(cat, "test"), config.limit))
                for k in method_shots:
                    for seed in seeds if k > 0 else [None]:
                        payload = {
                            "schema": P.ROW_SCHEMA,
                            "method": spec["method"],
                            "label": spec["label"],
                            "kwargs": keyed[spec["label"]],
                            "dataset": ds.kind,
                            "root": str(ds.root),
                            "category": cat,
                            "shots": k,
                            "seed": seed,
                            "eval_resolution": eval_res,
                            "aupro": config.aupro,
                            "limit": config.limit,
                            "tags": config.tags,
                        }
                        plans.append(RowPlan(P.hash_key(payload), spec, ds, cat, k, seed, n_test))
    return plans, readers


# ---------------------------------------------------------------------------------------------------------------
# running


def run_benchmark(config: BenchmarkConfig) -> Path:
    """Run (or resume) the grid; returns the output folder holding results.jsonl, scores/, tables/,
    efficiency.md/.csv, summary.md and run.json."""
    specs, variants, eval_res = _validate(config)
    out = Path(config.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        plans, readers = plan_grid(config)
        store = ResultsStore(out / RESULTS_FILE)
        # refused rows are retried with --force-protocol, refused and failed ones with --retry-failed
        final = {"ok"} | (
            set() if config.retry_failed else {"error"} | ({"refused"} if not config.force_protocol else set())
        )
        done = store.keys(final)
        pending = [p for p in plans if p.key not in done]
        invocation = {
            "started": _now(),
            "argv": config.argv if config.argv is not None else list(sys.argv),
            "config": config.public_dict(),
            "environment": environment(config.device),
            "grid": {"rows": len(plans), "already_done": len(plans) - len(pending), "to_compute": len(pending)},
        }
        append_invocation(out / "run.json", invocation)
        runner = _Runner(config, out, store, readers, variants, eval_res)
        try:
            if not pending:
                if config.progress:
                    _Progress(True, 0).log(
                        f"nothing to compute: all {len(plans)} row(s) of the grid are in "
                        f"{out / RESULTS_FILE} (--retry-failed retries refused/failed rows)"
                    )
            else:
                with _Progress(config.progress, sum(p.n_test for p in pending)) as ui:
                    runner.ui = ui
                    ui.log(
                        f"grid: {len(plans)} row(s), {len(plans) - len(pending)} already in "
                        f"{out / RESULTS_FILE}, {len(pending)} to compute"
                    )
                    from vlmad.bench.executors import run_rows

                    run_rows(runner, specs, pending)
        finally:
            invocation.update(finished=_now(), computed=runner.computed, interrupted=runner.computed < len(pending))
            _replace_last_invocation(out / "run.json", invocation)
            if (out / RESULTS_FILE).exists():
                from vlmad.bench.tables import write_reports

                try:
                    write_reports(out)
                except Exception as err:  # never mask the run's own error with a report error
                    if sys.exc_info()[0] is None:
                        raise
                    print(f"warning: could not write tables: {err}", file=sys.stderr)
    return out


def _replace_last_invocation(path: Path, record: dict[str, Any]) -> None:
    import json

    from vlmad_runtime.fileio import atomic_write_text

    try:
        data = json.loads(path.read_text())
        data["invocations"][-1] = record
        data["latest"] = record
    except (OSError, ValueError, KeyError, IndexError):
        data = {"invocations": [record], "latest": record}
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


class _Runner:
    def __init__(
        self,
        config: BenchmarkConfig,
        out: Path,
        store: ResultsStore,
        readers: dict[str, Any],
        variants: tuple[str, ...],
        eval_res: str | int,
    ) -> None:
        self.cfg = config
        self.out = out
        self.store = store
        self.readers = readers
        self.variants = variants
        self.eval_res = eval_res
        self.factory = config.detector_factory or build_detector_from_spec
        self.computed = 0
        self.ui: _Progress = _Progress(False, 0)
        self._flops: dict[tuple[str, int], float | None] = {}
        self._versions = environment(None)

    # -------------------------------------------------------------- grid loops
    def run(self, specs: list[dict[str, Any]], pending: list[RowPlan]) -> None:
        todo = [s for s in specs if any(p.spec["label"] == s["label"] for p in pending)]
        for i, spec in enumerate(todo):
            rows = [p for p in pending if p.spec["label"] == spec["label"]]
            full = self._runtime_spec(spec)
            t0 = time.perf_counter()
            self.ui.log(f"[bold]{spec['label']}[/]: building detector ({len(rows)} row(s) to compute)")
            detector = self.factory(full)
            model_load_s = time.perf_counter() - t0
            if detector.info().random_weights:
                from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

                self.ui.log(f"[bold red]WARNING: {spec['label']}: {RANDOM_WEIGHTS_STAMP}[/]")
            try:
                groups: dict[tuple[str, str], list[RowPlan]] = {}
                for p in rows:
                    groups.setdefault((_ds_id(p.dataset), p.category), []).append(p)
                for (ds_id, category), cat_rows in groups.items():
                    self._run_category(
                        detector, spec, cat_rows[0].dataset, self.readers[ds_id], category, cat_rows, model_load_s
                    )
            finally:
                del detector
                if i + 1 < len(todo):  # free the model before building the next one
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()

    def _runtime_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(spec["kwargs"])
        kwargs.setdefault("device", self.cfg.device)
        kwargs.setdefault("batch_size", self.cfg.batch_size)
        if not self.cfg.use_cache:
            kwargs.setdefault("use_cache", False)
        return {**spec, "kwargs": kwargs}

    def _check_protocol(
        self, detector: Detector, spec: dict[str, Any], ds: DatasetSpec, category: str, rows: list[RowPlan]
    ) -> tuple[dict[str, Any], bool] | None:
        """The detector's protocol check for a category (forced when asked): its extras and whether it was
        forced, or None when refused (then every row of the category is recorded as refused)."""
        where = f"{spec['label']} · {ds.kind}/{category}"
        forced, refused_reason = False, None
        try:
            extras = detector.check_protocol(ds.kind, str(ds.root), category, force=False)
        except VlmadError as err:
            refusal, refused_reason = err, err.message
            if self.cfg.force_protocol:
                try:
                    extras = detector.check_protocol(ds.kind, str(ds.root), category, force=True)
                    forced, refusal = True, None
                    self.ui.log(f"[yellow]forced[/] {where}: {err.message} (rows labelled as forced)")
                except VlmadError as again:
                    refusal = again
            if refusal is not None:
                self.ui.log(
                    f"[yellow]refused[/] {where}: {refusal.message}"
                    + (f" ({refusal.hint})" if refusal.hint else "")
                    + ("" if self.cfg.force_protocol else "; --force-protocol runs it anyway, labelled")
                )
                for plan in rows:
                    self._write_failed(plan, spec, _RowFailed("refused", refusal))
                return None
        extras = P.canonical(dict(extras or {}))
        if forced:
            extras = {**extras, "refused_without_force": refused_reason}
        return extras, forced

    def _open_category(
        self, detector: Detector, reader: Any, category: str, checked: tuple[dict[str, Any], bool], model_load_s: float
    ) -> tuple[TestSetCache, CategoryContext]:
        """Set the detector up for the category (text embeddings, timed) and open its test set, read once."""
        cache = getattr(detector, "cache", None)
        misses0 = getattr(cache, "misses", None)
        t0 = time.perf_counter()
        detector.setup(category)
        setup_s = time.perf_counter() - t0
        misses1 = getattr(cache, "misses", None)
        text_cache = None if misses0 is None else ("miss" if misses1 != misses0 else "hit")
        test = P.limit_samples(reader.samples(category, "test"), self.cfg.limit)
        has_masks = bool(reader.has_masks(category))
        size = int(detector.image_size)
        eval_size = (
            None
            if self.eval_res == "original"
            else ((size, size) if self.eval_res == "input" else (int(self.eval_res), int(self.eval_res)))
        )
        preprocess = make_preprocess(detector)
        data = TestSetCache(
            test, preprocess, eval_size, has_masks, self.cfg.num_workers, prefetch=max(8, 2 * self.cfg.batch_size)
        )
        ctx = CategoryContext(
            extras=checked[0],
            forced=checked[1],
            setup_s=setup_s,
            text_cache=text_cache,
            model_load_s=model_load_s,
            has_masks=has_masks,
            eval_size=eval_size,
            preprocess=preprocess,
        )
        return data, ctx

    def _run_category(
        self,
        detector: Detector,
        spec: dict[str, Any],
        ds: DatasetSpec,
        reader: Any,
        category: str,
        rows: list[RowPlan],
        model_load_s: float,
    ) -> None:
        where = f"{spec['label']} · {ds.kind}/{category}"
        checked = self._check_protocol(detector, spec, ds, category, rows)
        if checked is None:
            return
        data, ctx = self._open_category(detector, reader, category, checked, model_load_s)
        self.ui.category(where, total=sum(p.n_test for p in rows))
        for plan in rows:
            try:
                row = self._run_row(detector, spec, reader, plan, data, ctx)
            except _RowFailed as failure:
                self.ui.log(
                    f"[yellow]{failure.status}[/] {where} {plan.shots}-shot seed {plan.seed}: {failure.message}"
                )
                self._write_failed(plan, spec, failure)
                self.ui.advance(plan.n_test)
                continue
            self.store.append(row)
            self.computed += 1
            self.ui.log(_row_line(row))

    # -------------------------------------------------------------- one row
    def _run_row(
        self,
        detector: Detector,
        spec: dict[str, Any],
        reader: Any,
        plan: RowPlan,
        data: TestSetCache,
        ctx: CategoryContext,
    ) -> dict[str, Any]:
        """One row: fit the references, predict the test set, compute metrics and efficiency, write the scores."""
        detector.reset_references()
        fitted = fit_references(detector, spec, reader, plan, ctx, self.cfg)
        info = P.canonical(detector.info().as_dict())
        pred = predict_all(detector, data, self.cfg, self.ui)
        t0 = time.perf_counter()
        metrics, metric_errors, eval_shape = compute_metrics(pred.items, pred.scores, pred.maps, ctx, self.variants)
        metrics_s = time.perf_counter() - t0
        key = (spec["label"], plan.shots)
        if self.cfg.flops and key not in self._flops:
            self._flops[key] = flops_per_image(detector, stack_inputs(pred.items[:1]))
        eff = row_efficiency(detector, pred, data, ctx, fitted, self._flops.get(key), self.cfg)
        scores_rel = write_row_scores(self.out, plan, pred, data)
        outcome = RowOutcome(info, fitted, pred, metrics, metric_errors, eval_shape, metrics_s, eff, scores_rel)
        return completed_row(self._base_row(plan, spec), plan, outcome, data, ctx)

    def _base_row(self, plan: RowPlan, spec: dict[str, Any]) -> dict[str, Any]:
        return base_row(self.cfg, plan, spec, self.eval_res, self._versions)

    def _write_failed(self, plan: RowPlan, spec: dict[str, Any], failure: _RowFailed) -> None:
        row = self._base_row(plan, spec)
        row.update(status=failure.status, reason=failure.message, hint=failure.hint)
        self.store.append(row)
