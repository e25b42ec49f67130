"""Running a study: the main grid and every ablation through :func:`vlmad.bench.run_benchmark`, then calibration and
the report.

Phases (each one ``run_benchmark`` call on the same run folder, so rows of all phases live in one
``results.jsonl`` and resume the same way):

1. **main**: datasets x methods x shots x seeds of the spec, ``tags = {}``.
2. per ablation axis, the **baseline** (the axis's default value = the study's own configuration on the ablation's
   shots/seeds/datasets, ``tags = {}``): its rows have the same keys as the main grid's, so they are computed once.
3. per ablation axis and value, the **variants** (``tags = {"ablation": AXIS, "variant": NAME}``; method label
   ``"<label> <axis>=<value>"``; the method spec carries ``study = {axis, variant, base_label, detail}``, recorded in
   each row's ``method_spec``).

A phase whose rows are all in ``results.jsonl`` is not started at all, so re-running a finished study recomputes
nothing (and writes nothing but the report). Detectors are built by :class:`StudyDetectorFactory`, which keeps the
last CLIP backbones loaded across phases (ablation variants share them) and implements the ``stage_subset``
option of the APRIL-GAN stage ablation. An ablation variant whose detector cannot be built (e.g. missing weights of
another backbone) is logged, recorded in ``study.json`` and shown in the report; the other phases still run.

Calibration (``calibration.mode``): per main-grid configuration (method label, shots) and category one
``deploy/<dataset>/<category>/<label>-<K>shot.json``. ``normal-quantile`` scores held-out normal train images (a
seeded draw of at most ``max_images``, the row's few-shot references excluded) with the row's detector and
references, keeping the scores in ``calibration/<row_key>-<draw>.csv`` (reused on re-runs).
"""

from __future__ import annotations

import json
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vlmad.bench import BenchmarkConfig, DatasetSpec, method_spec, plan_grid, run_benchmark
from vlmad.bench.protocol import canonical, hash_key, relpath
from vlmad.bench.results import RESULTS_FILE, ResultsStore, RunLock, load_results, read_scores
from vlmad.study.axes import AXES, STAGE_SUBSET_KEY
from vlmad.study.calibration import (
    deploy_record,
    f1_optimal_threshold,
    normal_quantile_threshold,
    rates_at,
    score_images,
    write_deploy,
)
from vlmad.study.files import STUDY_FILE, load_study_file  # noqa: F401  (re-exported)
from vlmad.study.spec import StudySpec
from vlmad_runtime.errors import VlmadError
from vlmad_runtime.fileio import atomic_write_text

CALIBRATION_DIR = "calibration"
DEPLOY_DIR = "deploy"
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------------------
# options and plan


@dataclass
class StudyOptions:
    """Run-time choices of a study (command-line options); nothing here changes what a row means except the
    weights/model options, which enter the method specs (and so the row keys)."""

    out: str | Path
    roots: dict[str, str | Path] = field(default_factory=dict)
    datasets: list[str] | None = None
    categories: list[str] | None = None
    model: list[str] | None = None
    pretrained: list[str] | None = None
    checkpoint: list[str] | None = None
    random_weights: bool = False
    precision: str | None = None
    sets: list[str] | None = None
    heads: list[str] | None = None
    shots: list[int] | None = None
    seeds: list[int] | None = None
    limit: int | None = None
    device: str = "cpu"
    batch_size: int = 8
    num_workers: int = 0
    force_protocol: bool = False
    retry_failed: bool = False
    use_cache: bool = True
    flops: bool = True
    progress: bool = False
    report: bool = True
    argv: list[str] | None = None
    # where rows run (vlmad.bench.executors); one Ray connection serves every phase
    executor: str = "local"
    ray_address: str | None = None
    cpus_per_row: float = 1.0
    gpus_per_row: float = 0.0
    row_retries: int = 2


@dataclass
class Phase:
    name: str
    config: BenchmarkConfig
    axis: str | None = None
    variant: str | None = None


