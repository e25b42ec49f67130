"""The grid runner: methods x datasets x categories x shots x seeds -> one result row each.

Order of work (each expensive thing done once): per method spec build one detector; per (dataset, category)
check the protocol, build the text embeddings and stream the test images once (cached for the category's other
rows); per (shots, seed) draw references from the train split, ``fit``, ``predict`` every test image,
``finalize`` over the whole category, compute metrics, write the per-image scores and append the row.

Rows already in ``results.jsonl`` (same row key) are skipped before any model is built, so an interrupted run
resumes where it stopped and a finished grid reruns in seconds. Rows refused by a protocol check or failed
(e.g. a method without few-shot mode) are recorded with their reason and not retried unless ``retry_failed``.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlmad.bench import protocol as P
from vlmad.bench.loading import TestSetCache, load_references, make_preprocess, stack_inputs
from vlmad.bench.profile import (
    MB,
    MemorySampler,
    count_parameters,
    cuda_device,
    environment,
    flops_per_image,
    process_peak_rss,
    state_bytes,
    sync,
)
from vlmad.bench.results import RESULTS_FILE, SCORES_DIR, ResultsStore, RunLock, append_invocation, write_scores
from vlmad.bench.row_status import RowFailed as _RowFailed
from vlmad.bench.row_status import row_line as _row_line
from vlmad.methods.base import Detector
from vlmad.provenance import code_fingerprint
from vlmad_runtime.errors import VlmadError

DetectorFactory = Callable[[dict[str, Any]], Detector]


# ---------------------------------------------------------------------------------------------------------------
# configuration


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


def _ds_id(ds: DatasetSpec) -> str:
    return f"{ds.kind}:{ds.root}"


# ---------------------------------------------------------------------------------------------------------------
# progress / console


class _Progress:
    """rich progress (overall images with ETA + current category) or silence."""

    def __init__(self, enabled: bool, total_images: int) -> None:
        self.enabled = enabled
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.overall = self.bar.add_task("all rows", total=total_images)
        self.current = None

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def category(self, description: str, total: int) -> None:
        if self.bar is None:
            return
        if self.current is not None:
            self.bar.remove_task(self.current)
        self.current = self.bar.add_task(description, total=total)

    def advance(self, n: int) -> None:
        if self.bar is None:
            return
        self.bar.advance(self.overall, n)
        if self.current is not None:
            self.bar.advance(self.current, n)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


@dataclass
class _CategoryContext:
    """What every row of one (method, category) shares: protocol-check extras, timings, the test-set facts."""

    extras: dict[str, Any]
    forced: bool
    setup_s: float
    text_cache: str | None
    model_load_s: float
    has_masks: bool
    eval_size: tuple[int, int] | None
    preprocess: Any
    train: list[Any] | None = None  # the train split, read once when a few-shot row needs it


@dataclass
class _Fitted:
    """The fit step of a row: reference paths, references skipped as unreadable, load and fit seconds."""

    refs: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    ref_load_s: float = 0.0
    fit_s: float = 0.0


@dataclass
class _Predicted:
    """The predict step of a row: scored items, finalized scores/maps, per-batch seconds, memory facts."""

    streamed: bool
    on_cuda: bool
    items: list[Any] = field(default_factory=list)
    batch_s: list[tuple[float, int]] = field(default_factory=list)
    rss_increase: int = 0
    scores: torch.Tensor | None = None
    maps: torch.Tensor | None = None
    finalize_s: float = 0.0


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
                return
        extras = P.canonical(dict(extras or {}))
        if forced:
            extras = {**extras, "refused_without_force": refused_reason}
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
        self.ui.category(where, total=sum(p.n_test for p in rows))
        ctx = _CategoryContext(
            extras=extras,
            forced=forced,
            setup_s=setup_s,
            text_cache=text_cache,
            model_load_s=model_load_s,
            has_masks=has_masks,
            eval_size=eval_size,
            preprocess=preprocess,
        )
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
        ctx: _CategoryContext,
    ) -> dict[str, Any]:
        """One row: fit the references, predict the test set, compute metrics and efficiency, write the scores."""
        detector.reset_references()
        fitted = self._fit_references(detector, spec, reader, plan, ctx)
        info = P.canonical(detector.info().as_dict())
        pred = self._predict_all(detector, data)
        t0 = time.perf_counter()
        metrics, metric_errors, eval_shape = self._metrics(pred.items, pred.scores, pred.maps, ctx)
        metrics_s = time.perf_counter() - t0
        key = (spec["label"], plan.shots)
        if self.cfg.flops and key not in self._flops:
            self._flops[key] = flops_per_image(detector, stack_inputs(pred.items[:1]))
        eff = self._efficiency(
            detector,
            pred.batch_s,
            pred.streamed,
            data,
            pred.rss_increase,
            pred.on_cuda,
            ctx,
            fitted.fit_s,
            fitted.ref_load_s,
            self._flops.get(key),
        )
        scores_rel = self._write_row_scores(plan, pred, data)
        row = self._base_row(plan, spec)
        n_bad = sum(it.sample.is_anomalous for it in pred.items)
        root = Path(plan.dataset.root)
        row.update(
            status="ok",
            detector=info,
            random_weights=bool(info.get("random_weights")),
            references=fitted.refs,
            skipped_references=fitted.skipped,
            protocol={
                **row["protocol"],
                "check_protocol": ctx.extras,
                "protocol_forced": ctx.forced,
                "transductive": bool(info.get("transductive")),
                "eval_size": list(eval_shape) if eval_shape else "original",
                "has_masks": ctx.has_masks,
            },
            n_images={
                "test": len(pred.items),
                "normal": len(pred.items) - n_bad,
                "anomalous": n_bad,
                "skipped": len(data.failures),
            },
            skipped_images=[{"path": P.relpath(f.sample.image_path, root), "reason": f.reason} for f in data.failures],
            metrics=metrics,
            metric_errors=metric_errors,
            timing={
                "setup_s": ctx.setup_s,
                "ref_load_s": fitted.ref_load_s,
                "fit_s": fitted.fit_s,
                "predict_s": sum(s for s, _ in pred.batch_s),
                "finalize_s": pred.finalize_s,
                "metrics_s": metrics_s,
                "load_worker_s": data.stats.worker_s if pred.streamed else 0.0,
                "load_wait_s": data.stats.wait_s if pred.streamed else 0.0,
                "load_cached": not pred.streamed,
                "model_load_s": ctx.model_load_s,
            },
            efficiency=eff,
            scores_file=scores_rel,
        )
        return row

    def _fit_references(
        self, detector: Detector, spec: dict[str, Any], reader: Any, plan: RowPlan, ctx: _CategoryContext
    ) -> _Fitted:
        """Draw the row's K references (never a test image) and fit the detector's few-shot memory."""
        if plan.shots <= 0:
            return _Fitted()
        if ctx.train is None:
            try:
                ctx.train = reader.samples(plan.category, "train")
            except VlmadError as err:
                raise _RowFailed("error", err) from None
        try:
            order = P.select_references(ctx.train, plan.shots, int(plan.seed))
        except VlmadError as err:
            raise _RowFailed("error", err) from None
        # never a test image, even one left out by --limit (e.g. a folder dataset listing a file twice)
        test_files = {s.image_path.resolve() for s in reader.samples(plan.category, "test")}
        leaked = [s for s in order if s.image_path.resolve() in test_files]
        if leaked:
            raise _RowFailed(
                "refused",
                VlmadError(
                    f"train image {leaked[0].image_path} is also a test image", "references must not be test images"
                ),
            )
        try:
            chosen, ref_batch, skipped, ref_load_s = load_references(
                order, plan.shots, ctx.preprocess, self.cfg.on_error
            )
        except VlmadError as err:
            if self.cfg.on_error == "stop":
                raise
            raise _RowFailed("error", err) from None
        t0 = time.perf_counter()
        try:
            detector.fit(ref_batch)
        except NotImplementedError as err:
            raise _RowFailed("error", f"{spec['label']} has no few-shot mode ({err})") from None
        sync(self.cfg.device)
        refs = [P.relpath(s.image_path, Path(plan.dataset.root)) for s in chosen]
        return _Fitted(refs, skipped, ref_load_s, time.perf_counter() - t0)

    def _predict_all(self, detector: Detector, data: TestSetCache) -> _Predicted:
        """Score every readable test image in batches, timing ``predict`` and sampling memory; then finalize."""
        device = self.cfg.device
        on_cuda = cuda_device(device)
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        sampler = None if on_cuda else MemorySampler()
        out = _Predicted(streamed=not data.complete, on_cuda=on_cuda)
        scores: list[torch.Tensor] = []
        maps: list[torch.Tensor] = []
        for batch in data.batches(self.cfg.batch_size, self.cfg.on_error):
            inputs = stack_inputs(batch)
            sync(device)
            if sampler is not None:
                sampler.start()
            t0 = time.perf_counter()
            pred = detector.predict(inputs)
            sync(device)
            out.batch_s.append((time.perf_counter() - t0, len(batch)))
            if sampler is not None:
                out.rss_increase = max(out.rss_increase, sampler.stop() or 0)
            scores.append(pred.image_scores.detach().float().cpu())
            maps.append(pred.anomaly_maps.detach().float().cpu())
            out.items.extend(batch)
            self.ui.advance(len(batch))
        self.ui.advance(len(data.failures))
        if not out.items:
            raise _RowFailed("error", "no readable test image in this category")
        t0 = time.perf_counter()
        out.scores, out.maps = detector.finalize(torch.cat(scores), torch.cat(maps))
        out.finalize_s = time.perf_counter() - t0
        return out

    def _write_row_scores(self, plan: RowPlan, pred: _Predicted, data: TestSetCache) -> str:
        """The per-image scores side file of a row (unreadable images included, score empty); its relative path."""
        root = Path(plan.dataset.root)
        records = [
            {
                "path": P.relpath(it.sample.image_path, root),
                "label": it.sample.label,
                "defect_type": it.sample.defect_type,
                "score": float(s),
                "error": "",
            }
            for it, s in zip(pred.items, pred.scores.numpy(), strict=True)
        ]
        records += [
            {
                "path": P.relpath(f.sample.image_path, root),
                "label": f.sample.label,
                "defect_type": f.sample.defect_type,
                "score": None,
                "error": f.reason,
            }
            for f in data.failures
        ]
        scores_rel = f"{SCORES_DIR}/{plan.key}.csv"
        write_scores(self.out / scores_rel, records)
        return scores_rel

    def _base_row(self, plan: RowPlan, spec: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        method_options = {
            k: v for k, v in spec["kwargs"].items() if k not in P.BACKBONE_KEYS and k not in P.RUNTIME_KEYS
        }
        return {
            "schema": P.ROW_SCHEMA,
            "row_key": plan.key,
            "status": "ok",
            "method": spec["method"],
            "method_label": spec["label"],
            "method_spec": P.canonical(
                {"kwargs": P.keyed_kwargs(spec["kwargs"]), **{k: v for k, v in spec.items() if k not in ("kwargs",)}}
            ),
            "method_options": P.canonical(method_options),
            "weights": P.canonical(P.weights_identity(spec["method"], spec["kwargs"])),
            "dataset": {"kind": plan.dataset.kind, "root": str(plan.dataset.root), "category": plan.category},
            "shots": plan.shots,
            "seed": plan.seed,
            "protocol": {
                "eval_resolution": self.eval_res,
                "mask_resize": "nearest",
                "map_resize": "bilinear",
                "aupro": cfg.aupro,
                "limit": cfg.limit,
                "limit_policy": P.LIMIT_POLICY if cfg.limit else None,
                "reference_policy": P.REFERENCE_POLICY if plan.shots else P.ZERO_SHOT_NOTE,
                "force_protocol": cfg.force_protocol,
                "on_error": cfg.on_error,
            },
            "tags": P.canonical(cfg.tags),
            "run": {
                "device": cfg.device,
                "batch_size": cfg.batch_size,
                "num_workers": cfg.num_workers,
                "vlmad": self._versions["vlmad"],
                "torch": self._versions["torch"],
                "open_clip": self._versions["open_clip"],
            },
            "vlmad_version": self._versions["vlmad"],
            "code_fingerprint": code_fingerprint(),
            "finished_at": _now(),
        }

    def _write_failed(self, plan: RowPlan, spec: dict[str, Any], failure: _RowFailed) -> None:
        row = self._base_row(plan, spec)
        row.update(status=failure.status, reason=failure.message, hint=failure.hint)
        self.store.append(row)

    # -------------------------------------------------------------- metrics
    def _metrics(
        self, items: list, scores: torch.Tensor, maps: torch.Tensor, ctx: _CategoryContext
    ) -> tuple[dict[str, float], dict[str, str], tuple[int, int] | None]:
        from vlmad.metrics import compute_image_metrics, compute_pixel_metrics

        labels = np.array([it.sample.is_anomalous for it in items], dtype=bool)
        metrics: dict[str, float] = {}
        errors: dict[str, str] = {}
        try:
            metrics.update(compute_image_metrics(labels, scores.numpy()))
        except VlmadError as err:
            errors["image"] = err.message
        eval_size = ctx.eval_size
        shape = None if eval_size is None else (eval_size[1], eval_size[0])
        if not ctx.has_masks:
            errors["pixel"] = "dataset has no pixel masks"
            return metrics, errors, shape
        if shape is not None:
            if tuple(maps.shape[-2:]) != shape:
                maps = F.interpolate(maps[:, None], size=shape, mode="bilinear", align_corners=False)[:, 0]
            masks = np.stack([it.mask if it.mask is not None else np.zeros(shape, bool) for it in items])
            map_np = maps.numpy()
        else:
            sizes = {(it.size[1], it.size[0]) for it in items}
            if len(sizes) > 1:
                errors["pixel"] = (
                    f"images of {len(sizes)} different sizes cannot be stacked at original "
                    "resolution; use --eval-resolution input or N"
                )
                return metrics, errors, shape
            ((h, w),) = sizes
            shape = (h, w)
            masks = np.stack([it.mask if it.mask is not None else np.zeros(shape, bool) for it in items])
            map_np = np.concatenate(
                [
                    F.interpolate(maps[i : i + 16, None], size=shape, mode="bilinear", align_corners=False)[
                        :, 0
                    ].numpy()
                    for i in range(0, maps.shape[0], 16)
                ]
            )
        try:
            metrics.update(compute_pixel_metrics(masks, map_np, aupro_variants=self.variants))
        except VlmadError as err:
            errors["pixel"] = err.message
        return metrics, errors, shape

    # -------------------------------------------------------------- efficiency
    def _efficiency(
        self,
        detector: Detector,
        batch_s: list[tuple[float, int]],
        streamed: bool,
        data: TestSetCache,
        rss_increase: int,
        on_cuda: bool,
        ctx: _CategoryContext,
        fit_s: float,
        ref_load_s: float,
        gflops: float | None,
    ) -> dict[str, Any]:
        warm = batch_s[1:] if len(batch_s) > 1 else batch_s
        secs, n = sum(s for s, _ in warm), sum(k for _, k in warm)
        params = count_parameters(detector)
        peak = process_peak_rss()
        eff: dict[str, Any] = {
            "ms_per_image": 1000.0 * secs / n if n else None,
            "images_per_s": n / secs if secs > 0 else None,
            "warm": len(batch_s) > 1,
            "timed_images": n,
            "load_ms_per_image": (
                1000.0 * data.stats.worker_s / data.stats.images if streamed and data.stats.images else None
            ),
            "load_wait_s": data.stats.wait_s if streamed else None,
            "num_workers": self.cfg.num_workers,
            "rss_increase_mb": None if on_cuda else rss_increase / MB,
            "process_peak_rss_mb": None if peak is None else peak / MB,
            "cuda_peak_mb": (torch.cuda.max_memory_allocated(torch.device(self.cfg.device)) / MB if on_cuda else None),
            "params_backbone": params["backbone"],
            "params_method": params["method"],
            "params_total": params["total"],
            "state_mb": state_bytes(detector) / MB,
            "gflops_per_image": gflops,
            "setup_s": ctx.setup_s,
            "text_cache": ctx.text_cache,
            "fit_s": fit_s,
            "ref_load_s": ref_load_s,
            "model_load_s": ctx.model_load_s,
            "device": self.cfg.device,
            "batch_size": self.cfg.batch_size,
        }
        return eff