@dataclass
class StudyPlan:
    spec: StudySpec
    datasets: list[DatasetSpec]
    methods: list[dict[str, Any]]
    phases: list[Phase]
    notes: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def build_study_methods(spec: StudySpec, options: StudyOptions) -> list[dict[str, Any]]:
    """Method specs of the main grid: the spec's options overlaid with the command line's model/weights/--set
    options; ``--artefact`` files (``--heads``) give one configuration each of the methods that load an artefact
    (labelled by the data it was made from)."""
    from vlmad.bench import build_method_specs
    from vlmad.methods.registry import get_spec

    names = list(dict.fromkeys(m.method for m in spec.methods))
    cli = {
        s["method"]: s["kwargs"]
        for s in build_method_specs(
            names,
            options.model,
            options.pretrained,
            options.checkpoint,
            options.random_weights,
            options.precision,
            options.sets,
        )
    }
    heads = [str(Path(h).expanduser().resolve()) for h in options.heads or []]
    if heads and not any(get_spec(n).artefact for n in names):
        raise VlmadError(
            "--artefact given but no method of the study loads an artefact",
            "drop --artefact/--heads or use another spec",
        )
    out: list[dict[str, Any]] = []
    for m in spec.methods:
        kwargs = dict(m.options)
        over = dict(cli.get(m.method, {}))
        if any(over.get(k) for k in ("pretrained", "checkpoint", "random_weights")):
            for k in ("pretrained", "checkpoint", "random_weights"):
                kwargs.pop(k, None)
        kwargs.update(over)
        art = get_spec(m.method).artefact
        if art is not None and heads:
            tags = [art.label(h) for h in heads]
            if len(set(tags)) < len(tags):
                tags = [Path(h).stem for h in heads]
            for h, tag in zip(heads, tags, strict=True):
                kw = {k: v for k, v in kwargs.items() if k != art.skip_option}
                kw[art.option] = h
                out.append(method_spec(m.method, label=m.label if len(heads) == 1 else f"{m.label}:{tag}", **kw))
        else:
            out.append(method_spec(m.method, label=m.label, **kwargs))
    return out


def _study_datasets(spec: StudySpec, options: StudyOptions) -> list[DatasetSpec]:
    wanted = options.datasets
    if wanted:
        bad = [d for d in wanted if d not in spec.dataset_kinds()]
        if bad:
            raise VlmadError(
                f"--datasets {bad[0]!r} is not a dataset of study {spec.name!r}",
                f"its datasets: {', '.join(spec.dataset_kinds())}",
            )
    unknown_roots = [k for k in options.roots if k not in spec.dataset_kinds()]
    if unknown_roots:
        raise VlmadError(
            f"--root {unknown_roots[0]}=... is not a dataset of study {spec.name!r}",
            f"its datasets: {', '.join(spec.dataset_kinds())}",
        )
    out = []
    for ds in spec.datasets:
        if wanted and ds.kind not in wanted:
            continue
        root = options.roots.get(ds.kind) or ds.root
        if root is None:
            raise VlmadError(
                f"study {spec.name!r} needs a root folder for {ds.kind}",
                f"pass --root {ds.kind}=PATH (or --datasets "
                f"{','.join(k for k in spec.dataset_kinds() if k != ds.kind) or ds.kind} to leave "
                "it out)",
            )
        cats = ds.categories
        if options.categories:
            picked = [c.split(":", 1)[1] for c in options.categories if c.startswith(f"{ds.kind}:")]
            plain = [c for c in options.categories if ":" not in c]
            cats = picked + plain if (picked or plain) else cats
            if not cats:
                continue
            if plain and not picked:
                from vlmad.data import load_dataset

                available = set(load_dataset(ds.kind, root).categories)
                cats = [c for c in plain if c in available]
                if not cats:
                    continue
        out.append(DatasetSpec(ds.kind, Path(root).expanduser(), cats))
    if not out:
        raise VlmadError("no dataset left to evaluate", "check --datasets / --categories")
    return out


def _artefact_fixes_backbone(m: Mapping[str, Any]) -> bool:
    from vlmad.methods.registry import get_spec

    art = get_spec(m["method"]).artefact
    return art is not None and art.fixes_backbone and bool(m["kwargs"].get(art.option))


def plan_study(spec: StudySpec, options: StudyOptions) -> StudyPlan:
    """Every phase of the study as a :class:`BenchmarkConfig` (no model is loaded)."""
    from vlmad.methods.registry import get_spec

    datasets = _study_datasets(spec, options)
    methods = build_study_methods(spec, options)
    for m in methods:
        mspec = get_spec(m["method"])
        if mspec.needs_artefact(m["kwargs"]):
            art = mspec.artefact
            raise VlmadError(
                f"study {spec.name!r}: {m['label']} needs its {art.kind} file ({art.help})",
                f"pass --artefact FILE (repeat for one configuration per file), or --set "
                f"{m['method']}.{art.skip_option}=true for a smoke run",
            )
    shots = options.shots or spec.shots
    seeds = options.seeds or spec.seeds
    limit = options.limit if options.limit is not None else spec.limit

    def config(
        ds: list[DatasetSpec], specs: list[dict[str, Any]], k: list[int], s: list[int], tags: dict[str, Any]
    ) -> BenchmarkConfig:
        return BenchmarkConfig(
            out=options.out,
            datasets=ds,
            methods=specs,
            shots=k,
            seeds=s,
            device=options.device,
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            limit=limit,
            eval_resolution=spec.eval_resolution,
            aupro=spec.aupro,
            force_protocol=options.force_protocol,
            retry_failed=options.retry_failed,
            use_cache=options.use_cache,
            flops=options.flops,
            progress=options.progress,
            tags=tags,
            argv=options.argv,
            executor=options.executor,
            ray_address=options.ray_address,
            cpus_per_row=options.cpus_per_row,
            gpus_per_row=options.gpus_per_row,
            row_retries=options.row_retries,
        )

    phases = [Phase("main grid", config(datasets, methods, shots, seeds, {}))]
    notes: list[str] = []
    for ab in spec.ablations:
        axis = AXES[ab.axis]
        chosen = [
            m
            for m in methods
            if axis.applies_to(m["method"])
            and (not ab.methods or m["label"] in ab.methods or m["method"] in ab.methods)
        ]
        fixed = [m for m in chosen if _artefact_fixes_backbone(m) and ab.axis in ("resolution", "backbone")]
        for m in fixed:
            notes.append(
                f"{ab.axis} ablation skipped for {m['label']}: its {get_spec(m['method']).artefact.kind} "
                "file fixes the backbone and input size (make one per variant to ablate it)"
            )
        chosen = [m for m in chosen if m not in fixed]
        ds = [d for d in datasets if not ab.datasets or d.kind in ab.datasets]
        if not chosen or not ds:
            continue
        ab_seeds = ab.seeds or seeds
        phases.append(Phase(f"{ab.axis}: baseline", config(ds, chosen, ab.shots, ab_seeds, {}), ab.axis, None))
        by_variant: dict[str, list[dict[str, Any]]] = {}
        for m in chosen:
            for v in axis.variants(ab.values, m["method"], m["kwargs"], spec.base_dir):
                if v.is_default:
                    continue
                vs = method_spec(m["method"], label=f"{m['label']} {ab.axis}={v.name}", **v.apply(m["kwargs"]))
                vs["study"] = {"axis": ab.axis, "variant": v.name, "base_label": m["label"], "detail": v.detail}
                by_variant.setdefault(v.name, []).append(vs)
        for name, specs in by_variant.items():
            phases.append(
                Phase(
                    f"{ab.axis}={name}",
                    config(ds, specs, ab.shots, ab_seeds, {"ablation": ab.axis, "variant": name}),
                    ab.axis,
                    name,
                )
            )
    return StudyPlan(spec, datasets, methods, phases, notes)


# ---------------------------------------------------------------------------------------------------------------
# detector factory


class StudyDetectorFactory:
    """``BenchmarkConfig.detector_factory`` of a study: shares loaded backbones between detectors (ablation
    variants of one method differ only in method options) and applies ``stage_subset``."""

    def __init__(self, max_backbones: int = 2) -> None:
        self.max_backbones = max(1, int(max_backbones))
        self._backbones: OrderedDict[str, Any] = OrderedDict()
        self.loads = 0

    def _backbone(self, bb_kwargs: dict[str, Any]) -> Any:
        from vlmad.methods.spec import build_backbone

        key = json.dumps(canonical(bb_kwargs), sort_keys=True)
        if key in self._backbones:
            self._backbones.move_to_end(key)
            return self._backbones[key]
        while len(self._backbones) >= self.max_backbones:
            self._backbones.popitem(last=False)
        bb = build_backbone(dict(bb_kwargs))
        self.loads += 1
        self._backbones[key] = bb
        return bb

    def __call__(self, spec: Mapping[str, Any]) -> Any:
        from vlmad.methods.registry import get_spec
        from vlmad.methods.spec import BACKBONE_KEYS

        kwargs = dict(spec["kwargs"])
        subset = kwargs.pop(STAGE_SUBSET_KEY, None)
        mspec = get_spec(spec["method"])
        if mspec.uses_backbone:
            mspec.check_options(kwargs)
            backbone = self._backbone(mspec.resolved_backbone(kwargs))
            detector = mspec.build(backbone, **{k: v for k, v in kwargs.items() if k not in BACKBONE_KEYS})
        else:
            detector = mspec.build(None, **kwargs)
        if subset:
            restrict_stages(detector, subset)
        return detector


def restrict_stages(detector: Any, stages: Sequence[int]) -> None:
    """Run a detector on a subset of its feature stages (the detector's own ``restrict_stages``)."""
    detector.restrict_stages(stages)


# ---------------------------------------------------------------------------------------------------------------
# running


def _final_statuses(options: StudyOptions) -> set[str]:
    if options.retry_failed:
        return {"ok"}
    return {"ok", "error"} | (set() if options.force_protocol else {"refused"})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _public_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: canonical(v) for k, v in spec.items()}


def _write_study_file(out: Path, plan: StudyPlan, options: StudyOptions, invocation: dict[str, Any]) -> None:
    path = out / STUDY_FILE
    try:
        previous = json.loads(path.read_text()).get("invocations", [])
    except (OSError, ValueError, AttributeError):
        previous = []
    if previous and previous[-1].get("started") == invocation.get("started"):
        previous = previous[:-1]
    data = {
        "name": plan.spec.name,
        "spec": plan.spec.as_dict(),
        "roots": {d.kind: str(Path(d.root).resolve()) for d in plan.datasets},
        "datasets": [
            {"kind": d.kind, "root": str(Path(d.root).resolve()), "categories": d.categories} for d in plan.datasets
        ],
        "methods": [_public_spec(m) for m in plan.methods],
        "phases": [
            {
                "name": p.name,
                "axis": p.axis,
                "variant": p.variant,
                "tags": p.config.tags,
                "methods": [_public_spec(m) for m in p.config.methods],
                "shots": p.config.shots,
                "seeds": p.config.seeds,
                "datasets": [d.kind for d in p.config.datasets],
            }
            for p in plan.phases
        ],
        "options": {k: canonical(v) for k, v in options.__dict__.items() if k not in ("argv",)},
        "invocations": previous + [invocation],
    }
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def run_study(spec: StudySpec, options: StudyOptions, log: Log | None = None) -> Path:
    """Run (or resume) a study; returns the run folder (results.jsonl, scores/, deploy/, report.html, ...)."""
    say = log or (lambda _msg: None)
    out = Path(options.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    from vlmad.bench.executors import executor_scope

    with RunLock(out, ".study.lock", "vlmad study"), executor_scope(options.executor, options.ray_address):
        plan = plan_study(spec, options)
        factory = StudyDetectorFactory()
        invocation: dict[str, Any] = {
            "started": _now(),
            "argv": options.argv if options.argv is not None else list(sys.argv),
            "computed": 0,
            "phases_run": [],
            "notes": list(plan.notes),
            "failed_phases": [],
        }
        _write_study_file(out, plan, options, invocation)
        for note in plan.notes:
            say(f"[yellow]note:[/] {note}")
        final = _final_statuses(options)
        for phase in plan.phases:
            phase.config.detector_factory = factory
            plans, _ = plan_grid(phase.config)
            done = ResultsStore(out / RESULTS_FILE).keys(final)
            todo = [p for p in plans if p.key not in done]
            if not todo:
                say(f"{phase.name}: all {len(plans)} row(s) already in {out / RESULTS_FILE}")
                continue
            say(f"[bold]{phase.name}[/]: {len(todo)} of {len(plans)} row(s) to compute")
            try:
                run_benchmark(phase.config)
            except VlmadError as err:
                if phase.variant is None:  # the main grid and baselines must run: stop with the message
                    raise
                # an ablation variant that cannot be built (e.g. weights of another backbone) must not cost the
                # rest of the study: recorded, reported, retried on the next run
                say(f"[red]{phase.name} failed[/]: {err.message}" + (f" ({err.hint})" if err.hint else ""))
                invocation["failed_phases"].append({"phase": phase.name, "error": err.message, "hint": err.hint})
            finally:
                try:
                    invocation["computed"] += int(json.loads((out / "run.json").read_text())["latest"]["computed"])
                except (OSError, ValueError, KeyError, TypeError):
                    pass
                invocation["phases_run"].append(phase.name)
                _write_study_file(out, plan, options, invocation)
        deploy = calibrate_study(out, plan, factory, options, say)
        invocation.update(finished=_now(), deploy_files=len(deploy))
        _write_study_file(out, plan, options, invocation)
        if options.report:
            from vlmad.report.build import build_report, compute_gallery_maps

            compute_gallery_maps(out, factory, options.device, say)  # stored: the report only reads the folder
            say("writing the report")
            build_report(out, log=say)
    return out


# ---------------------------------------------------------------------------------------------------------------
# calibration of the main grid


def _main_rows(rows: Sequence[Mapping[str, Any]], labels: set[str]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") == "ok" and not (r.get("tags") or {}) and r["method_label"] in labels]


def _seed_order(seed: Any) -> tuple[int, int]:
    return (0, -1) if seed is None else (1, int(seed))


def deploy_path(out: Path, ds_name: str, category: str, label: str, shots: int) -> Path:
    return out / DEPLOY_DIR / _slug(ds_name) / _slug(category) / f"{_slug(label)}-{int(shots)}shot.json"


def calibration_targets(
    rows: Sequence[Mapping[str, Any]], labels: set[str], shots: Sequence[int] | None
) -> list[Mapping[str, Any]]:
    """One row per (label, dataset, category, shots) of the main grid: the one with the smallest seed."""
    best: dict[tuple, Mapping[str, Any]] = {}
    for r in _main_rows(rows, labels):
        if shots is not None and int(r["shots"]) not in shots:
            continue
        key = (
            r["method_label"],
            r["dataset"]["kind"],
            r["dataset"]["root"],
            r["dataset"]["category"],
            r["shots"],
            r.get("protocol", {}).get("limit"),
        )
        if key not in best or _seed_order(r["seed"]) < _seed_order(best[key]["seed"]):
            best[key] = r
    return list(best.values())


def _calibration_images(reader: Any, row: Mapping[str, Any], max_images: int | None, seed: int) -> list[Path]:
    """Held-out normals: the train split's normal images minus the row's references (and any test image)."""
    root = Path(row["dataset"]["root"])
    try:
        train = reader.samples(row["dataset"]["category"], "train")
    except VlmadError:
        return []
    refs = set(row.get("references") or [])
    test = {s.image_path.resolve() for s in reader.samples(row["dataset"]["category"], "test")}
    pool = [
        s.image_path
        for s in train
        if not s.is_anomalous and relpath(s.image_path, root) not in refs and s.image_path.resolve() not in test
    ]
    order = np.random.default_rng(int(seed)).permutation(len(pool))
    chosen = [pool[int(i)] for i in order]
    return chosen[:max_images] if max_images else chosen


def calibrate_study(
    out: Path, plan: StudyPlan, factory: StudyDetectorFactory, options: StudyOptions, say: Log
) -> list[Path]:
    """Deploy files for the main grid (see module docstring); returns the deploy.json paths."""
    from vlmad.bench.results import write_scores
    from vlmad.bench.tables import dataset_names
    from vlmad.data import load_dataset

    cal = plan.spec.calibration
    if cal.mode == "none" or not (out / RESULTS_FILE).exists():
        return []
    rows = load_results(out)
    labels = {m["label"] for m in plan.methods}
    targets = calibration_targets(rows, labels, cal.shots)
    names = dataset_names([r for r in rows if r.get("status") == "ok"])
    specs = {m["label"]: m for m in plan.methods}
    readers: dict[tuple[str, str], Any] = {}
    pending: dict[str, list[tuple[Mapping[str, Any], list[Path], Path]]] = {}
    draws: dict[str, Path] = {}  # row key -> the calibration CSV of this draw (never another draw's, by mtime)
    for row in targets:
        if cal.mode == "f1-optimal-test":
            continue
        ds = row["dataset"]
        ident = (ds["kind"], ds["root"])
        if ident not in readers:
            readers[ident] = load_dataset(ds["kind"], ds["root"])
        images = _calibration_images(readers[ident], row, cal.max_images, cal.seed)
        if not images:
            continue
        draw = hash_key({"images": [relpath(p, Path(ds["root"])) for p in images]}, 8)
        csv_path = out / CALIBRATION_DIR / f"{row['row_key']}-{draw}.csv"
        draws[row["row_key"]] = csv_path
        if not csv_path.exists():
            pending.setdefault(row["method_label"], []).append((row, images, csv_path))
    if pending:
        say(f"calibration: scoring held-out normal images for {sum(len(v) for v in pending.values())} configuration(s)")
    for label, items in pending.items():
        spec = specs[label]
        runtime = {
            **spec,
            "kwargs": {
                **spec["kwargs"],
                "device": options.device,
                "batch_size": options.batch_size,
                **({} if options.use_cache else {"use_cache": False}),
            },
        }
        detector = factory(runtime)
        current = None
        for row, images, csv_path in sorted(
            items, key=lambda t: (t[0]["dataset"]["root"], t[0]["dataset"]["category"], t[0]["shots"])
        ):
            ds = row["dataset"]
            root = Path(ds["root"])
            if current != (ds["root"], ds["category"]):
                detector.setup(ds["category"])
                current = (ds["root"], ds["category"])
            detector.reset_references()
            if row["shots"]:
                detector.fit([root / p for p in row["references"]])
            scores, errors = score_images(detector, images, options.batch_size)
            write_scores(
                csv_path,
                [
                    {"path": relpath(p, root), "label": "normal", "defect_type": "good", "score": s, "error": e}
                    for p, s, e in zip(images, scores, errors, strict=True)
                ],
            )
        del detector
    written: list[Path] = []
    for row in targets:
        try:
            path = _deploy_for_row(out, row, names, cal, specs, draws.get(row["row_key"]))
        except VlmadError as err:  # e.g. no anomalous test image for F1, no readable held-out normal
            say(
                f"[yellow]no deploy file[/] for {row['method_label']} {row['shots']}-shot "
                f"{row['dataset']['kind']}/{row['dataset']['category']}: {err.message}"
            )
            continue
        if path is not None:
            written.append(path)
    return written


def _deploy_for_row(
    out: Path,
    row: Mapping[str, Any],
    names: Mapping[tuple[str, str], str],
    cal: Any,
    specs: Mapping[str, Mapping[str, Any]],
    draw_csv: Path | None,
) -> Path | None:
    """The row's deploy file from ``draw_csv``: exactly the calibration CSV of the current draw (None: no
    held-out normal image for this row)."""
    from vlmad.fingerprint import detector_fingerprint, references_fingerprint

    ds = row["dataset"]
    test = read_scores(out / row["scores_file"])
    test_scores = [t["score"] for t in test if t["score"] is not None]
    test_labels = [t["label"] == "anomalous" for t in test if t["score"] is not None]
    extra: dict[str, Any] = {
        "row_key": row["row_key"],
        "method_label": row["method_label"],
        "dataset": ds["kind"],
        "root": ds["root"],
        "category": ds["category"],
        "shots": row["shots"],
        "seed": row["seed"],
        "references": list(row.get("references") or []),
        "detector_options": {
            k: v
            for k, v in specs[row["method_label"]]["kwargs"].items()
            if k not in ("device", "batch_size", "use_cache")
        },
    }
    if cal.mode == "f1-optimal-test":
        calib = f1_optimal_threshold(test_scores, test_labels)
        extra.update(
            source="test split scores of the row (threshold fitted on the evaluation images: optimistic)",
            scores_file=row["scores_file"],
        )
    else:
        if draw_csv is None or not draw_csv.is_file():
            return None
        normal = read_scores(draw_csv)
        calib = normal_quantile_threshold([r["score"] for r in normal], cal.quantile)
        extra.update(
            source="held-out normal train images (few-shot references excluded)",
            scores_file=draw_csv.relative_to(out).as_posix(),
            selection_seed=cal.seed,
            max_images=cal.max_images,
        )
    test_rates = rates_at(calib.threshold, test_scores, test_labels)
    extra.update(
        test_false_alarm_rate=test_rates["false_alarm_rate"],
        test_recall=test_rates["recall"],
        test_precision=test_rates["precision"],
        test_n_normal=test_rates["n_normal"],
        test_n_anomalous=test_rates["n_anomalous"],
    )
    refs = [Path(ds["root"]) / p for p in row.get("references") or []]
    fingerprint = detector_fingerprint(row.get("detector") or {}, ds["category"], references_fingerprint(refs))
    record = deploy_record(
        calib, row["method"], ds["category"], row.get("detector") or {}, extra, fingerprint=fingerprint
    )
    if row.get("random_weights"):
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        record["calibration"]["warning"] = RANDOM_WEIGHTS_STAMP
    path = deploy_path(
        out, names.get((ds["kind"], ds["root"]), ds["kind"]), ds["category"], row["method_label"], row["shots"]
    )
    write_deploy(path, record)
    return path
